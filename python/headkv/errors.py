"""Exception classes raised by headkv. Every error the engine raises is a ``headkv.Error``."""


class Error(Exception):
    """Base class of every headkv error."""


class IOError_(Error, OSError):
    """A file could not be opened, read or mapped."""


class FormatError(Error, ValueError):
    """A file is not what it claims to be: bad magic, truncated, inconsistent offsets or metadata."""


class UnsupportedError(Error):
    """Valid input that headkv does not implement (architecture, tensor type, tokenizer)."""


class InvalidArgumentError(Error, ValueError):
    """A call argument is out of range or inconsistent."""


class OutOfMemoryError(Error, MemoryError):
    """A request needs more memory than can be allocated."""


class ContextFullError(Error):
    """The prompt or generation does not fit the context window (n_ctx)."""


class InternalError(Error):
    """A bug in headkv; please report it."""


# Name used by the public API (IOError_ avoids shadowing the builtin inside this module).
HeadkvIOError = IOError_
