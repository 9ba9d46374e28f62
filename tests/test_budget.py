"""Head score files and per-KV-head budget allocation (cpp/src/select) against the NumPy reference
(python/headkv/reference/budget.py) and hand-computed cases."""
import json

import numpy as np
import pytest

import headkv
from headkv import _core
from headkv import scores as hs
from headkv.reference import budget as ref

from conftest import smollm2_path


def plan(method, scores, L, H, Hkv, B, window=8, beta=1.2, temp=1.0, N=100000, **kw):
    return _core.plan_budget(method, scores, L, H, Hkv, B, window, beta, temp, N, **kw)


# ---- hand-computed ----

def test_hand_computed_small_case():
    # L=2, H=H_kv=2, B=20, α=8, β=1.2, temp=1, long prompt.
    # scores 0.1 0.2 / 0.3 0.4 sum to 1, so S = scores.
    # B' = 12; 12 // 1.2 == 10.0 in Python (CPython floor division of the doubles), so
    # pool = 10 * 4 = 40, fixed part = 12 - 10 = 2:
    #   caps = round(40*S + 2) = 6, 10, 14, 18   (Σ = 48 = 4 * B', with the windows 4 * 20)
    s = np.array([[0.1, 0.2], [0.3, 0.4]])
    caps = plan("headkv", s, 2, 2, 2, 20)
    assert caps.dtype == np.int32 and caps.shape == (2, 2)
    assert caps.tolist() == [[6, 10], [14, 18]]
    assert ref.plan("headkv", s, 2, 2, 20, prompt_len=100000).tolist() == [[6, 10], [14, 18]]


def test_default_beta_is_4_at_small_budgets_else_2(smollm2):
    """β 0 (every front end's default) is 4 at budgets <= 64 and 2 above: the same caps as the explicit
    β, in the engine, the NumPy reference and a Model built without beta."""
    assert [_core.default_beta(b) for b in (16, 64, 65, 128, 1024)] == [4.0, 4.0, 2.0, 2.0, 2.0]
    assert headkv.kv.default_beta(64) == 4.0 and headkv.kv.default_beta(128) == 2.0
    s = np.random.default_rng(3).random((30, 9))
    for B, beta in ((64, 4.0), (128, 2.0), (512, 2.0)):
        want = plan("headkv", s, 30, 9, 3, B, beta=beta)
        assert not np.array_equal(want, plan("headkv", s, 30, 9, 3, B, beta=6.0 - beta))  # β matters here
        np.testing.assert_array_equal(plan("headkv", s, 30, 9, 3, B, beta=0), want)
        np.testing.assert_array_equal(ref.plan("headkv", s, 30, 3, B, beta=None, prompt_len=100000), want)
    ids = list(range(1000, 1700))
    for B in (64, 128):
        caps = []
        for beta in (None, headkv.kv.default_beta(B)):
            m = headkv.Model(smollm2, n_ctx=1024, kv_method="headkv", kv_budget=B, beta=beta, max_new_tokens=4)
            m.eval(ids)
            caps.append(m.kv_stats()["caps"])
        np.testing.assert_array_equal(caps[0], caps[1], err_msg=str(B))


def test_hand_computed_gqa_and_rounding_trim():
    # L=1, H=4 query heads, H_kv=2: KV head scores are the group sums 1+2=3 and 0+0=0.
    # B=20, α=8 → B'=12, F=10, pool=20, fixed=2: caps = 1.0*20+2 = 22, 0+2 = 2 → Σ 24 = 2*B'.
    caps = plan("headkv", np.array([[1.0, 2.0, 0.0, 0.0]]), 1, 4, 2, 20)
    assert caps.tolist() == [[22, 2]]
    # Rounding overshoot: three equal heads, B=9, α=1, β=1 → B'=8, F=8, pool=24, fixed 0:
    # each c = 8 exactly -> no trim. With β=3: F = 8//3 = 2, pool=6, fixed=6, c = 6 + 2 = 8.
    # With scores 1,1,2 and β=1: c = 6, 6, 12 → Σ 24. Now 2 heads 1,1 with B'=3 (B=4, α=1), β=1:
    # c = 1.5, 1.5 → round half to even → 2, 2 → Σ 4 > 2*3? no, 4 <= 6. Use 3 heads B'=1:
    # B=2, α=1, β=1 → F=1, pool=3, c = 1/3*3 = 1 each → fine; scores 1,1,2 → c=0.75,0.75,1.5 →
    # round 1,1,2 = 4 > 3 → trim the largest (index 2) → 1,1,1.
    caps = plan("headkv", np.array([[1.0, 1.0, 2.0]]), 1, 3, 3, 2, window=1, beta=1.0)
    assert caps.tolist() == [[1, 1, 1]]
    assert ref.plan("headkv", np.array([[1.0, 1.0, 2.0]]), 1, 3, 2, window=1, beta=1.0,
                    prompt_len=100).tolist() == [[1, 1, 1]]


def test_floordiv_matches_python():
    for B in range(9, 400, 7):
        for beta in (1.0, 1.2, 1.5, 1.005, 2.0, 3.7):
            s = np.ones((1, 1))
            # one head: cap = pool + fixed = B' whatever F is; use two heads with all weight on one
            s2 = np.array([[1.0, 0.0]])
            caps = plan("headkv", s2, 1, 2, 2, B, beta=beta)
            b = B - 8
            F = b // beta
            assert caps.tolist() == [[int(round(2 * F + b - F)), int(round(b - F))]], (B, beta)
            assert plan("headkv", s, 1, 1, 1, B, beta=beta).tolist() == [[b]]


# ---- against the reference ----

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("temp", [1.0, 0.5, 2.0])
def test_matches_reference_random(seed, temp):
    rng = np.random.default_rng(seed)
    L, Hkv, G = int(rng.integers(1, 12)), int(rng.integers(1, 6)), int(rng.integers(1, 5))
    s = rng.random((L, Hkv * G)) ** 3
    s[rng.random(s.shape) < 0.2] = 0.0
    s[0, 0] = 1.0
    for B in (9, 16, 64, 128, 1024):
        for beta in (1.0, 1.2, 2.0):
            for N in (B + 1, B + 50, 4 * B, 100000):
                got = plan("headkv", s, L, Hkv * G, Hkv, B, beta=beta, temp=temp, N=N)
                want = ref.plan("headkv", s, L, Hkv, B, beta=beta, temp=temp, prompt_len=N)
                np.testing.assert_array_equal(got, want, err_msg=f"L={L} Hkv={Hkv} G={G} B={B} beta={beta} N={N}")
                assert got.sum() <= L * Hkv * (B - 8)
                assert got.min() >= 0 and got.max() <= N - 8


def test_official_llama3_shape(tmp_path):
    # Llama-3-8B: 32 layers x 32 query heads, 8 KV heads; random per-example scores.
    rng = np.random.default_rng(0)
    per_ex = rng.random((32, 32, 5)) * (rng.random((32, 32, 1)) < 0.3)
    path = tmp_path / "Meta-Llama-3-8B-Instruct_retrieval_heads.json"
    hs.write_official(path, per_ex)
    s, method = _core.load_scores(str(path))
    assert method is None and s.shape == (32, 32)
    np.testing.assert_allclose(s, per_ex.mean(axis=2), rtol=1e-15)
    for B in (64, 128, 256, 1024):
        for N in (300, 2000, 100000):
            caps, info = _core.plan_budget("headkv", s, 32, 32, 8, B, 8, 1.2, 1.0, N, return_info=True)
            assert caps.shape == (32, 8)
            want = ref.plan("headkv", s, 32, 8, B, prompt_len=N)
            np.testing.assert_array_equal(caps, want)
            assert info["total"] <= 32 * 8 * B
            assert info["total"] == caps.sum() + 32 * 8 * info["window"]
            assert info["compressed"] == (B < N)


def test_official_format_from_a_single_json_line(tmp_path):
    # the official files are one json.dumps line with keys in insertion order
    d = {f"{l}-{h}": [float(l + h), 1.0] for l in range(2) for h in range(3)}
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    s, _ = hs.load_scores(p)
    np.testing.assert_allclose(s, [[0.5, 1.0, 1.5], [1.0, 1.5, 2.0]])


# ---- clamping ----

def test_clamping_short_prompt_redistributes():
    # one dominant head would get far more than the prompt prefix holds
    s = np.array([[100.0, 1.0, 1.0, 0.0]])
    B, N = 40, 60  # P = 52, B' = 32, F = 26, pool = 104, fixed = 6
    caps = plan("headkv", s, 1, 4, 4, B, N=N)
    assert caps.max() <= N - 8
    assert caps[0, 0] == N - 8
    # surplus went to heads 1, 2 (equal scores) and not to the zero-score head 3
    assert caps[0, 1] == caps[0, 2] and caps[0, 3] == 6
    assert caps.sum() == 4 * (B - 8)
    np.testing.assert_array_equal(caps, ref.plan("headkv", s, 1, 4, B, prompt_len=N))


def test_clamping_cascades():
    s = np.array([[10.0, 5.0, 1.0, 1.0, 1.0, 0.0]])
    for N in range(41, 120, 3):
        caps = plan("headkv", s, 1, 6, 6, 40, N=N)
        assert caps.max() <= N - 8 and caps.min() >= 0
        assert caps.sum() <= 6 * 32
        np.testing.assert_array_equal(caps, ref.plan("headkv", s, 1, 6, 40, prompt_len=N))


def test_ceiling_hand_computed():
    # B = 40, α = 8: B' = 32; β = 2: F = 16, pool = 64, fixed part 16. Scores 6, 1, 1, 0 → S = .75, .125,
    # .125, 0: c = 64, 24, 24, 16 (Σ 128). Ceiling 1.5: no head above floor(1.5 * 32) = 48, so head 0's 16
    # over it go to heads 1 and 2 by score (8 each): 48, 32, 32, 16, the same total.
    s = np.array([[6.0, 1.0, 1.0, 0.0]])
    assert plan("headkv", s, 1, 4, 4, 40, beta=2.0).tolist() == [[64, 24, 24, 16]]
    caps = plan("headkv", s, 1, 4, 4, 40, beta=2.0, cap_ceiling=1.5)
    assert caps.tolist() == [[48, 32, 32, 16]]
    assert ref.plan("headkv", s, 1, 4, 40, beta=2.0, prompt_len=100000, ceiling=1.5).tolist() == [[48, 32, 32, 16]]
    # a ceiling of 1 is the uniform allocation; one above every cap changes nothing; the prefix still bounds
    assert plan("headkv", s, 1, 4, 4, 40, beta=2.0, cap_ceiling=1.0).tolist() == [[32, 32, 32, 32]]
    assert plan("headkv", s, 1, 4, 4, 40, beta=2.0, cap_ceiling=2.0).tolist() == [[64, 24, 24, 16]]
    assert plan("headkv", s, 1, 4, 4, 40, beta=2.0, N=50, cap_ceiling=2.0).max() == 42
    # uniform methods ignore it
    assert plan("snapkv", s, 1, 4, 4, 40, cap_ceiling=1.5).tolist() == [[32, 32, 32, 32]]
    # floor(X * B') of the decimal X: 2.05 * 120 is 245.99999999999997 in doubles, 1.05 * 120 = 126
    big = np.array([[50.0, 1.0, 1.0, 1.0]])
    assert plan("headkv", big, 1, 4, 4, 128, beta=2.0, cap_ceiling=2.05).max() == 246
    assert plan("headkv", big, 1, 4, 4, 128, beta=2.0, cap_ceiling=1.05).max() == 126
    for c in (2.05, 1.05):
        np.testing.assert_array_equal(plan("headkv", big, 1, 4, 4, 128, beta=2.0, cap_ceiling=c),
                                      ref.plan("headkv", big, 1, 4, 128, beta=2.0, prompt_len=100000, ceiling=c))
    with pytest.raises(ValueError, match="cap_ceiling"):
        ref.plan("headkv", s, 1, 4, 40, prompt_len=100000, ceiling=0.5)


@pytest.mark.parametrize("seed", range(4))
def test_ceiling_matches_reference_random(seed):
    rng = np.random.default_rng(seed)
    L, Hkv, G = int(rng.integers(1, 12)), int(rng.integers(1, 6)), int(rng.integers(1, 5))
    s = rng.random((L, Hkv * G)) ** 3
    s[0, 0] = 1.0
    for B in (16, 128, 512):
        for ceiling in (1.0, 1.3, 2.0, 3.0):
            for N in (B + 50, 4 * B, 100000):
                got = plan("headkv", s, L, Hkv * G, Hkv, B, beta=2.0, N=N, cap_ceiling=ceiling)
                want = ref.plan("headkv", s, L, Hkv, B, beta=2.0, prompt_len=N, ceiling=ceiling)
                np.testing.assert_array_equal(got, want, err_msg=f"B={B} ceiling={ceiling} N={N}")
                assert got.max() <= min(N - 8, int(ceiling * (B - 8)))
                n = L * Hkv  # what the ceiling takes stays in the budget (up to rounding)
                assert n * (B - 8) - n <= got.sum() <= n * (B - 8)


def test_no_compression_when_budget_covers_prompt():
    s = np.random.default_rng(1).random((4, 6))
    for method in ("headkv", "snapkv", "pyramidkv", "adakv", "streaming", "full"):
        caps, info = _core.plan_budget(method, s, 4, 6, 3, 128, 8, 1.2, 1.0, 100, return_info=True)
        assert not info["compressed"]
        assert (caps == 92).all() and info["window"] == 8 and info["total"] == 100 * 12
    # prompt shorter than the window: the window holds everything
    caps, info = _core.plan_budget("headkv", s, 4, 6, 3, 128, 8, 1.2, 1.0, 5, return_info=True)
    assert (caps == 0).all() and info["window"] == 5 and info["total"] == 5 * 12
    # budget == prompt length is not compressed either
    _, info = _core.plan_budget("snapkv", None, 4, 6, 3, 100, 8, 1.2, 1.0, 100, return_info=True)
    assert not info["compressed"]


# ---- baselines ----

def test_baselines_same_total():
    L, Hkv, B, N = 32, 8, 128, 5000
    s = np.random.default_rng(2).random((L, 32))
    totals = {}
    for m in ("snapkv", "streaming", "pyramidkv", "adakv", "headkv"):
        caps, info = _core.plan_budget(m, s if m == "headkv" else None, L, 32, Hkv, B, 8, 1.2, 1.0, N,
                                       return_info=True)
        np.testing.assert_array_equal(caps, ref.plan(m, s, L, Hkv, B, prompt_len=N))
        totals[m] = info["total"]
        assert info["layer_pooled"] == (m == "adakv")
    assert totals["snapkv"] == totals["pyramidkv"] == totals["adakv"] == totals["streaming"] == L * Hkv * B
    assert totals["headkv"] <= L * Hkv * B
    full = _core.plan_budget("full", None, L, 32, Hkv, B, 8, 1.2, 1.0, N)
    assert (full == N - 8).all()


def test_pyramidkv_rule():
    # B' = 100, L = 4: lo = 100 // 20 = 5, hi = 195; c = 195, 131.67, 68.33, 5 → floors 195,131,68,5
    # (Σ 399), the missing unit goes to the largest fraction (layer 1: .67) → 195, 132, 68, 5.
    caps = plan("pyramidkv", None, 4, 2, 2, 108)
    assert caps[:, 0].tolist() == [195, 132, 68, 5] and (caps[:, 0] == caps[:, 1]).all()
    # short prompt: hi clamped to P = 150, lo = 200 - 150 = 50 → 150, 116.67, 83.33, 50
    caps = plan("pyramidkv", None, 4, 2, 2, 108, N=158)
    assert caps[:, 0].tolist() == [150, 117, 83, 50]
    for L in (1, 2, 3, 7, 30, 32):
        for B in (9, 20, 64, 129, 1000):
            for N in (B + 1, 2 * B, 100000):
                caps = plan("pyramidkv", None, L, 4, 2, B, N=N)
                assert caps.sum() == L * 2 * (B - 8)
                assert caps.max() <= N - 8 and caps.min() >= 0
                assert (np.diff(caps[:, 0]) <= 0).all()
                np.testing.assert_array_equal(caps, ref.plan("pyramidkv", None, L, 2, B, prompt_len=N))


# ---- errors ----

def test_budget_not_above_window_is_an_error():
    for m in ("headkv", "snapkv", "pyramidkv", "adakv", "streaming"):
        with pytest.raises(headkv.InvalidArgumentError, match="window"):
            plan(m, np.ones((2, 2)), 2, 2, 2, 8, window=8)
    with pytest.raises(headkv.InvalidArgumentError):
        plan("headkv", np.ones((2, 2)), 2, 2, 2, 5, window=8)


def test_bad_parameters():
    s = np.ones((2, 4))
    with pytest.raises(headkv.InvalidArgumentError, match="unknown KV budget method"):
        plan("h2o", s, 2, 4, 2, 64)
    with pytest.raises(headkv.InvalidArgumentError, match="required"):
        plan("headkv", None, 2, 4, 2, 64)
    with pytest.raises(headkv.InvalidArgumentError, match="expected 2 x 4"):
        plan("headkv", np.ones((3, 4)), 2, 4, 2, 64)
    with pytest.raises(headkv.InvalidArgumentError, match="multiple"):
        plan("snapkv", None, 2, 4, 3, 64)
    with pytest.raises(headkv.InvalidArgumentError, match="beta"):
        plan("headkv", s, 2, 4, 2, 64, beta=0.5)
    with pytest.raises(headkv.InvalidArgumentError, match="non-negative"):
        plan("headkv", np.array([[1.0, -1.0, 1, 1], [1, 1, 1, 1]]), 2, 4, 2, 64)
    with pytest.raises(headkv.InvalidArgumentError, match="NaN"):
        plan("headkv", np.array([[1.0, np.nan, 1, 1], [1, 1, 1, 1]]), 2, 4, 2, 64)
    with pytest.raises(headkv.InvalidArgumentError, match="zero"):
        plan("headkv", np.zeros((2, 4)), 2, 4, 2, 64)
    for ceiling in (0.5, -1.0, float("inf"), float("nan")):
        with pytest.raises(headkv.InvalidArgumentError, match="cap_ceiling"):
            plan("headkv", s, 2, 4, 2, 64, cap_ceiling=ceiling)


def _write(tmp_path, text, name="s.json"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,match", [
    ('{"0-0": [1.0, NaN], "0-1": [1.0]}', r"head 0-0 entry 1 is NaN"),
    ('{"0-0": [1.0, -0.5], "0-1": [1.0]}', r"head 0-0 entry 1 is -0.5"),
    ('{"0-0": [Infinity], "0-1": [1.0]}', r"head 0-0 entry 0 is Infinity"),
    ('{"0-0": [1e999], "0-1": [1.0]}', r"Infinity"),
    ('{"0-0": [], "0-1": [1.0]}', r"head 0-0 has an empty score list"),
    ('{"0-0": [1.0], "0-1": ["x"]}', r"expected a number, got string"),
    ('{"0-0": [1.0], "1-1": [1.0]}', r"head 0-1 is missing"),
    ('{"0-0": [1.0], "0-x": [1.0]}', r"not of the form"),
    ('{"0-0": [1.0], "0-0": [2.0]}', r"duplicate key"),
    ('{"0-0": [1.0], "0-1": [1.0],}', r"line 1, column 29"),
    ('{"0-0": [1.0] "0-1": [1.0]}', r"expected ',' or '}'"),
    ('{"0-0": [01.0]}', r"leading zero"),
    ('{"0-0": [1.0]} x', r"after the top-level value"),
    ('', r"empty document"),
    ('[1, 2]', r"top level"),
    ('{"0-0": [1.0], // c\n"0-1": [1]}', r"line 1"),
    ('{"a": "\x01"}', r"control character"),
    ('[' * 100 + ']' * 100, r"nesting deeper"),
    ('{"format": "other"}', r"unknown score file format"),
])
def test_malformed_files(tmp_path, text, match):
    with pytest.raises(headkv.FormatError, match=match):
        _core.load_scores(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(headkv.HeadkvIOError):
        _core.load_scores(str(tmp_path / "nope.json"))


# ---- headkv's own format, fingerprint ----

def test_fingerprint_is_stable_and_discriminating(tmp_path):
    p = str(smollm2_path())
    fp = _core.model_fingerprint(p)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == hs.model_fingerprint(p)
    info = hs.model_info(p)
    assert (info["architecture"], info["n_layer"], info["n_head"], info["n_head_kv"]) == ("llama", 30, 9, 3)
    assert info["local_layers"] == []  # no sliding window: nothing local, and the file does not list them
    assert info["fingerprint"] == fp
    # a copy elsewhere has the same fingerprint
    import shutil
    q = tmp_path / "copy.gguf"
    shutil.copy(p, q)
    assert _core.model_fingerprint(str(q)) == fp


def test_fingerprint_changes_with_hparams_and_types(tmp_path):
    from gguf_factory import write_tiny_llama
    src = str(smollm2_path())
    paths = {}
    for name, kw in {"a": {}, "a_seed": {"seed": 1}, "ctx": {"n_ff": 256}, "kv": {"n_head_kv": 4},
                     "q8": {"wtype": "Q8_0"}}.items():
        paths[name] = tmp_path / f"{name}.gguf"
        write_tiny_llama(paths[name], src, **kw)
    fp = {k: _core.model_fingerprint(str(v)) for k, v in paths.items()}
    assert fp["a"] == fp["a_seed"]  # weights' values do not enter it, only names/shapes/types
    assert len({fp["a"], fp["ctx"], fp["kv"], fp["q8"]}) == 4
    assert fp["a"] != _core.model_fingerprint(src)


def test_own_format_roundtrip_and_match(tmp_path):
    p = str(smollm2_path())
    s = np.random.default_rng(3).random((30, 9))
    out = tmp_path / "smollm2_scores.json"
    hs.save_scores(out, s, p, "R2", settings={"haystack": "PaulGraham", "n_examples": 3})
    doc = json.loads(out.read_text())
    assert doc["format"] == "headkv-scores" and doc["version"] == 1 and doc["method"] == "R2"
    assert doc["model"]["fingerprint"] == _core.model_fingerprint(p)
    assert not list(tmp_path.glob("*.tmp"))
    got, method = _core.load_scores(str(out), p)
    assert method == "R2"
    np.testing.assert_array_equal(got, s)
    caps = plan("headkv", got, 30, 9, 3, 64, N=2000)
    np.testing.assert_array_equal(caps, ref.plan("headkv", s, 30, 3, 64, prompt_len=2000))


def test_own_format_fingerprint_mismatch(tmp_path):
    p = str(smollm2_path())
    info = hs.model_info(p)
    info["fingerprint"] = "0123456789abcdef"
    out = tmp_path / "s.json"
    hs.save_scores(out, np.ones((30, 9)), info, "R")
    with pytest.raises(headkv.InvalidArgumentError,
                       match=f"fingerprint expected {_core.model_fingerprint(p)} .model., got 0123456789abcdef"):
        _core.load_scores(str(out), p)
    # without a model to check against it loads
    s, m = _core.load_scores(str(out))
    assert s.shape == (30, 9) and m == "R"


def test_shape_mismatch_against_model(tmp_path):
    p = str(smollm2_path())
    # official file of Llama-3-8B shape used with SmolLM2
    off = tmp_path / "llama3.json"
    hs.write_official(off, np.ones((32, 32, 2)))
    with pytest.raises(headkv.InvalidArgumentError, match=r"n_layer expected 30 \(model\), got 32"):
        _core.load_scores(str(off), p)
    off2 = tmp_path / "heads.json"
    hs.write_official(off2, np.ones((30, 8, 2)))
    with pytest.raises(headkv.InvalidArgumentError, match=r"n_head \(query heads\) expected 9 \(model\), got 8"):
        _core.load_scores(str(off2), p)
    # matching official file loads against the model
    off3 = tmp_path / "ok.json"
    hs.write_official(off3, np.ones((30, 9, 2)))
    assert _core.load_scores(str(off3), p)[0].shape == (30, 9)
    # own format with another n_head_kv
    info = hs.model_info(p)
    info["n_head_kv"] = 9
    own = tmp_path / "own.json"
    hs.save_scores(own, np.ones((30, 9)), info, "R")
    with pytest.raises(headkv.InvalidArgumentError, match="n_head_kv expected 3"):
        _core.load_scores(str(own), p)


@pytest.mark.parametrize("mutate,kind,match", [
    (lambda d: d.update(version=2), headkv.UnsupportedError, "version 2"),
    (lambda d: d.update(method="R3"), headkv.FormatError, "method"),
    (lambda d: d["scores"].pop(), headkv.FormatError, "1 layers"),
    (lambda d: d["scores"][1].pop(), headkv.FormatError, r"scores\[1\] has 2 heads"),
    (lambda d: d["scores"][0].__setitem__(1, -1.0), headkv.FormatError, r"scores\[0\]\[1\] is -1"),
    (lambda d: d["model"].pop("fingerprint"), headkv.FormatError, "fingerprint"),
    (lambda d: d["model"].update(n_head_kv=2), headkv.FormatError, "multiple"),
    (lambda d: d.update(settings=[]), headkv.FormatError, "settings"),
])
def test_own_format_errors(tmp_path, mutate, kind, match):
    info = {"architecture": "llama", "n_layer": 2, "n_head": 3, "n_head_kv": 1, "fingerprint": "ab" * 8}
    d = hs.build_document(np.ones((2, 3)), info, "R")
    mutate(d)
    p = _write(tmp_path, json.dumps(d))
    with pytest.raises(kind, match=match):
        _core.load_scores(p)


def test_own_format_nan_written_by_python_json(tmp_path):
    info = {"architecture": "llama", "n_layer": 1, "n_head": 2, "n_head_kv": 1, "fingerprint": "ab" * 8}
    d = hs.build_document(np.ones((1, 2)), info, "R")
    d["scores"][0][1] = float("nan")
    p = _write(tmp_path, json.dumps(d))  # Python writes a bare NaN token
    with pytest.raises(headkv.FormatError, match=r"scores\[0\]\[1\] is NaN"):
        _core.load_scores(p)
    with pytest.raises(ValueError):
        hs.save_scores(tmp_path / "x.json", np.array([[1.0, np.nan]]), info, "R")


def test_json_strings_and_unicode(tmp_path):
    info = {"architecture": "llama", "n_layer": 1, "n_head": 1, "n_head_kv": 1, "fingerprint": "ab" * 8}
    d = hs.build_document(np.ones((1, 1)), info, "R", settings={"note": "h\u00e9\U0001F600 \"q\" \\ \n\t"})
    p = _write(tmp_path, json.dumps(d, ensure_ascii=True))
    assert _core.load_scores(p)[1] == "R"
    p2 = _write(tmp_path, json.dumps(d, ensure_ascii=False), "u.json")
    assert _core.load_scores(p2)[1] == "R"
    bad = json.dumps(d).replace('"note"', '"\\ud800"')
    with pytest.raises(headkv.FormatError, match="surrogate"):
        _core.load_scores(_write(tmp_path, bad, "b.json"))
