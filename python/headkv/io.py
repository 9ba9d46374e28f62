"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Everything is written to a temporary file in the target's directory, flushed and fsync'ed, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows); on any error the temporary
file is removed and the previous file, if any, is left untouched. Used for score files and
evaluation results.

    from headkv.io import atomic_write, write_json_atomic
    write_json_atomic("results.json", {"acc": 0.93})
    with atomic_write("log.jsonl") as f:          # text; mode="wb" for bytes
        f.write(...)
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", encoding: str = "utf-8", perm: int = 0o644) -> Iterator[Any]:
    """Context manager yielding a file object; ``path`` is replaced only when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, perm)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: PathLike, obj: Any, *, indent: Union[int, None] = None, allow_nan: bool = False,
                      sort_keys: bool = False) -> None:
    """``json.dump(obj)`` + newline, atomically. NaN/Infinity are refused by default (not JSON)."""
    # Serialize first: an unserializable object fails before any file is touched.
    text = json.dumps(obj, indent=indent, allow_nan=allow_nan, sort_keys=sort_keys,
                      separators=None if indent is not None else (",", ":"))
    write_text_atomic(path, text + "\n")
