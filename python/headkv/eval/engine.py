"""What every task needs from the engine: a Model per (method, budget), prompts that fit the
context (chat template, middle truncation), and greedy generation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import InvalidArgumentError
from ..kv import METHODS

KV_TYPES = ("f16", "f32", "q8_0", "q4_0")


@dataclass(frozen=True)
class Config:
    """One KV setting of the grid: ``method`` at ``budget`` entries per KV head (None for full),
    K and V stored as ``kv_type`` (f16, the default, is left out of the name)."""
    method: str
    budget: Optional[int]
    kv_type: str = "f16"

    @property
    def name(self) -> str:
        base = "full" if self.method == "full" else f"{self.method}@{self.budget}"
        return base if self.kv_type == "f16" else f"{base}/{self.kv_type}"


def grid(methods, budgets, kv_types=("f16",)) -> list[Config]:
    """``full`` once per cache type (budget-free), every other method at every budget and type: the
    same total KV entries (L x H_kv x budget) for all compressing methods at one budget (the bytes
    differ by type: records carry ``kv_bytes``)."""
    out = []
    for t in kv_types:
        if t not in KV_TYPES:
            raise InvalidArgumentError(f"unknown KV cache type {t!r} (known: {', '.join(KV_TYPES)})")
    for m in methods:
        if m not in METHODS:
            raise InvalidArgumentError(f"unknown KV method {m!r} (known: {', '.join(METHODS)})")
        if m == "full":
            out.extend(Config("full", None, t) for t in kv_types)
        else:
            if not budgets:
                raise InvalidArgumentError(f"method {m!r} needs at least one budget")
            out.extend(Config(m, int(b), t) for b in budgets for t in kv_types)
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


@dataclass
class EngineOptions:
    model_path: str
    n_ctx: int = 8192
    n_threads: int = 2
    device: str = "cpu"
    scores: Optional[str] = None
    window: int = 8
    beta: Optional[float] = None    # None: the engine's default_beta(budget)
    pooling: Optional[str] = None   # None: max (KVConfig's default)
    kernel: Optional[int] = None    # None: 7
    span: Optional[int] = None      # None: KVConfig's rule (span-aware unless pooling/kernel are given)
    reach: Optional[int] = None     # None: KVConfig's rule (DEFAULT_REACH in span-aware selection)
    probe: Optional[str] = None     # observation probe for query-agnostic examples (ruler agnostic mode)
    adaptive: bool = False          # headkv: Ada-KV split of each layer's score-given total
    value_fit: float = 0.0          # value fitting's ridge (KVConfig.value_fit); 0: off
    cap_ceiling: float = 0.0        # headkv: KVConfig.cap_ceiling; 0: none
    extra: dict = field(default_factory=dict)


def make_model(opts: EngineOptions, cfg: Config, max_new_tokens: int, probe: Optional[str] = None):
    """A fresh Model for one (method, budget) with room for ``max_new_tokens`` decode steps;
    ``probe``: the observation probe (examples whose question comes after the compression)."""
    import headkv
    kw = dict(n_ctx=opts.n_ctx, n_threads=opts.n_threads, kv_method=cfg.method, window=opts.window,
              pooling=opts.pooling, kernel=opts.kernel, span=opts.span, reach=opts.reach, value_fit=opts.value_fit, beta=opts.beta,
              cap_ceiling=opts.cap_ceiling if cfg.method == "headkv" else 0.0,
              probe=probe, adaptive=opts.adaptive and cfg.method == "headkv",
              max_new_tokens=max(int(max_new_tokens), 1), type_k=cfg.kv_type, type_v=cfg.kv_type)
    if opts.device != "cpu":
        kw["device"] = opts.device
    if cfg.budget is not None:
        kw["kv_budget"] = cfg.budget
    if cfg.method == "headkv":
        from .runner import shipped_scores
        sc = opts.scores or shipped_scores(opts.model_path)
        if sc:
            kw["scores"] = sc
    try:
        return headkv.Model(opts.model_path, **kw)
    except headkv.InvalidArgumentError as e:
        if cfg.method == "headkv" and not opts.scores and "score" in str(e):
            raise InvalidArgumentError(f"{e} (pass --scores FILE for the headkv method)") from e
        raise


def _chat_overhead(model) -> int:
    return len(model.tokenize(model.apply_chat_template([{"role": "user", "content": ""}]), add_bos=False,
                              special=True))


def fit_prompt(model, text: str, n_ctx: int, max_gen: int, chat: bool = True) -> list[int]:
    """Token ids of ``text`` (wrapped in the model's chat template when ``chat`` and the model has
    one), the text truncated in the middle (LongBench's rule) so prompt + ``max_gen`` fit ``n_ctx``."""
    use_chat = chat and bool(model._e.chat_template)
    budget = n_ctx - max_gen - (_chat_overhead(model) if use_chat else 1) - 1
    if budget < 16:
        raise InvalidArgumentError(f"n_ctx {n_ctx} leaves no room for a prompt and {max_gen} new tokens")
    ids = model.tokenize(text, add_bos=False, special=False)
    if len(ids) > budget:
        half = budget // 2
        text = (model.detokenize(ids[:half]).decode("utf-8", errors="ignore")
                + model.detokenize(ids[-half:]).decode("utf-8", errors="ignore"))
    if use_chat:
        return model.tokenize(model.apply_chat_template([{"role": "user", "content": text}]), add_bos=False,
                              special=True)
    return model.tokenize(text)


def chat_prompt(model, text: str, assistant_prefix: str = "", chat: bool = True) -> list[int]:
    """Token ids of one user turn (no truncation), optionally with the start of the reply; plain text
    (completion style, for base models) when ``chat`` is False or the model has no template."""
    if not (chat and model._e.chat_template):
        return model.tokenize(text + ("\n" + assistant_prefix if assistant_prefix else ""))
    return model.tokenize(model.apply_chat_template([{"role": "user", "content": text}]) + assistant_prefix,
                          add_bos=False, special=True)


def greedy(model, prompt_ids, max_new: int, stop_at_newline: bool = False) -> tuple[list[int], str]:
    """Greedy decoding after a fresh prefill of ``prompt_ids``: stops at an end-of-generation token,
    after ``max_new`` tokens, or (``stop_at_newline``) at the first newline after some text.
    ``prompt_ids`` may also be a list of pieces (lists of token ids), evaluated one ``eval`` call
    each: see :func:`greedy_pieces`."""
    if len(prompt_ids) and isinstance(prompt_ids[0], (list, tuple)):
        return greedy_pieces(model, prompt_ids, max_new, stop_at_newline)
    return greedy_pieces(model, [prompt_ids], max_new, stop_at_newline)


def greedy_pieces(model, pieces, max_new: int, stop_at_newline: bool = False) -> tuple[list[int], str]:
    """Greedy decoding after ``model.reset()`` and one ``model.eval`` per piece, in order. With a
    compressing KV method the first piece is the prefill that compresses, and later pieces go into
    the decode slots uncompressed: ``[context, question]`` compresses the context before the
    question exists (query-agnostic), ``[context + question]`` with the question in the
    compression's observation window (query-aware). The model needs ``max_new_tokens`` >= the
    later pieces' tokens + ``max_new``."""
    model.reset()
    for p in pieces:
        if len(p):
            model.eval(p)
    out: list[int] = []
    for _ in range(max_new):
        tok = int(model.logits().argmax())
        if model.is_eog(tok):
            break
        out.append(tok)
        if stop_at_newline and b"\n" in model.detokenize([tok]) and model.detokenize(out).strip():
            break
        if len(out) == max_new or model.n_past >= model.n_ctx:
            break
        model.eval([tok])
    text = model.detokenize(out).decode("utf-8", errors="replace")
    return out, text
