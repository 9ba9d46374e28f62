"""The head-scoring rules (HeadKV, Fu et al. 2025; FYYFU/HeadKV Important_Head/*.py), in NumPy.

One decode step gives ``att[L, H, N]``: the softmax attention of the step's query (the token fed
at that step: the last prompt token first, then each generated token) over all N cached
positions, per layer and query head; ``[s, e)`` is the answer span in the prompt (tokens).

R2 (retrieval-reasoning, ``retrieval_head_detection_r2.py``): with k = e - s, a head's step score
is the sum of the attention values among its top-k positions that fall inside the span, divided
by k. Step scores are **summed** over the answer steps (no division by the number of steps, as
the official code does), giving the example's score per head.

R (retrieval heads, ``retrieval_head_detection.py``): a head scores 1/k at a step when its top-1
position lies inside the span and the prompt token there equals the token generated at that
step; summed over steps.

An example is kept when F1(response, answer) > 0.5; a head's score is the mean of its example
scores over the kept examples (the official JSON stores the per-example list, the mean is taken
on reading).

Top-k ties: positions with equal attention are ordered by ``np.argsort(kind="stable")`` of the
negated values, i.e. the lower position wins; only exact float ties are affected.
"""
from __future__ import annotations

import numpy as np

F1_THRESHOLD = 0.5


def r2_step(att: np.ndarray, s: int, e: int) -> np.ndarray:
    """[L, H] step score of the R2 rule (top-k attention mass inside [s, e) divided by k)."""
    att = np.asarray(att)
    k = e - s
    if k <= 0 or e > att.shape[-1] or s < 0:
        raise ValueError(f"bad answer span [{s}, {e}) for {att.shape[-1]} positions")
    k = min(k, att.shape[-1])
    # top-k per head; stable order so exact ties go to the lower position
    idx = np.argsort(-att, axis=-1, kind="stable")[..., :k]
    vals = np.take_along_axis(att, idx, axis=-1).astype(np.float64)
    inside = (idx >= s) & (idx < e)
    return (vals * inside).sum(axis=-1) / (e - s)


def r_step(att: np.ndarray, s: int, e: int, token: int, prompt_ids) -> np.ndarray:
    """[L, H] step score of the R rule (1/k when the top-1 position is in the span and holds the
    generated token)."""
    att = np.asarray(att)
    if e - s <= 0 or e > att.shape[-1] or s < 0:
        raise ValueError(f"bad answer span [{s}, {e}) for {att.shape[-1]} positions")
    top = np.argmax(att, axis=-1)  # first maximum: lower position on exact ties
    ids = np.asarray(prompt_ids)
    hit = (top >= s) & (top < e)
    same = np.zeros_like(hit)
    same[hit] = ids[top[hit]] == int(token)
    return (hit & same).astype(np.float64) / (e - s)


def step_score(method: str, att, s: int, e: int, token: int, prompt_ids) -> np.ndarray:
    if method == "R2":
        return r2_step(att, s, e)
    if method == "R":
        return r_step(att, s, e, token, prompt_ids)
    raise ValueError(f"method must be 'R' or 'R2', got {method!r}")


def aggregate(example_scores, kept) -> tuple[np.ndarray, np.ndarray]:
    """(mean over kept examples [L, H], per-example stack of the kept ones [n_kept, L, H])."""
    kept_scores = np.stack([np.asarray(x, dtype=np.float64) for x, k in zip(example_scores, kept) if k])
    return kept_scores.mean(axis=0), kept_scores
