"""Needle examples -> prompts with answer spans -> per-head scores of each example.

Records (one per example; written to the examples JSONL so a run can be replayed):
    generated needles: the needles.generate() dict + context_length, depth, offset, context
    user records (--examples): {"context", "question", "answer"} + optional "span" (the text in
    the context the answer comes from; default: the answer itself, which must occur verbatim)
"""
from __future__ import annotations

import json
import time
from typing import Optional, Sequence

import numpy as np

from .. import needles as nd
from ..errors import InvalidArgumentError
from ..haystack import build_context
from .rules import F1_THRESHOLD, step_score


def grid_examples(model, kind, haystack, lengths, depths, per_cell, seed=0, split="score", progress=False,
                  family=None):
    """Generated needles over the grid lengths x depths (per_cell needles per cell), each in its
    own haystack slice (essay offset = example index); ``family``: the R2 needle family."""
    n = len(lengths) * len(depths) * per_cell
    gen = nd.generate(kind, n, seed=seed, split=split, family=family)
    tok = lambda s: model.tokenize(s, add_bos=False)  # noqa: E731
    out, i = [], 0
    for L in lengths:
        for d in depths:
            for _ in range(per_cell):
                ex = dict(gen[i])
                ex.update(context_length=int(L), depth=float(d), offset=i % len(haystack))
                ex["context"] = build_context(tok, haystack, int(L), float(d), ex["needle"], offset=ex["offset"])
                out.append(ex)
                i += 1
    return out


def read_records(path) -> list[dict]:
    """User (context, question, answer[, span]) records from a JSONL file; InvalidArgumentError
    naming the line on a malformed record."""
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidArgumentError(f"{path}:{ln}: not valid JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise InvalidArgumentError(f"{path}:{ln}: a record must be a JSON object")
            for k in ("context", "question", "answer"):
                if not isinstance(r.get(k), str) or not r[k].strip():
                    raise InvalidArgumentError(f"{path}:{ln}: field {k!r} must be a non-empty string")
            span = r.get("span", r["answer"])
            if not isinstance(span, str) or not span.strip():
                raise InvalidArgumentError(f"{path}:{ln}: field 'span' must be a non-empty string")
            if span not in r["context"]:
                raise InvalidArgumentError(f"{path}:{ln}: the answer span {span[:60]!r} does not occur verbatim "
                                           f"in the context (give the evidence text as 'span')")
            rec = dict(r)
            rec.setdefault("id", f"user-{ln}")
            rec.setdefault("kind", "user")
            rec["span"] = span
            out.append(rec)
    if not out:
        raise InvalidArgumentError(f"{path}: no records")
    return out


def prompt_ids(model, record, chat=True):
    """(token ids, prompt text, bos_added) of a record's prompt."""
    user = nd.prompt_text(record["context"], record["question"])
    if chat:
        text = model.apply_chat_template([{"role": "user", "content": user}])
        bos = model.token_bos()
        bos_text = model.detokenize([bos]).decode("utf-8", "replace") if bos >= 0 else None
        add_bos = model._e.add_bos and not (bos_text and text.startswith(bos_text))
        text += record.get("answer_prefix") or ""
        return model.tokenize(text, add_bos=add_bos, special=True), text
    text = user + "\nAnswer: " + (record.get("answer_prefix") or "")
    return model.tokenize(text.rstrip()), text.rstrip()


def token_span(model, ids, text, char_start, char_end):
    """[s, e) token range covering text[char_start:char_end] (tokens overlapping it)."""
    pieces = [model.detokenize([t]) for t in ids]
    joined = b"".join(pieces)
    tb = text.encode("utf-8")
    if not joined.endswith(tb):
        raise InvalidArgumentError("prompt tokens do not detokenize to the prompt text; cannot locate the answer span")
    shift = len(joined) - len(tb)
    sb = shift + len(text[:char_start].encode("utf-8"))
    eb = shift + len(text[:char_end].encode("utf-8"))
    ends = np.cumsum([len(p) for p in pieces])
    starts = ends - np.array([len(p) for p in pieces])
    inside = np.nonzero((ends > sb) & (starts < eb))[0]
    return int(inside[0]), int(inside[-1]) + 1


def prepare(model, record, chat=True):
    """Adds ids, span_tokens [s, e) and n_answer_tokens to a copy of the record."""
    ids, text = prompt_ids(model, record, chat)
    anchor = text.find(record["needle"]) if record.get("needle") else text.find(record["context"])
    if anchor < 0:
        raise InvalidArgumentError(f"record {record.get('id')}: context not found in the rendered prompt")
    cs = text.find(record["span"], anchor)
    if cs < 0:
        raise InvalidArgumentError(f"record {record.get('id')}: answer span not found in the prompt")
    s, e = token_span(model, ids, text, cs, cs + len(record["span"]))
    r = dict(record)
    r["ids"] = ids
    r["span_tokens"] = [s, e]
    r["n_answer_tokens"] = len(model.tokenize(record["answer"].strip(), add_bos=False))
    return r


def is_stop_fn(model):
    def is_stop(tok):
        return model.is_eog(tok) or b"\n" in model.detokenize([tok])
    return is_stop


def score_one(backend, model, method, rec, extra_steps=0):
    """Runs one prepared record; returns (scores [L, H], result dict)."""
    ids = rec["ids"]
    s, e = rec["span_tokens"]
    steps = max(1, rec["n_answer_tokens"] + int(extra_steps))
    acc, gen = None, []
    t0 = time.perf_counter()
    for att, tok in backend.steps(ids, steps, is_stop_fn(model)):
        sc = step_score(method, att, s, e, tok, ids)
        acc = sc if acc is None else acc + sc
        gen.append(tok)
    dt = time.perf_counter() - t0
    text_toks = [t for t in gen if not model.is_eog(t)]
    response = model.detokenize(text_toks).decode("utf-8", "replace").strip()
    f1 = nd.f1_score(response, rec["answer"])
    return acc, {"id": rec.get("id"), "response": response, "f1": round(f1, 6), "kept": bool(f1 > F1_THRESHOLD),
                 "n_prompt": len(ids), "span_tokens": [s, e], "steps": len(gen), "generated": gen,
                 "seconds": round(dt, 3)}


def score_records(backend, model, method, records, chat=True, extra_steps=0, progress=True, desc=None):
    """(per-example scores list, results list) for records (raw or prepared)."""
    it = records
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(records, desc=desc or f"{method} {backend.name}", unit="ex")
        it = bar
    all_scores, results, kept = [], [], 0
    for r in it:
        rec = r if "ids" in r else prepare(model, r, chat)
        sc, res = score_one(backend, model, method, rec, extra_steps)
        all_scores.append(sc)
        results.append(res)
        kept += res["kept"]
        if bar is not None:
            bar.set_postfix(kept=kept)
    return all_scores, results
