"""Compressed-cache parity on real SmolLM2 prompts: for every method and budget, the engine's kept
positions per (layer, KV head) equal the reference's (python/headkv/reference: PyTorch forward over
gguf-py weights, NumPy selection and allocation), and the engine's next-token logits after
compression equal the reference model's with every dropped (position, KV head) masked out of
attention.

Selection is checked in its default, span-aware form (a kept token keeps the rest of its token
run; the reference derives the runs from the GGUF vocabulary with its own byte decoding) and, for
two methods, in the paper's form (span 0). The default run checks a ~1k-token prompt at the smallest
and the largest budget and the observation probe for one method at one budget; the tests marked
slow add the budgets between, a ~3.5k-token prompt and the other probe cases.

The logits are compared with the reference model attending over the engine's kept entries, which
the selection check has just found equal to the reference's up to near-ties, stored as the engine
stores them (K/V rounded to f16, the default cache type; selection scores use fp32 K on both sides).
Value fitting (value_fit=1, on here for snapkv, adakv and headkv-adaptive; streaming is given it and
must ignore it) changes the kept values before they are stored: the reference refits them from the
formula (reference.selection.fit_values, float64, its own window queries and full outputs) over the
engine's kept entries.

Ties: both sides order candidates by (score desc, position asc), so exact ties (max pooling makes
many) break the same way. The two sides compute scores in different float orders (engine fp32,
reference fp64 over fp32 Q/K from an independent forward), so a pair of positions whose scores
agree to within SCORE_RTOL may swap across a cap boundary; any differing position must be such a
near-tie, and the count of swaps is bounded.
"""
import json

import numpy as np
import pytest

import headkv
from headkv.kv import DEFAULT_REACH, DEFAULT_SPAN

torch = pytest.importorskip("torch")
from headkv.reference import budget as ref_budget  # noqa: E402
from headkv.reference import selection as ref_sel  # noqa: E402
from headkv.reference.torch_llama import TorchLlama  # noqa: E402

METHODS = ["snapkv", "streaming", "pyramidkv", "adakv", "headkv", "headkv-adaptive"]
FIT = {"snapkv", "streaming", "adakv", "headkv-adaptive"}  # run with value_fit=1 (span-aware cases)
WINDOW = 8
N_DECODE = 3
# The foundation issue's parity bound was 5e-4 with fp32 K/V on both sides. Decode logits over
# f16-stored K/V (the default cache type; the reference rounds its K/V to f16 too):
# the two sides' fp32 K/V differ in summation order (~1e-6 relative), and rounding to half turns a few
# of those into one-ulp half differences (~5e-4 relative), which move the logits more than fp32
# rounding does. Measured up to 5.8e-3 (adakv, budget 512, second decode step) over the cases;
# bound with ~2.5x margin.
F16_MAX_ABS_DLOGIT = 1.5e-2
MASKS_MATTER_DLOGIT = 1e-2  # full attention moves the logits by more than this (was 20 x the fp32 bound)
SCORE_RTOL = 1e-4       # near-tie width between fp32 engine and fp64 reference scores


@pytest.fixture(scope="module")
def ref_model(smollm2):
    return TorchLlama(smollm2)


@pytest.fixture(scope="module")
def score_file(tmp_path_factory):
    """An official-format HeadKV score file of SmolLM2's shape (30 layers x 9 query heads)."""
    rng = np.random.default_rng(5)
    data = {f"{l}-{h}": list(rng.random(4) ** 3) for l in range(30) for h in range(9)}
    p = tmp_path_factory.mktemp("scores") / "official.json"
    p.write_text(json.dumps(data))
    q = np.array([[np.mean(data[f"{l}-{h}"]) for h in range(9)] for l in range(30)])
    return str(p), q


def _gpt2_bytes():
    """GPT-2 byte-level BPE: the printable character standing for each byte (bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@pytest.fixture(scope="module")
def vocab(smollm2):
    """(pieces as bytes, is-special flags) per token id, read with gguf-py (SmolLM2: byte-level BPE)."""
    import gguf
    r = gguf.GGUFReader(smollm2)
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    dec = _gpt2_bytes()
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    special = [t in (2, 3, 4) for t in types]
    pieces = [b"" if sp else bytes(dec[ch] for ch in t) for t, sp in zip(toks, special)]
    return pieces, special


def test_token_runs_of_a_needle(model, vocab):
    """Hand-checked runs: the digits of a number (one token each) and the period after them form one
    run, the space token before them does not join; a run is cut every `span` tokens."""
    ids = model.tokenize("The gate is 1392706. It", add_bos=False)
    pieces, special = vocab
    runs = ref_sel.token_runs([pieces[t] for t in ids], [special[t] for t in ids], 16)
    texts = [pieces[t] for t in ids]
    assert texts == [b"The", b" gate", b" is", b" ", b"1", b"3", b"9", b"2", b"7", b"0", b"6", b".", b" It"]
    assert len(set(runs[4:12])) == 1 and len(set(runs)) == 6
    cut = ref_sel.token_runs([pieces[t] for t in ids], [special[t] for t in ids], 3)
    assert [len(np.nonzero(cut == r)[0]) for r in np.unique(cut)] == [1, 1, 1, 1, 3, 3, 2, 1]


# (essay index, prompt tokens, {part: budgets}): one ~1k prompt over every budget (the smallest and
# the largest in the default run, the two between in the slow run), one ~3.5k prompt over two (slow)
CASES = [(3, 1024, {"ends": [64, 512], "middle": [128, 256]}), (14, 3584, {"ends": [128, 512]})]


@pytest.fixture(scope="module", params=[CASES[0], pytest.param(CASES[1], marks=pytest.mark.slow)],
                ids=lambda c: f"essay{c[0]}-{c[1]}tok")
def case(request, model, essays, ref_model):
    idx, n, budgets = request.param
    ids = model.tokenize(essays[idx])
    assert len(ids) >= n + N_DECODE, "essay too short for the case"
    prompt, cont = ids[:n], ids[n:n + N_DECODE]
    cache = ref_model.new_cache()
    _, win_q = ref_model.forward(prompt, cache, window=WINDOW)
    return dict(prompt=prompt, cont=cont, cache=cache, win_q=win_q, budgets=budgets)


def _check_selection(got, want, s, method):
    """got/want: kept prefix positions per KV head of one layer; s: reference pooled scores."""
    swaps = 0
    bounds = [] if s is None else [s[g][w].min() for g, w in enumerate(want) if len(w)]
    for g, (a, b) in enumerate(zip(got, want)):
        assert len(a) == len(b) or method == "adakv"
        diff = np.setxor1d(a, b)
        if diff.size == 0:
            continue
        assert s is not None, "streaming keeps fixed positions"
        near = [bounds[g]] if method != "adakv" else bounds  # adakv: any boundary of the layer
        rel = np.min(np.abs(s[g][diff][:, None] - np.array(near)[None, :]), axis=1) / max(near)
        assert (rel <= SCORE_RTOL).all(), (g, diff, rel)
        # one near-tie swaps a whole token run under span-aware selection (its tokens share a
        # score), so swaps are counted as distinct scores on either side
        only_got, only_want = np.setdiff1d(a, b), np.setdiff1d(b, a)
        swaps += max(np.unique(s[g][only_got]).size, np.unique(s[g][only_want]).size)
    if method == "adakv":
        assert sum(map(len, got)) == sum(map(len, want))
    return swaps


@pytest.mark.parametrize("part", ["ends", pytest.param("middle", marks=pytest.mark.slow)])
@pytest.mark.parametrize("span", [DEFAULT_SPAN, 0], ids=["span", "paper"])
@pytest.mark.parametrize("method", METHODS)
def test_kept_positions_and_logits_match_reference(method, span, part, case, smollm2, ref_model, score_file, vocab):
    prompt, N = case["prompt"], len(case["prompt"])
    if span == 0 and (method not in ("snapkv", "adakv") or N > 1024):
        pytest.skip("the paper's selection is checked on the 1k case for two methods")
    if part not in case["budgets"]:
        pytest.skip("this case has no budgets of that part")
    fit = span != 0 and method in FIT
    adaptive = method == "headkv-adaptive"  # headkv's caps, split per layer as Ada-KV splits them
    method, sel_method = ("headkv", "adakv") if adaptive else (method, method)
    L, Hkv = ref_model.n_layer, ref_model.n_head_kv
    pieces, special = vocab
    runs = ref_sel.token_runs([pieces[t] for t in prompt], [special[t] for t in prompt], span)
    assert span == 0 or len(np.unique(runs[:N - WINDOW])) < N - WINDOW  # the prompt has runs to complete
    for budget in case["budgets"][part]:
        m = headkv.Model(smollm2, n_ctx=4096, n_threads=2, kv_method=method, kv_budget=budget,
                         scores=score_file[0] if method == "headkv" else None, max_new_tokens=8,
                         adaptive=adaptive, value_fit=1.0 if fit else 0.0, **({} if span else {"span": 0}))
        m.eval(prompt)
        got = m.kv_positions()
        caps = ref_budget.plan(method, score_file[1], L, Hkv, budget, WINDOW, None, 1.0, N)
        np.testing.assert_array_equal(m.kv_stats()["caps"], caps)

        swaps, masks, values = 0, [], []
        for l in range(L):
            K = case["cache"]["k"][l].numpy()
            want, s = ref_sel.select_layer(sel_method, case["win_q"][l].numpy(), K, caps[l], runs=runs if span else None,
                                           reach=DEFAULT_REACH if span else 0)
            got_l = [np.asarray(got[l][g][:-WINDOW]) for g in range(Hkv)]
            assert all(list(got[l][g][-WINDOW:]) == list(range(N - WINDOW, N)) for g in range(Hkv))
            swaps += _check_selection(got_l, want, s, sel_method)
            # the logits are checked over the engine's own kept entries (equal to the reference's up
            # to the near-tie swaps just checked), so a swapped run cannot move them
            mask = torch.zeros(Hkv, N + N_DECODE, dtype=torch.bool)
            for g in range(Hkv):
                mask[g, torch.as_tensor(got_l[g], dtype=torch.long)] = True
            mask[:, N - WINDOW:] = True   # the window and every decoded token
            masks.append(mask)
            V = case["cache"]["v"][l]
            if fit and method != "streaming":  # value fitting over the engine's kept entries
                V = torch.from_numpy(ref_sel.fit_values(case["win_q"][l].numpy(), K, V.numpy(), got_l)).to(V.dtype)
            values.append(V)
        assert swaps <= 2, f"{swaps} near-tie swaps (distinct scores)"

        def prompt_cache(vs):  # the arena holds the kept K/V as f16 (the default cache type)
            return {"k": [k.half().float() for k in case["cache"]["k"]], "v": [v.half().float() for v in vs], "n": N}
        cache = prompt_cache(values)
        for i, tok in enumerate(case["cont"]):
            m.eval([tok])
            n_keys = N + i + 1
            want_logits, _ = ref_model.forward([tok], cache, key_mask=[mk[:, :n_keys] for mk in masks],
                                               kv_dtype=torch.float16)
            d = np.abs(m.logits() - want_logits.numpy()).max()
            assert d < F16_MAX_ABS_DLOGIT, (method, budget, i, d)
            assert int(m.logits().argmax()) == int(want_logits.argmax())
            if i == 0 and budget == 64:  # the masks matter: full attention gives other logits
                full_logits, _ = ref_model.forward([tok], prompt_cache(case["cache"]["v"]), kv_dtype=torch.float16)
                assert np.abs(full_logits.numpy() - want_logits.numpy()).max() > MASKS_MATTER_DLOGIT
                if fit and method != "streaming":  # and so does the fitting: the kept values as they were
                    plain, _ = ref_model.forward([tok], prompt_cache(case["cache"]["v"]),
                                                 key_mask=[mk[:, :n_keys] for mk in masks], kv_dtype=torch.float16)
                    assert np.abs(plain.numpy() - want_logits.numpy()).max() > MASKS_MATTER_DLOGIT


@pytest.mark.parametrize("budget", [64, pytest.param(256, marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["adakv", pytest.param("snapkv", marks=pytest.mark.slow)])
def test_observation_probe_matches_reference(method, budget, smollm2, model, essays, ref_model, vocab):
    """Query-agnostic compression: the probe's queries select (the reference runs the prompt and
    the probe together and scores the prompt's prefix with the probe's window), the probe leaves
    nothing in the cache, and the next tokens decode at the prompt's own positions over the kept
    entries (reference: the prompt alone, dropped entries masked)."""
    ids = model.tokenize(essays[3])
    prompt, cont = ids[:1024], ids[1024:1024 + N_DECODE]
    N = len(prompt)
    L, Hkv = ref_model.n_layer, ref_model.n_head_kv
    probe = model.tokenize(headkv.kv.REPEAT_PROBE, add_bos=False)
    probed = ref_model.new_cache()
    _, probe_q = ref_model.forward(prompt + probe, probed, window=len(probe))
    cache = ref_model.new_cache()
    ref_model.forward(prompt, cache, window=WINDOW)
    pieces, special = vocab
    runs = ref_sel.token_runs([pieces[t] for t in prompt], [special[t] for t in prompt], DEFAULT_SPAN)
    m = headkv.Model(smollm2, n_ctx=4096, n_threads=2, kv_method=method, kv_budget=budget, probe="repeat",
                     max_new_tokens=8)
    m.eval(prompt)
    assert m.n_past == N
    plain = headkv.Model(smollm2, n_ctx=4096, n_threads=2, kv_method=method, kv_budget=budget, max_new_tokens=8)
    plain.eval(prompt)  # the prompt's logits do not depend on the probe after it
    assert np.abs(m.logits() - plain.logits()).max() < 1e-4
    caps = ref_budget.plan(method, None, L, Hkv, budget, WINDOW, None, 1.0, N)
    got, swaps, masks, differs = m.kv_positions(), 0, [], False
    for l in range(L):
        want, s = ref_sel.select_layer(method, probe_q[l].numpy(), probed["k"][l].numpy(), caps[l], runs=runs,
                                       prefix=N - WINDOW, reach=DEFAULT_REACH)
        plain_l = plain.kv_positions()[l]
        differs |= any(not np.array_equal(plain_l[g], got[l][g]) for g in range(Hkv))
        assert all(list(got[l][g][-WINDOW:]) == list(range(N - WINDOW, N)) for g in range(Hkv))
        got_l = [np.asarray(got[l][g][:-WINDOW]) for g in range(Hkv)]
        swaps += _check_selection(got_l, want, s, method)
        mask = torch.zeros(Hkv, N + N_DECODE, dtype=torch.bool)
        for g in range(Hkv):
            mask[g, torch.as_tensor(got_l[g], dtype=torch.long)] = True
        mask[:, N - WINDOW:] = True
        masks.append(mask)
    assert swaps <= 2 and differs  # the probe selects otherwise than the prompt's last tokens
    c = {"k": [k.half().float() for k in cache["k"]], "v": [v.half().float() for v in cache["v"]], "n": N}
    for i, tok in enumerate(cont):  # the arena holds f16 K/V (the default cache type): so does the reference
        m.eval([tok])
        want_logits, _ = ref_model.forward([tok], c, key_mask=[mk[:, :N + i + 1] for mk in masks],
                                           kv_dtype=torch.float16)
        assert np.abs(m.logits() - want_logits.numpy()).max() < F16_MAX_ABS_DLOGIT
