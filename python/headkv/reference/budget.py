"""HeadKV per-KV-head budget allocation (Fu et al., "Not All Heads Matter", ICLR 2025), in NumPy.

    S    = s**temp / sum(s**temp)          s: per-KV-head score (sum over its GQA query heads)
    B'   = B - window                      B: average KV entries per head, window included
    pool = (B' // beta) * n_heads          n_heads = L * H_kv
    cap  = round(S * pool + B' - B' // beta)

then headkv's additions: caps above the prefix length P = N - window (or, with a ceiling c >= 1,
min(P, floor(c * B'))) are clamped to it and the
surplus is shared by the other heads in proportion to S (repeated until none exceeds P); rounding
overshoot above n_heads * B' is trimmed from the largest caps, one token each (lowest index first
among equals). Returned caps exclude the window.
"""
import numpy as np


def group_scores(scores, n_head_kv):
    """[L, H] query-head scores -> [L, H_kv]: each KV head gets the sum over the query heads it serves."""
    s = np.asarray(scores, dtype=np.float64)
    L, H = s.shape
    return s.reshape(L, n_head_kv, H // n_head_kv).sum(axis=2)


def headkv_caps(kv_scores, budget, window=8, beta=1.2, temp=1.0, prompt_len=None, ceiling=0.0):
    """Prefix tokens kept per KV head (same shape as kv_scores)."""
    if not (ceiling == 0 or (np.isfinite(ceiling) and ceiling >= 1)):
        raise ValueError(f"cap_ceiling must be 0 (none) or a finite number >= 1, got {ceiling!r}")
    s = np.asarray(kv_scores, dtype=np.float64)
    shape, s = s.shape, s.ravel()
    n = s.size
    if prompt_len is not None and budget >= prompt_len:   # nothing to compress
        return np.full(shape, max(prompt_len - window, 0), dtype=np.int32)
    share = s ** temp / np.sum(s ** temp)
    b = budget - window
    fixed_pool = b // beta                        # Python float floor division, as in the paper's code
    c = share * (fixed_pool * n) + (b - fixed_pool)

    P = np.inf if prompt_len is None else prompt_len - window
    if ceiling:
        P = min(P, np.floor(ceiling * b + 1e-9))
    free = np.ones(n, dtype=bool)
    while True:
        over = free & (c > P)
        if not over.any():
            break
        surplus = np.sum(c[over] - P)
        c[over] = P
        free &= ~over
        if not free.any():
            break
        w = share[free]
        c[free] += surplus * (w / w.sum() if w.sum() > 0 else np.full(w.size, 1.0 / w.size))

    cap = np.clip(np.round(c), 0, P).astype(np.int64)   # np.round: half to even
    excess = cap.sum() - n * b
    while excess > 0:
        for i in sorted(range(n), key=lambda i: (-cap[i], i)):
            if excess == 0:
                break
            if cap[i] > 0:
                cap[i] -= 1
                excess -= 1
    return cap.reshape(shape).astype(np.int32)


def plan(method, scores, n_layer, n_head_kv, budget, window=8, beta=1.2, temp=1.0, prompt_len=None,
         pyramid_beta=20, ceiling=0.0):
    """[L, H_kv] caps for every method (see cpp/src/select/budget.h for the rules)."""
    if method == "full" or (prompt_len is not None and budget >= prompt_len):
        return np.full((n_layer, n_head_kv), max(prompt_len - window, 0), dtype=np.int32)
    b = budget - window
    if method in ("snapkv", "streaming", "adakv"):
        return np.full((n_layer, n_head_kv), b, dtype=np.int32)
    if method == "pyramidkv":
        lo = b // pyramid_beta
        hi = 2 * b - lo
        if prompt_len is not None and hi > prompt_len - window:
            hi = prompt_len - window
            lo = 2 * b - hi
        if n_layer == 1:
            per_layer = np.array([b])
        else:
            # linear from hi (layer 0) to lo (top layer) as exact rationals num / (L-1)
            num = [hi * (n_layer - 1) - l * (hi - lo) for l in range(n_layer)]
            per_layer = np.array([x // (n_layer - 1) for x in num])
            frac = [x % (n_layer - 1) for x in num]
            missing = n_layer * b - per_layer.sum()
            for l in sorted(range(n_layer), key=lambda l: (-frac[l], l))[:missing]:
                per_layer[l] += 1
        return np.repeat(per_layer[:, None], n_head_kv, axis=1).astype(np.int32)
    if method == "headkv":
        if not beta:  # 0 / None: headkv's default, 4 at budgets <= 64, else 2
            beta = 4.0 if budget <= 64 else 2.0
        return headkv_caps(group_scores(scores, n_head_kv), budget, window, beta, temp, prompt_len, ceiling)
    raise ValueError(f"unknown method {method!r}")
