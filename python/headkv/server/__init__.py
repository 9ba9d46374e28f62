"""OpenAI-compatible HTTP server over headkv (``pip install "headkv[server]"``).

    headkv-server -m model.gguf -np 4 --port 8080        # or: python -m headkv.server ...

``create_app(pool)`` builds the FastAPI app over a :class:`headkv.SequencePool`."""
from ..pool import PoolFullError, Sequence, SequencePool
from .cli import main

__all__ = ["create_app", "main", "SequencePool", "Sequence", "PoolFullError"]


def __getattr__(name):  # FastAPI is imported only when the app is built (the [server] extra)
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(name)
