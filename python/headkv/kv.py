"""KV-cache configuration: which compression method, and its budget."""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

METHODS = ("full", "snapkv", "streaming", "pyramidkv", "adakv", "headkv")

# Span-aware selection (the default): token runs (numbers split into digits, codes, words split
# into pieces) up to this many tokens are kept whole. See docs/kv_compression.md.
DEFAULT_SPAN = 16
# and a max-pooled attention peak also keeps this many positions after it (a needle's value after the
# key the question names); the engine's KVConfig default (kDefaultReach). EVALUATION.md, "Forward reach".
DEFAULT_REACH = 8


def default_beta(budget: int) -> float:
    """headkv's HeadKV β at a budget when none is given: 1/β of each head's budget (window excluded)
    is pooled and shared by score, the rest is a per-head floor. 4 at budgets <= 64, else 2 (chosen
    on EVALUATION.md's tuning split); the official scripts use 1.2. The engine's rule
    (select/budget.h ``default_beta``)."""
    from . import _core
    return float(_core.default_beta(int(budget)))
# The question-free observation probe of ``probe="repeat"`` (KVzip-style: the attention of a
# request to repeat the document marks what a later question may need).
REPEAT_PROBE = "\n\nRepeat the text above word for word."


@dataclass
class KVConfig:
    """KV cache of a Model.

    method: ``full`` (no compression), ``snapkv``, ``streaming``, ``pyramidkv``, ``adakv`` or
        ``headkv`` (per-head budgets from a head-score file).
    budget: KV entries kept per KV head on average, the window included (the paper's KV size).
    window: α, the last prompt tokens every head keeps and whose attention selects the rest.
    beta: HeadKV β; larger β = smaller shared pool, larger per-head floor (None, the default:
        ``default_beta(budget)``, 4 at budgets <= 64, else 2; the official scripts' 1.2 reproduces the
        paper's allocation).
    temp: HeadKV score temperature.
    pooling / kernel: 1-D pooling of the window attention before top-k (``max`` or ``avg``;
        default ``max``, 7).
    span: span-aware selection: a kept token keeps the rest of its token run (no whitespace
        between the tokens) up to ``span`` tokens; 0 = off. Default: ``DEFAULT_SPAN``, or 0 when
        ``pooling`` or ``kernel`` is given (their explicit values reproduce the paper's rule).
    reach: span-aware selection's forward reach: a max-pooled attention peak also keeps the ``reach``
        prompt positions after it, so a value that follows the key a question names is kept with the
        key (peaks in the first 4 positions, the attention sink, do not reach). Applies only with
        span-aware selection (a span > 1); 0 = the symmetric pooling window.
        Default: ``DEFAULT_REACH`` (0 where the span is off).
    probe: observation probe for compressing a context before its question exists (query-agnostic
        use): ``"repeat"`` (a request to repeat the text), ``"reconstruct"`` (that request followed by
        the prompt again: each token is scored by the attention its own repetition pays it, as KVzip
        does; a second pass over the prompt), any other text, or token ids. The probe
        runs after the prompt, its attention selects what each head keeps, and it is dropped: the
        context then holds the compressed prompt only. None: the prompt's last ``window`` tokens
        select (query-aware use: the question ends the prompt).
    value_fit: value fitting's ridge λ (> 0 turns it on; 1 is the measured setting): after selection
        each KV head's kept values are refitted (the smallest ridge least-squares change) so that the
        observation window's queries read what they read over the full cache (the selecting methods,
        the prompt's own window, global layers). It brings continuations closer to the full cache's
        and costs retrieval (EVALUATION.md, "Value fitting"), so it is off by default (0).
    cap_ceiling: ``headkv`` only: no head keeps more than ``cap_ceiling`` × (budget − window) prompt
        positions; what a ceiling takes from the highest-scored heads goes to the others by score. 0 (the
        default) = no ceiling, else >= 1; not with ``adaptive`` (EVALUATION.md: at budget 512 the
        retrieval heads otherwise hold nearly all of a 2k prompt).
    adaptive: ``headkv`` only: each layer's total comes from the head scores and is split among
        its heads per prompt as Ada-KV splits it (floors: 20 % of each head's score-given cap).
    scores: HeadKV score file (official HeadKV JSON or headkv's own format).
    max_new_tokens: decode slots reserved per KV head (tokens appended after the prompt: a later
        question and the answer).
    type_k / type_v: element type of the stored keys / values (llama.cpp's and llama-cpp-python's
        names): ``"f16"`` (default; IEEE half, read directly by attention), ``"f32"`` (reference), ``"q8_0"``
        or ``"q4_0"`` (llama.cpp's 32-value blocks, read in place by attention; the head size must be a
        multiple of 32, else UnsupportedError). The CUDA backend stores f16, q8_0 and q4_0 (f32: UnsupportedError).
    budget_bytes: > 0 gives the budget as bytes of kept entries, all layers and KV heads together (decode
        room not counted), so that types and methods compare at equal memory: ``budget`` becomes the most
        entries per head on average that fit at the types' entry size (kv_stats()["entry_bytes"]).
    """

    method: str = "full"
    budget: int = 128
    window: int = 8
    beta: Optional[float] = None
    temp: float = 1.0
    pooling: Optional[str] = None
    kernel: Optional[int] = None
    span: Optional[int] = None
    reach: Optional[int] = None
    value_fit: float = 0.0
    cap_ceiling: float = 0.0
    probe: Union[None, str, Sequence[int]] = None
    adaptive: bool = False
    scores: Optional[str] = None
    max_new_tokens: int = 512
    type_k: str = "f16"
    type_v: str = "f16"
    budget_bytes: int = 0

    def resolved_span(self) -> int:
        if self.span is not None:
            return int(self.span)
        return 0 if (self.pooling is not None or self.kernel is not None) else DEFAULT_SPAN

    def resolved_reach(self) -> int:
        if self.reach is not None:
            return int(self.reach)
        return DEFAULT_REACH if self.resolved_span() > 1 else 0

    def probe_tokens(self, tokenize=None) -> list:
        """Token ids of the probe (``tokenize(text)`` turns text into ids without BOS; needed for a
        text probe)."""
        if self.probe is None or self.probe == "":
            return []
        if isinstance(self.probe, str):
            if tokenize is None:
                from .errors import InvalidArgumentError
                raise InvalidArgumentError("a text probe needs the model's tokenizer (pass the KVConfig to Model)")
            return list(tokenize(REPEAT_PROBE if self.probe in ("repeat", "reconstruct") else self.probe))
        return [int(t) for t in self.probe]

    def native(self, tokenize=None):
        from . import _core
        from .errors import InvalidArgumentError

        def refuse(name, what):
            raise InvalidArgumentError(f"{name} must be {what}, got {getattr(self, name)!r}")

        for name in ("type_k", "type_v"):
            if not isinstance(getattr(self, name), str):
                refuse(name, "a cache type name such as 'f16'")
        if not isinstance(self.budget_bytes, numbers.Integral) or isinstance(self.budget_bytes, bool) or self.budget_bytes < 0:
            refuse("budget_bytes", "an integer >= 0")
        # numbers, not bools (which the native layer would take as 0 / 1); the engine checks the ranges
        for name, what in (("value_fit", "a number >= 0 (0 = off)"), ("cap_ceiling", "0 (none) or a number >= 1")):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                refuse(name, what)
        probe = self.probe_tokens(tokenize)
        return _core.KVConfigNative(self.method, int(self.budget), int(self.window),
                                    0.0 if self.beta is None else float(self.beta),
                                    float(self.temp), 7 if self.kernel is None else int(self.kernel),
                                    self.pooling or "max", os.fspath(self.scores) if self.scores else "",
                                    int(self.max_new_tokens), self.resolved_span(), probe,
                                    self.probe == "reconstruct", bool(self.adaptive), self.type_k, self.type_v,
                                    int(self.budget_bytes), float(self.value_fit), self.resolved_reach(),
                                    float(self.cap_ceiling))
