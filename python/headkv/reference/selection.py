"""NumPy reference of the per-KV-head token selection (observation-window attention, pooling,
top-k), written from the SnapKV/HeadKV description independently of cpp/src/select/selection.cpp."""
from __future__ import annotations

import numpy as np


def window_scores(q, k, kernel=7, max_pool=True):
    """q: [window, n_head, d]; k: [n_head_kv, N, d] -> pooled scores [n_head_kv, N - window]."""
    a, n_head, d = q.shape
    n_kv, N, _ = k.shape
    G = n_head // n_kv
    P = N - a
    out = np.zeros((n_kv, P), np.float64)
    for h in range(n_head):
        g = h // G
        logits = q[:, h, :].astype(np.float64) @ k[g].astype(np.float64).T / np.sqrt(d)  # [a, N]
        for i in range(a):
            visible = P + i + 1
            row = logits[i, :visible]
            p = np.exp(row - row.max())
            p /= p.sum()
            out[g] += p[:P]
    out /= a * G
    if kernel == 1:
        return out
    r = kernel // 2
    padded = np.pad(out, ((0, 0), (r, r)), constant_values=-np.inf if max_pool else 0.0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=1)
    return windows.max(-1) if max_pool else windows.sum(-1) / kernel


def select(q, k, caps, kernel=7, max_pool=True):
    s = window_scores(q, k, kernel, max_pool)
    kept = []
    for g, c in enumerate(caps):
        order = np.lexsort((np.arange(s.shape[1]), -s[g]))  # score desc, position asc
        kept.append(np.sort(order[:c]))
    return kept, s
