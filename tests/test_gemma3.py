"""Gemma-3-270M Q4_K_M (architecture gemma3: 5 sliding-window layers of 512 positions to each global
one, local RoPE base 10000, q/k norms, GeGLU, post-norms, embedding scale, head size 256,
SentencePiece vocabulary of 262k) on the CPU against transformers loading the same GGUF (eager fp32),
and the ring that bounds its sliding-window layers' KV."""
import os

import numpy as np
import pytest

import headkv

WINDOW = 512
ROWS = [0, 511, 512, 1000, 1023, 1024, 1399]  # both sides of the window and of the ring's wrap (n_batch 512)


@pytest.fixture(scope="module")
def hf(gemma3):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(gemma3), os.path.basename(gemma3)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    assert model.config.sliding_window == WINDOW
    return tok, model


@pytest.fixture(scope="module")
def prompt(gemma3, essays):
    m = headkv.Model(gemma3, n_ctx=64)
    return m.tokenize(" ".join(essays)[:9000], add_bos=True)[:1400]


def _f32(gemma3, **kw):
    return headkv.Model(gemma3, n_threads=2, type_k="f32", type_v="f32", **kw)


def test_tokenizer_matches_transformers(gemma3, hf, essays):
    tok, _ = hf
    m = headkv.Model(gemma3, n_ctx=64)
    texts = [essays[1][:3000], "naïve café — 東京 🤖 ¿qué? x²", "def f(x):\n\treturn x  **  2\n\n\n",
             "12345678901 3.14159 0xDEADBEEF", "   leading and trailing   ", "<start_of_turn>user\nHi<end_of_turn>\n"]
    for text in texts:
        assert m.tokenize(text, add_bos=True, special=True) == tok(text)["input_ids"], text[:40]


@pytest.fixture(scope="module")
def ref_rows(hf, prompt):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return hf[1](torch.tensor([prompt])).logits[0].numpy()[ROWS]


@pytest.mark.parametrize("n_batch", [512, pytest.param(100, marks=pytest.mark.slow)])  # rings of 1024 / 612 rows
def test_logits_across_the_window_match_transformers(gemma3, ref_rows, prompt, n_batch):
    """Rows before, at and after the 512-position window and the ring's wrap: the sliding-window
    layers attend to the last 512 positions, the global ones to all (measured 5.2e-5 of 26.6)."""
    m = _f32(gemma3, n_ctx=2048, n_batch=n_batch)
    m.eval(prompt, logits_all=True)
    ours = m.logits(all=True)[ROWS]
    assert np.abs(ours - ref_rows).max() <= 1e-4 * np.abs(ref_rows).max()
    assert (ours.argmax(-1) == ref_rows.argmax(-1)).all()


def test_greedy_decode_matches_transformers(gemma3, hf, prompt):
    """Decoding one token at a time past the window and around the ring (n_batch 64: a ring of 576
    rows wraps during the prompt and again while decoding)."""
    torch = pytest.importorskip("torch")
    _, model = hf
    ids = prompt[:700]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, min_new_tokens=16)
    want = out[0, len(ids):].tolist()
    m = _f32(gemma3, n_ctx=2048, n_batch=64)
    got = list(m.generate(ids, temperature=0, max_tokens=16))
    assert got == want[:len(got)] and len(got) >= 8


def test_ring_bounds_the_sliding_window_layers(gemma3):
    """15 sliding-window layers keep a ring of window + n_batch rows; the 3 global layers n_ctx."""
    n_ctx, n_batch = 8192, 256
    m = headkv.Model(gemma3, n_ctx=n_ctx, n_batch=n_batch)
    entry = 2 * 256 * 2  # K + V of one KV head at f16
    st = m.kv_stats()
    assert st["bytes_held"] == (3 * n_ctx + 15 * (WINDOW + n_batch)) * entry
    assert st["bytes_full"] == 18 * n_ctx * entry
    q8 = headkv.Model(gemma3, n_ctx=n_ctx, n_batch=n_batch, type_k="q8_0", type_v="q8_0")  # 8 blocks of 34 bytes
    assert q8.kv_stats()["bytes_held"] == (3 * n_ctx + 15 * (WINDOW + n_batch)) * 2 * 8 * 34


def test_group_admission_counts_the_rings(gemma3):
    """A CPU sequence group admits full-cache Gemma sequences by what their contexts allocate (rings of
    window + ub rows in the 15 sliding-window layers, n_ctx rows in the 3 global ones): a KV limit of
    2.5 contexts admits two, refuses the third with OutOfMemoryError naming its bytes, leaves the group
    as it was, and the two decode in one batched step as they do alone."""
    n_ctx, n_batch = 4096, 512
    base = headkv.Model(gemma3, n_ctx=n_ctx, n_batch=n_batch, n_threads=2)
    one = base.kv_bytes()
    assert one == (3 * n_ctx + 15 * (WINDOW + n_batch)) * 2 * 256 * 2
    g = headkv.SequenceGroup(base, n_ctx=n_ctx, n_threads=2, kv_limit_bytes=2 * one + one // 2)
    a, b = base.tokenize("The capital of France is"), base.tokenize("Water boils at a temperature of")
    g.add(1, a)
    g.add(2, b)
    with pytest.raises(headkv.OutOfMemoryError, match="full cache needs " + str(one)):
        g.add(3, a)
    assert sorted(g.ids) == [1, 2] and g.kv_bytes() == 2 * one
    t1, t2 = int(np.argmax(g.logits(1))), int(np.argmax(g.logits(2)))
    out = g.step([1, 2], [t1, t2])
    for seq, prompt, t, row in ((1, a, t1, out[0]), (2, b, t2, out[1])):
        alone = headkv.Model(gemma3, n_ctx=n_ctx, n_batch=n_batch, n_threads=2)
        alone.eval(prompt + [t])
        assert np.abs(np.array(row) - np.array(alone.logits())).max() < 1e-3 * np.abs(alone.logits()).max(), seq


def test_prefix_reuse_truncate_and_state_with_the_ring(gemma3, prompt):
    """Rolling back within what the ring holds keeps the cache; further back, truncate refuses and a
    follow-up prompt is evaluated afresh (same tokens as a fresh model). save/load_state carry the
    ring's window."""
    kw = dict(n_ctx=2048, n_batch=64)
    m = headkv.Model(gemma3, n_threads=2, **kw)
    a = list(m.generate(prompt[:900], temperature=0, max_tokens=40))
    with pytest.raises(headkv.InvalidArgumentError, match="sliding-window"):
        m.truncate(600)  # the rings (576 rows) no longer hold positions 89..599
    m.truncate(905)
    assert list(m.generate(a[5:6], temperature=0, max_tokens=8, reset=False)) == a[6:14]
    follow = prompt[:900] + a[:3]  # shares only what the rings cannot roll back to
    m.generate(prompt[:900] + a[:20], temperature=0, max_tokens=1)
    b = list(m.generate(prompt[:600], temperature=0, max_tokens=6))
    assert m.n_reused == 0
    fresh = headkv.Model(gemma3, n_threads=2, **kw)
    assert b == list(fresh.generate(prompt[:600], temperature=0, max_tokens=6))
    fresh.eval(follow)
    st = fresh.save_state()
    other = headkv.Model(gemma3, n_threads=2, **kw)
    other.load_state(st)
    np.testing.assert_array_equal(other.logits(), fresh.logits())
    t = int(np.argmax(fresh.logits()))
    assert list(other.generate([t], temperature=0, max_tokens=6, reset=False)) == \
        list(fresh.generate([t], temperature=0, max_tokens=6, reset=False))


def test_compression_keeps_the_windows_and_budgets_the_global_layers(gemma3, prompt, tmp_path):
    """Compressing methods on a sliding-window model: each local layer keeps the prompt's last
    window - 1 positions (all a later query sees), the budget goes to the 3 global layers. A budget
    above the prompt gives the full cache's logits and greedy tokens (fp32 K/V on both sides)."""
    ids = prompt[:1200]
    full = _f32(gemma3, n_ctx=2048)
    want = list(full.generate(ids, temperature=0, max_tokens=6))
    big = _f32(gemma3, n_ctx=2048, kv_method="snapkv", kv_budget=4096)
    assert list(big.generate(ids, temperature=0, max_tokens=6)) == want
    n = len(ids)
    import json
    rng = np.random.default_rng(0)
    scores = tmp_path / "scores.json"  # the official format: "layer-head" -> per-example scores
    scores.write_text(json.dumps({f"{l}-{h}": list(rng.random(2)) for l in range(18) for h in range(4)}))
    for method in ("snapkv", "adakv", "pyramidkv", "headkv"):
        m = headkv.Model(gemma3, n_threads=2, n_ctx=512, kv_method=method, kv_budget=128, max_new_tokens=8,
                         scores=str(scores) if method == "headkv" else None)
        m.eval(ids)
        pos = m.kv_positions()
        for l in range(18):
            held = [list(p) for p in pos[l]]
            if (l + 1) % 6:  # local
                assert held == [list(range(n - WINDOW + 1, n))], (method, l)
            else:
                assert 8 < len(held[0]) <= 256 and held[0][-8:] == list(range(n - 8, n)), (method, l)
        kept = sum(len(pos[l][0]) for l in (5, 11, 17))  # the global layers share the budget
        assert kept == 3 * 128 if method != "headkv" else 3 * 120 < kept <= 3 * 128, (method, kept)
        st = m.kv_stats()
        assert st["bytes_held"] < st["bytes_full"]


def test_score_files_record_and_check_the_sliding_window_layers(gemma3, hf, tmp_path):
    """model_info lists the sliding-window layers as transformers configures them; a headkv score
    file written for the model records them, loads back against it, and one that lists other layers
    or an unordered list is refused with a typed error naming the field."""
    import json
    from headkv import scores as hs
    info = hs.model_info(gemma3)
    want = [i for i, t in enumerate(hf[1].config.layer_types) if t == "sliding_attention"]
    assert info["local_layers"] == want and len(want) == 15
    rng = np.random.default_rng(1)
    path = tmp_path / "g.json"
    hs.save_scores(path, rng.random((18, 4)), gemma3, "R2")
    doc = json.loads(path.read_text())
    assert doc["model"]["local_layers"] == want
    got, method = hs.load_scores(path, gemma3)
    assert got.shape == (18, 4) and method == "R2"
    doc["model"]["local_layers"] = want[:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(headkv.InvalidArgumentError, match="sliding-window layers expected"):
        hs.load_scores(path, gemma3)
    doc["model"]["local_layers"] = [1, 0]
    path.write_text(json.dumps(doc))
    with pytest.raises(headkv.FormatError, match="increasing order"):
        hs.load_scores(path)


def test_builtin_gemma_chat_template_in_python_and_the_cli(gemma3):
    """The file has no tokenizer.chat_template: gemma files get Gemma's own (as llama.cpp falls back to
    its gemma format). Python (jinja2) renders the hand-checked text below; the CLI's native renderer
    gives the same prompt (one BOS) and so the same greedy reply."""
    import subprocess
    from conftest import tool_path
    m = headkv.Model(gemma3, n_ctx=512, n_threads=2)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is the capital of France? "},
            {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    assert m.apply_chat_template(msgs) == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nAnd of Italy?<end_of_turn>\n"
        "<start_of_turn>model\n")
    q = "Name a primary colour."
    r = m.create_chat_completion([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
                                 max_tokens=8, temperature=0)
    assert r["usage"]["prompt_tokens"] == len(m.tokenize(m.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]), add_bos=False, special=True))
    p = subprocess.run([tool_path("headkv-cli"), "-m", gemma3, "--chat", "--system", "Be brief.", "-p", q, "-n", "8",
                        "--temp", "0", "-t", "2"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"prompt {r['usage']['prompt_tokens']} tokens" in p.stderr
    assert p.stdout.strip() == r["choices"][0]["message"]["content"].strip()
