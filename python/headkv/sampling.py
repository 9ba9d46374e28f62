"""Per-token sampling for :class:`headkv.Llama`.

The arithmetic (logit bias, repeat/frequency/presence penalties, grammar mask, top-k, typical,
top-p, min-p, temperature, draw) runs in the native sampler over the engine's logits without a
copy. Python only adds what needs Python objects: the grammar's token bitmask (llguidance) and,
when logprobs are asked for, the log-softmax of the raw logits (as llama-cpp-python reports them:
before bias, penalties and grammar)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import _core


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax along the last axis, in float32 as llama-cpp-python's ``logits_to_logprobs``."""
    logits = np.asarray(logits, dtype=np.float32)
    mx = np.max(logits, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0).astype(np.float32)
    shifted = logits - mx
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


class TokenSampler:
    """Picks each token for ``Model.generate(..., sampler=...)``.

    ``native``: a ``_core.Sampler``; ``matcher``: a grammar.TokenMatcher or None; ``n_logprobs``:
    None (no logprobs) or how many top alternatives to record per token. ``steps`` then holds one
    ``(token, logprob, [(token_id, logprob), ...])`` per sampled token, end-of-generation included."""

    def __init__(self, native: "_core.Sampler", matcher=None, n_logprobs: Optional[int] = None):
        self.native, self.matcher, self.n_logprobs = native, matcher, n_logprobs
        self.steps: list = []

    def sample(self, engine) -> int:
        mask = self.matcher.mask() if self.matcher is not None else None
        tok = self.native.sample(engine, mask)
        if self.n_logprobs is not None:
            lp = log_softmax(engine.logits(False))
            k = min(self.n_logprobs, lp.size)
            top = np.argpartition(-lp, k - 1)[:k] if k > 0 else np.empty(0, dtype=np.int64)
            top = top[np.argsort(-lp[top], kind="stable")]
            self.steps.append((tok, float(lp[tok]), [(int(i), float(lp[i])) for i in top]))
        if self.matcher is not None and not engine.is_eog(tok):
            self.matcher.consume(tok)
        return tok
