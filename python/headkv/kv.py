"""KV-cache configuration: which compression method, and its budget."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

METHODS = ("full", "snapkv", "streaming", "pyramidkv", "adakv", "headkv")


@dataclass
class KVConfig:
    """KV cache of a Model.

    method: ``full`` (no compression), ``snapkv``, ``streaming``, ``pyramidkv``, ``adakv`` or
        ``headkv`` (per-head budgets from a head-score file).
    budget: KV entries kept per KV head on average, the window included (the paper's KV size).
    window: α, the last prompt tokens every head keeps and whose attention selects the rest.
    beta: HeadKV β; larger β = smaller shared pool (1.2 here: the official scripts' setting).
    temp: HeadKV score temperature.
    pooling / kernel: 1-D pooling of the window attention before top-k (``max`` or ``avg``).
    scores: HeadKV score file (official HeadKV JSON or headkv's own format).
    max_new_tokens: decode slots reserved per KV head.
    """

    method: str = "full"
    budget: int = 128
    window: int = 8
    beta: float = 1.2
    temp: float = 1.0
    pooling: str = "max"
    kernel: int = 7
    scores: Optional[str] = None
    max_new_tokens: int = 512

    def native(self):
        from . import _core
        return _core.KVConfigNative(self.method, int(self.budget), int(self.window), float(self.beta),
                                    float(self.temp), int(self.kernel), self.pooling,
                                    os.fspath(self.scores) if self.scores else "", int(self.max_new_tokens))
