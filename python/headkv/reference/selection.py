"""NumPy reference of the per-KV-head token selection (observation-window attention, pooling,
top-k), written from the SnapKV/HeadKV description independently of cpp/src/select/selection.cpp."""
from __future__ import annotations

import numpy as np


_SPACE = b" \n\t\r\f\v"


def token_runs(pieces, special, span):
    """Run ids of a token sequence for span-aware selection. pieces: each token's decoded bytes;
    special: whether each token is a special (control) token. Two neighbours share a run when the
    left one ends and the right one starts with a non-whitespace byte and neither is special; runs
    are cut every ``span`` tokens (span <= 1: every token its own run). Returns int ids, equal
    within a run."""
    ids, run, length = [], -1, 0
    for i, (p, sp) in enumerate(zip(pieces, special)):
        joins = (i > 0 and span > 1 and not sp and not special[i - 1] and len(p) and len(pieces[i - 1])
                 and p[0] not in _SPACE and pieces[i - 1][-1] not in _SPACE and length < span)
        if joins:
            length += 1
        else:
            run, length = run + 1, 1
        ids.append(run)
    return np.asarray(ids, np.int64)


def run_max(s, runs):
    """s: scores [..., P]; runs: run ids [>= P] -> every position gets its run's maximum."""
    r = np.asarray(runs)[: s.shape[-1]]
    out = s.copy()
    for rid in np.unique(r):
        idx = np.nonzero(r == rid)[0]
        if idx.size > 1:
            out[..., idx] = s[..., idx].max(-1, keepdims=True)
    return out


# The first positions (the attention sink) do not reach forward.
REACH_FROM = 4


def window_scores(q, k, kernel=7, max_pool=True, runs=None, prefix=None, reach=0):
    """q: [window, n_head, d] (the keys' last rows); k: [n_head_kv, N, d] -> pooled scores
    [n_head_kv, P], P = ``prefix`` or N - window. ``runs``: token run ids (span-aware). ``reach``
    (max pooling): each position j also takes the raw peaks of positions j - kernel//2 - reach .. j - kernel//2 - 1
    from REACH_FROM on."""
    a, n_head, d = q.shape
    n_kv, N, _ = k.shape
    G = n_head // n_kv
    P = N - a if prefix is None else prefix
    out = np.zeros((n_kv, P), np.float64)
    for h in range(n_head):
        g = h // G
        logits = q[:, h, :].astype(np.float64) @ k[g].astype(np.float64).T / np.sqrt(d)  # [a, N]
        for i in range(a):
            visible = N - a + i + 1
            row = logits[i, :visible]
            p = np.exp(row - row.max())
            p /= p.sum()
            out[g] += p[:P]
    out /= a * G
    raw = out
    if kernel > 1:
        r = kernel // 2
        padded = np.pad(out, ((0, 0), (r, r)), constant_values=-np.inf if max_pool else 0.0)
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=1)
        out = windows.max(-1) if max_pool else windows.sum(-1) / kernel
    if reach > 0 and max_pool:  # sources: raw scores j - r - reach .. j - r - 1, none before REACH_FROM
        r = kernel // 2
        src = raw.copy()
        src[:, :REACH_FROM] = -np.inf
        out = out.copy()
        for j in range(P):
            lo, hi = max(0, j - r - reach), max(0, j - r)
            if hi > lo:
                out[:, j] = np.maximum(out[:, j], src[:, lo:hi].max(-1))
    return out if runs is None else run_max(out, runs)


def select(q, k, caps, kernel=7, max_pool=True, reach=0):
    s = window_scores(q, k, kernel, max_pool, reach=reach)
    kept = []
    for g, c in enumerate(caps):
        order = np.lexsort((np.arange(s.shape[1]), -s[g]))  # score desc, position asc
        kept.append(np.sort(order[:c]))
    return kept, s


def topk(s, cap):
    """The `cap` highest scores of a 1-D array, ties to the lower position; sorted positions."""
    return np.sort(np.lexsort((np.arange(s.size), -s))[:cap])


def adakv_split(s, caps, floor_frac=0.2):
    """Ada-KV within one layer. s: pooled scores [n_head_kv, P]; caps: per-head budgets (window
    excluded). Each head first keeps its top floor(floor_frac * cap) positions; the rest of the
    layer's total goes to the best remaining (head, position) pairs of the whole layer (ties: lower
    head, then lower position)."""
    n_kv, P = s.shape
    kept, taken = [], np.zeros((n_kv, P), bool)
    for g in range(n_kv):
        f = min(P, int(floor_frac * caps[g]))
        kept.append(list(topk(s[g], f)))
        taken[g, kept[-1]] = True
    extra = min(int(np.sum(caps)) - sum(len(k) for k in kept), int((~taken).sum()))
    flat = np.where(~taken.ravel(), s.ravel(), -np.inf)
    for i in np.lexsort((np.arange(flat.size), -flat))[:extra]:
        kept[i // P].append(i % P)
    return [np.sort(np.array(k, dtype=np.int64)) for k in kept]


def streaming(P, caps, sink=4):
    """StreamingLLM: the first `sink` positions (attention sinks) plus the most recent ones."""
    out = []
    for c in caps:
        n_sink = min(sink, c)
        out.append(np.concatenate([np.arange(n_sink), np.arange(P - (c - n_sink), P)]).astype(np.int64))
    return out


def select_layer(method, q, k, caps, kernel=7, max_pool=True, sink=4, adakv_floor=0.2, runs=None, prefix=None,
                 reach=0):
    """Kept prefix positions per KV head of one layer for any method, and the pooled scores
    (None for streaming). q: window queries [window, n_head, d] (k's last rows); k: [n_head_kv, N, d];
    prefix: positions scored (default N - window); runs, reach: token run ids and the forward reach
    (span-aware selection)."""
    P = k.shape[1] - q.shape[0] if prefix is None else prefix
    if method == "streaming":
        return streaming(P, caps, sink), None
    s = window_scores(q, k, kernel, max_pool, runs, prefix, reach)
    if method == "adakv":
        return adakv_split(s, caps, adakv_floor), s
    return [topk(s[g], c) for g, c in enumerate(caps)], s


def fit_values(q, k, v, kept, lam=1.0, softcap=0.0):
    """Value fitting, written from its formula (cpp/src/select/value_fit.h) in float64: q: the window
    queries [a, n_head, d] (the last a rows of k / v); k, v: [n_head_kv, N, d]; kept: the kept prefix
    positions per KV head. Each window query (every head of the group) reads o_full over its visible
    keys and o_comp over the kept prefix and the visible window; with A its probabilities on the kept
    prefix (softmax over kept + window), the kept values move by A^T (A A^T + lam tr(A A^T)/m I)^-1
    (o_full - o_comp). Returns the fitted v (float64 copy)."""
    a, n_head, d = q.shape
    n_kv, N, _ = k.shape
    G, P = n_head // n_kv, N - a
    k, v, q = k.astype(np.float64), v.astype(np.float64).copy(), q.astype(np.float64)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    for g in range(n_kv):
        S = np.asarray(kept[g], np.int64)
        if S.size == 0:
            continue
        A, R = [], []
        for t in range(a):
            idx = np.concatenate([S, np.arange(P, P + t + 1)])
            for h in range(g * G, (g + 1) * G):
                logits = k[g, :P + t + 1] @ q[t, h] / np.sqrt(d)
                if softcap > 0:
                    logits = softcap * np.tanh(logits / softcap)
                pc = softmax(logits[idx])
                R.append(softmax(logits) @ v[g, :P + t + 1] - pc @ v[g, idx])
                A.append(pc[:S.size])
        A, R = np.array(A), np.array(R)
        M = A @ A.T
        tr = np.trace(M)
        if tr <= 0:
            continue
        v[g, S] += A.T @ np.linalg.solve(M + lam * tr / len(A) * np.eye(len(A)), R)
    return v
