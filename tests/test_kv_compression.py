"""Compressed KV cache on CPU: budgets, arena accounting, kept positions, decode, errors."""
import json

import numpy as np
import pytest

import headkv
from headkv import _core
from headkv.reference import selection as ref_sel

METHODS = ["snapkv", "streaming", "pyramidkv", "adakv", "headkv"]
L, H, HKV, HD = 30, 9, 3, 64


def _model(smollm2, method, budget, score_file=None, **kw):
    return headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method=method, kv_budget=budget,
                        scores=score_file if method == "headkv" else None, max_new_tokens=32, **kw)


def _greedy(m, ids, n):
    m.reset()
    m.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(m.logits().argmax()))
        m.eval([out[-1]])
    return out


def test_budget_at_least_prompt_equals_full(model, smollm2, prompt):
    full = _greedy(model, prompt, 16)
    for method in ("snapkv", "adakv"):
        m = _model(smollm2, method, budget=len(prompt) + 10)
        assert _greedy(m, prompt, 16) == full
        assert not m.kv_stats()["compressed"]


@pytest.mark.parametrize("method", METHODS)
def test_arena_accounting_and_positions(method, smollm2, prompt, score_file):
    B, a = 64, 8
    m = _model(smollm2, method, B, score_file)
    m.eval(prompt)
    st = m.kv_stats()
    N = len(prompt)
    caps, used, cap = st["caps"], st["used"], st["capacity"]
    assert st["compressed"] and st["window"] == a
    assert (caps + a).sum() <= L * HKV * B
    if method == "adakv":  # per-layer totals bind, the split is by score
        assert (used.sum(1) == (caps + a).sum(1)).all()
    else:
        assert (used == caps + a).all()
    assert (cap == used + 32).all()  # decode room
    assert st["bytes_held"] == cap.sum() * st["entry_bytes"]
    assert st["bytes_used"] == used.sum() * st["entry_bytes"]
    full_prompt_bytes = N * 2 * L * HKV * HD * 2  # the full cache in the same (default f16) type
    assert st["bytes_used"] < full_prompt_bytes / 4
    # peak during prefill: one layer's full K/V (and its projections, fp32) plus the arena
    assert st["prefill_peak_bytes"] <= 4 * N * HKV * HD * 4 + st["bytes_held"]
    pos = m.kv_positions()
    for l in range(L):
        for g in range(HKV):
            p = pos[l][g]
            assert len(p) == used[l, g] and (np.diff(p) > 0).all()
            assert list(p[-a:]) == list(range(N - a, N))
            if method == "streaming":
                c = caps[l, g]
                assert list(p[:-a]) == list(range(4)) + list(range(N - a - (c - 4), N - a))
    # decoding appends in place and works
    toks = _greedy(m, prompt, 8)
    assert len(toks) == 8 and (m.kv_stats()["used"] >= used + 7).all()


def test_headkv_caps_follow_scores(smollm2, prompt, score_file):
    m = _model(smollm2, "headkv", 64, score_file)
    m.eval(prompt)
    scores, _ = _core.load_scores(score_file)
    expect = _core.plan_budget("headkv", scores, L, H, HKV, 64, 8, 0, 1.0, len(prompt))
    assert (m.kv_stats()["caps"] == expect).all()
    assert len(set(expect.ravel().tolist())) > 5  # really per head


def test_headkv_cap_ceiling_reaches_the_context(smollm2, prompt, score_file):
    """cap_ceiling: the context's caps are the planner's with the ceiling (no head above 1.05 x B', the
    same entries in all as without it), each head keeps its cap, and a ceiling below 1 is refused."""
    scores, _ = _core.load_scores(score_file)
    m = _model(smollm2, "headkv", 64, score_file, cap_ceiling=1.05)
    m.eval(prompt)
    caps = m.kv_stats()["caps"]
    expect = _core.plan_budget("headkv", scores, L, H, HKV, 64, 8, 0, 1.0, len(prompt), cap_ceiling=1.05)
    plain = _core.plan_budget("headkv", scores, L, H, HKV, 64, 8, 0, 1.0, len(prompt))
    assert (caps == expect).all() and caps.max() <= 58 < plain.max()  # floor(1.05 * 56)
    assert abs(int(caps.sum()) - int(plain.sum())) <= caps.size
    pos = m.kv_positions()
    assert all(len(pos[l][g]) == caps[l, g] + 8 for l in range(L) for g in range(HKV))
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(headkv.InvalidArgumentError, match="cap_ceiling"):
            _model(smollm2, "headkv", 64, score_file, cap_ceiling=bad)
    with pytest.raises(headkv.InvalidArgumentError, match="cap_ceiling does not apply with adaptive"):
        _model(smollm2, "headkv", 64, score_file, cap_ceiling=2.0, adaptive=True)


def test_snapkv_positions_match_transformers_attention(model, smollm2, essays, hf_smollm2):
    import torch
    ids = model.tokenize(essays[7][:1200])
    N, a, B = len(ids), 8, 48
    with torch.no_grad():
        att = hf_smollm2(torch.tensor([ids]), output_attentions=True).attentions  # L x [1, H, N, N]
    m = _model(smollm2, "snapkv", B, span=0)  # the paper's rule, restated below over transformers' attention
    m.eval(ids)
    pos = m.kv_positions()
    agree = total = 0
    for l in range(L):
        A = att[l][0].numpy().astype(np.float64)  # [H, N, N]
        P = N - a
        s = A[:, P:, :P].mean(1).reshape(HKV, H // HKV, P).mean(1)  # window mean, then group mean
        padded = np.pad(s, ((0, 0), (3, 3)), constant_values=-np.inf)
        s = np.lib.stride_tricks.sliding_window_view(padded, 7, axis=1).max(-1)
        for g in range(HKV):
            want = set(np.argsort(-s[g], kind="stable")[:B - a].tolist())
            got = set(pos[l][g][:-a].tolist())
            agree += len(want & got)
            total += B - a
    # identical up to near-ties of fp32 vs fp64 scores
    assert agree / total > 0.995, agree / total


def test_compression_errors(smollm2, prompt, score_file, tmp_path):
    with pytest.raises(headkv.InvalidArgumentError, match="larger than the window"):
        _model(smollm2, "snapkv", 8)
    # Model(method="headkv") without scores takes the shipped R2 file (issue 6); so does the engine
    # (the shipped files are compiled in): same plan as naming the file
    named = _model(smollm2, "headkv", 64)
    assert named.kv.scores.endswith("SmolLM2-135M-Instruct.Q4_1.R2.json")
    bare = headkv._core.Engine(smollm2, 256, 2, 512, headkv._core.KVConfigNative("headkv", 64, scores=""))
    named.eval(prompt[:300])
    bare.eval(prompt[:300])
    assert (bare.kv_stats()["caps"] == named.kv_stats()["caps"]).all()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({f"{l}-{h}": [1.0] for l in range(4) for h in range(H)}))
    with pytest.raises(headkv.Error):
        _model(smollm2, "headkv", 64, str(bad))
    with pytest.raises(headkv.InvalidArgumentError):
        _model(smollm2, "nosuchmethod", 64)
    m = _model(smollm2, "snapkv", 64)
    m.eval(prompt)
    for _ in range(32):
        m.eval([100])
    with pytest.raises(headkv.ContextFullError, match="decode slots"):
        m.eval([100])
    m.reset()  # still usable
    m.eval(prompt[:200])
    assert m.kv_stats()["used"].sum() == L * HKV * 64


def test_kv_bytes_measured_from_allocator(smollm2, prompt):
    """The arena is the only KV storage a compressed context keeps: the C heap grows by exactly its
    bytes (Σ capacity × entry bytes, decode room included) and gets them back on reset."""
    if _core.heap_in_use() is None:
        pytest.skip("needs glibc's mallinfo2")
    m = _model(smollm2, "snapkv", 128)
    m.eval(prompt)  # warm-up: one-time lazy allocations (thread arenas, the logits row)
    m.reset()
    before = _core.heap_in_use()
    m.eval(prompt)
    grown = _core.heap_in_use() - before
    st = m.kv_stats()
    assert st["bytes_held"] == st["capacity"].sum() * st["entry_bytes"]
    assert st["bytes_held"] <= grown <= st["bytes_held"] + 4096, (grown, st["bytes_held"])
    assert st["bytes_held"] * 3 < st["bytes_full"]  # 128 + 32 of 597 + 32 entries per head
    m.reset()
    assert _core.heap_in_use() - before <= 4096


@pytest.mark.parametrize("budget", [64, 128, 256, 512])
def test_caps_follow_shipped_smollm2_scores(smollm2, essays, budget):
    """With no score file, method 'headkv' uses the shipped R2 scores; its caps are the paper's
    formula (NumPy reference) over those scores, and the total respects L * H_kv * B."""
    from headkv import scores as hs
    from headkv.reference import budget as ref_budget
    path = hs.shipped_scores(smollm2, "R2")
    scores, method = hs.load_scores(path, smollm2)
    assert method == "R2" and scores.shape == (L, H)
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="headkv", kv_budget=budget, max_new_tokens=4)
    ids = m.tokenize(essays[0])[:1500]
    m.eval(ids)
    caps = m.kv_stats()["caps"]
    np.testing.assert_array_equal(caps, ref_budget.plan("headkv", scores, L, HKV, budget, 8, None, 1.0, len(ids)))
    assert (caps + 8).sum() <= L * HKV * budget
    assert caps.max() > 2 * caps.min()  # the shipped scores really differ per head


def _needle_prompt(model, essays_text, number, colour, depth, offset=0, length=1024):
    """A chat prompt of ~length tokens: essay text with one 10-digit needle at `depth`, the question,
    and the reply started with the answer's prefix (as headkv-eval's niah does)."""
    from headkv import haystack as hs
    from headkv import needles as nd
    from headkv.eval.engine import chat_prompt
    needle = f"The secret number of the {colour} gate is {number}."
    q, pre = f"What is the secret number of the {colour} gate?", f"The secret number of the {colour} gate is"
    frame = len(chat_prompt(model, nd.prompt_text("", q), pre))
    ctx = hs.build_context(lambda s: model.tokenize(s, add_bos=False), essays_text, length - frame - 16, depth, needle,
                           offset=offset)
    return chat_prompt(model, nd.prompt_text(ctx, q), pre)


def _answer(m, ids, n=13):
    m.reset()
    m.eval(ids)
    out = []
    for _ in range(n):
        t = int(m.logits().argmax())
        if m.is_eog(t):
            break
        out.append(t)
        m.eval([t])
    return m.detokenize(out).decode()


@pytest.mark.parametrize("number,colour,depth,offset", [
    ("5606394622", "blue", 0.3, 0), pytest.param("2297436514", "green", 0.7, 2, marks=pytest.mark.slow)])
def test_ten_digit_value_survives_budget_128(smollm2, model, essays, number, colour, depth, offset):
    """A 10-digit value (10 tokens: SmolLM2 has one token per digit) copied out of a 1k-token prompt
    at budget 128: the full cache answers it, span-aware headkv (the default) answers it whole,
    and the paper's rule (span 0: kernel-7 max pooling) keeps only its first digits."""
    ids = _needle_prompt(model, essays, number, colour, depth, offset)
    full = _answer(headkv.Model(smollm2, n_ctx=2048, n_threads=2), ids)
    assert full.split()[0].rstrip(".") == number
    span = _answer(headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="headkv", kv_budget=128,
                                max_new_tokens=16), ids)
    assert span.split()[0].rstrip(".") == number
    paper = _answer(headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="headkv", kv_budget=128, span=0,
                                 max_new_tokens=16), ids)
    assert number not in paper and number[:4] in paper  # the test can see the loss: the tail is gone


@pytest.mark.parametrize("method", ["full", "snapkv"])
def test_query_agnostic_document_then_question(smollm2, model, essays, method):
    """Compress a document before its question exists (observation probe), then ask: the question
    decodes after the document's own positions, nothing of the probe stays, and for the full cache
    the answer equals a single prompt holding document and question."""
    ids = _needle_prompt(model, essays, "5606394622", "blue", 0.3)
    # the document ends where the instruction after the essay text begins
    q_at = next(i for i in range(len(ids) - 1, 0, -1)
                if model.detokenize(ids[i:]).startswith(b"\n\nAnswer the question"))
    doc, question = ids[:q_at], ids[q_at:]
    kw = {} if method == "full" else dict(kv_method=method, kv_budget=128, probe="repeat", max_new_tokens=64)
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2, **kw)
    m.eval(doc)
    assert m.n_past == len(doc)
    if method != "full":
        st = m.kv_stats()
        assert st["compressed"] and all(int(x.max()) == len(doc) - 1 for layer in m.kv_positions() for x in layer)
    out = m.create_completion(question, max_tokens=12, temperature=0, reset=False)
    assert m.n_past == len(doc) + len(question) + out["usage"]["completion_tokens"]  # appended, not restarted
    if method == "full":
        whole = headkv.Model(smollm2, n_ctx=2048, n_threads=2).create_completion(ids, max_tokens=12, temperature=0)
        assert out["choices"][0]["text"] == whole["choices"][0]["text"]
        assert "5606394622" in out["choices"][0]["text"]


def test_probe_as_token_ids_equals_probe_text(smollm2, model, prompt):
    """A probe given as token ids selects exactly as the same probe given as text, and differently
    from no probe (the prompt's last tokens)."""
    ids = model.tokenize(headkv.kv.REPEAT_PROBE, add_bos=False)
    got = []
    for probe in ("repeat", ids, None):
        m = _model(smollm2, "snapkv", 64, probe=probe)
        m.eval(prompt)
        got.append([[list(x) for x in layer] for layer in m.kv_positions()])
    assert got[0] == got[1] and got[0] != got[2]
    with pytest.raises(headkv.InvalidArgumentError):
        headkv.KVConfig(method="snapkv", probe="some text").native()


def test_value_fit_option(smollm2, prompt):
    """value_fit (select/value_fit.h; its values are checked against the reference in
    test_compressed_parity): it changes only the kept values (the same positions, other logits), it
    leaves what it does not apply to exactly as without it (streaming, an observation probe, a prompt
    within the budget), and a negative, non-finite or non-number ridge is an InvalidArgumentError.
    A short prompt: the sanitizer run drives the fitting's native path through this test."""
    prompt = prompt[:200]

    def run(method, budget, **kw):
        m = _model(smollm2, method, budget, **kw)
        m.eval(prompt)
        out = [m.logits().copy()]
        for t in (11, 12):
            m.eval([t])
            out.append(m.logits().copy())
        return m.kv_positions(), np.array(out)

    pos0, l0 = run("snapkv", 32)
    pos1, l1 = run("snapkv", 32, value_fit=1.0)
    assert all(np.array_equal(a, b) for la, lb in zip(pos0, pos1) for a, b in zip(la, lb))
    assert np.abs(l0[0] - l1[0]).max() < 1e-4  # the prompt's own logits come before the fit
    assert np.abs(l0[1:] - l1[1:]).max() > 0.5
    for method, budget, kw in (("streaming", 32, {}), ("snapkv", 32, {"probe": "repeat"}),
                               ("snapkv", len(prompt) + 10, {})):
        _, a = run(method, budget, **kw)
        _, b = run(method, budget, value_fit=1.0, **kw)
        assert np.array_equal(a, b), (method, budget, kw)
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(headkv.InvalidArgumentError, match="value_fit"):
            _model(smollm2, "snapkv", 32, value_fit=bad)
