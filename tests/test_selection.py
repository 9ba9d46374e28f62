"""Per-KV-head selection (window attention -> pooling -> top-k) against the NumPy reference."""
import numpy as np
import pytest

import headkv
from headkv import _core
from headkv.reference import selection as ref


def _case(seed, n_head=6, n_kv=2, d=16, N=120, window=8):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((window, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_kv, N, d)).astype(np.float32)
    return q, k


@pytest.mark.parametrize("kernel,max_pool,reach", [(7, True, 0), (5, False, 0), (1, True, 0), (7, True, 8),
                                                   (1, True, 5), (5, False, 8)])
def test_selection_matches_reference(kernel, max_pool, reach):
    for seed in range(5):
        q, k = _case(seed)
        caps = np.array([10, 37], np.int32)
        kept, scores = _core.select_window_topk(q, k, caps, kernel=kernel, max_pool=max_pool, reach=reach)
        rkept, rscores = ref.select(q, k, caps, kernel, max_pool, reach)
        np.testing.assert_allclose(scores, rscores, rtol=1e-5, atol=1e-7)
        for g in range(2):
            assert list(kept[g]) == list(rkept[g]), (seed, g)
            assert len(kept[g]) == caps[g]


def test_hand_checked_pooling_and_ties():
    # One head, d = 1: q = 0 makes every visible key equally likely, so the scores are known.
    N, window = 6, 2
    q = np.zeros((window, 1, 1), np.float32)
    k = np.zeros((1, N, 1), np.float32)
    _, s = _core.select_window_topk(q, k, np.array([0], np.int32), kernel=1)
    # query 0 sees 5 keys (p = 1/5), query 1 sees 6 (p = 1/6); mean over the window
    np.testing.assert_allclose(s[0], np.full(4, (1 / 5 + 1 / 6) / 2), rtol=1e-6)
    kept, _ = _core.select_window_topk(q, k, np.array([2], np.int32), kernel=3, max_pool=True)
    assert list(kept[0]) == [0, 1]  # all tied: lower positions first
    _, avg = _core.select_window_topk(q, k, np.array([0], np.int32), kernel=3, max_pool=False)
    v = (1 / 5 + 1 / 6) / 2
    np.testing.assert_allclose(avg[0], [2 * v / 3, v, v, 2 * v / 3], rtol=1e-6)  # zero padding counts


def test_hand_checked_forward_reach():
    # One head, d = 1: key 4 alone matches the query, so position 4 is the only attention peak. A reach of
    # 3 lifts the 3 positions after the peak (kernel 1: no symmetric window), so a top-4 keeps 4..7 where
    # the symmetric kernel 3 keeps 3..5 and the first of the tied rest (0); average pooling ignores the reach.
    N, window = 12, 2
    q = np.full((window, 1, 1), 10.0, np.float32)
    k = np.zeros((1, N, 1), np.float32)
    k[0, 4, 0] = 1.0
    cap = np.array([4], np.int32)
    kept, s = _core.select_window_topk(q, k, cap, kernel=1, reach=3)
    assert list(kept[0]) == [4, 5, 6, 7]
    assert s[0, 4] == s[0, 7] > s[0, 8] and s[0, 3] < s[0, 4]
    kept, _ = _core.select_window_topk(q, k, cap, kernel=3)
    assert list(kept[0]) == [0, 3, 4, 5]
    # a peak before kReachFrom (4; the attention sink of the first tokens) lifts nothing after it
    k2 = np.zeros((1, N, 1), np.float32)
    k2[0, 1, 0] = 1.0
    _, s2 = _core.select_window_topk(q, k2, cap, kernel=1, reach=3)
    _, s2_sym = _core.select_window_topk(q, k2, cap, kernel=1)
    np.testing.assert_array_equal(s2, s2_sym)
    assert s2[0, 1] > s2[0, 2]
    np.testing.assert_allclose(s2, ref.window_scores(q, k2, kernel=1, reach=3), rtol=1e-5)
    _, avg = _core.select_window_topk(q, k, cap, kernel=3, max_pool=False, reach=3)
    _, avg0 = _core.select_window_topk(q, k, cap, kernel=3, max_pool=False)
    np.testing.assert_array_equal(avg, avg0)


def test_selection_errors():
    q, k = _case(0)
    with pytest.raises(headkv.InvalidArgumentError):
        _core.select_window_topk(q, k, np.array([10, 500], np.int32))  # cap > prefix
    with pytest.raises(headkv.InvalidArgumentError):
        _core.select_window_topk(q, k, np.array([1, 1], np.int32), kernel=4)
    with pytest.raises(headkv.InvalidArgumentError):
        _core.select_window_topk(q[:, :5], k, np.array([1, 1], np.int32))  # 5 heads over 2 KV heads
