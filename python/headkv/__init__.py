"""headkv: GGUF inference with per-attention-head KV cache compression.

    import headkv
    m = headkv.Model("model.gguf")
    print(m.create_completion("The capital of France is", max_tokens=8)["choices"][0]["text"])
"""
from .errors import (ContextFullError, Error, FormatError, HeadkvIOError, InternalError,
                     InvalidArgumentError, OutOfMemoryError, UnsupportedError)
from .grammar import LlamaGrammar
from .kv import KVConfig
from .llama import Llama
from .model import Model, ModelState
from .batching import SequenceGroup
from .pool import PoolFullError, SequencePool
from .examples import example_model

__version__ = "0.1.0"
__all__ = ["Model", "example_model", "ModelState", "Llama", "SequencePool", "SequenceGroup", "PoolFullError", "LlamaGrammar", "KVConfig", "Error", "FormatError", "HeadkvIOError", "UnsupportedError", "InvalidArgumentError",
           "OutOfMemoryError", "ContextFullError", "InternalError"]
