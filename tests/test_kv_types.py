"""KV cache element types on the CPU: f16 (default) against f32 (reference), bytes, errors, CLI/bench flags."""
import json
import subprocess

import numpy as np
import pytest

import headkv
from headkv import _core

HD = 64
# Largest |logit(f16 cache) - logit(f32 cache)| on SmolLM2 (logits of magnitude ~25) over the prompt's
# last token and 4 decoded tokens. Measured on this prompt: full cache 0.0084, snapkv decode 0.0104
# (avx2 level); 0.0109 / 0.0101 at the baseline level. The bound leaves about 4.5x margin.
LOGIT_BOUND = 0.05


@pytest.fixture(scope="module")
def prompt(model, essays):
    return model.tokenize(essays[5][:3000])[:600]


def _run(smollm2, prompt, t, method="full", **kw):
    m = headkv.Model(smollm2, n_ctx=1024, n_threads=2, kv_method=method, kv_budget=96, max_new_tokens=8,
                     type_k=t, type_v=t, **kw)
    m.eval(prompt)
    rows = [np.array(m.logits())]
    for tok in (prompt[7], prompt[11], prompt[13], prompt[17]):  # teacher-forced decode steps
        m.eval([tok])
        rows.append(np.array(m.logits()))
    return m, np.stack(rows)


def test_f16_full_cache_logits_close_to_f32(smollm2, prompt):
    """Full cache: every K/V row (prompt and decode) is stored as half and read as half; logits stay
    within LOGIT_BOUND of the f32 cache, the greedy token is the same, and the cache holds half the bytes."""
    m16, l16 = _run(smollm2, prompt, "f16")
    m32, l32 = _run(smollm2, prompt, "f32")
    diff = np.abs(l16 - l32).max()
    assert 0 < diff < LOGIT_BOUND, diff  # > 0: the f16 path is really taken
    assert (l16.argmax(1) == l32.argmax(1)).all()
    s16, s32 = m16.kv_stats(), m32.kv_stats()
    assert s32["bytes_held"] == 2 * s16["bytes_held"] == 1024 * 2 * 30 * 3 * HD * 4
    assert s16["entry_bytes"] == 2 * HD * 2 + 4 and s32["entry_bytes"] == 2 * HD * 4 + 4


def test_f16_batch_prefill_close_to_token_by_token(model):
    """The default f16 cache: a batch prefill and the same tokens one at a time store the same K/V
    up to fp32 summation order, which half rounding can turn into one-ulp differences. Measured 0.0038
    on this sentence (2.7e-5 with an f32 cache, test_parity_hf); bound as LOGIT_BOUND."""
    ids = model.tokenize("Batch prefill and one-token decode must agree on every logit.")
    model.reset()
    model.eval(ids)
    batch = np.array(model.logits())
    model.reset()
    for t in ids:
        model.eval([t])
    step = np.array(model.logits())
    assert np.abs(batch - step).max() < LOGIT_BOUND
    assert batch.argmax() == step.argmax()


def test_f16_compressed_same_positions_and_close_logits(smollm2, prompt):
    """snapkv: selection scores come from the layer's fp32 K before storage, so every head keeps the
    same positions; the prompt's logits are identical (the compressed prefill attends over the fp32
    layer buffer), decode logits (over the f16 arena) within LOGIT_BOUND."""
    m16, l16 = _run(smollm2, prompt, "f16", method="snapkv")
    m32, l32 = _run(smollm2, prompt, "f32", method="snapkv")
    p16, p32 = m16.kv_positions(), m32.kv_positions()
    assert all(list(a) == list(b) for la, lb in zip(p16, p32) for a, b in zip(la, lb))
    assert np.array_equal(l16[0], l32[0])
    diff = np.abs(l16[1:] - l32[1:]).max()
    assert 0 < diff < LOGIT_BOUND, diff
    assert (l16.argmax(1) == l32.argmax(1)).all()


def test_mixed_types_between(smollm2, prompt):
    """K and V are typed separately: f16 keys with f32 values (and the reverse) give logits between
    the pure types' bounds and entry bytes of hd*(2+4)+4."""
    _, l32 = _run(smollm2, prompt, "f32")
    for tk, tv in (("f16", "f32"), ("f32", "f16")):
        m = headkv.Model(smollm2, n_ctx=1024, n_threads=2, type_k=tk, type_v=tv)
        m.eval(prompt)
        assert m.kv_stats()["entry_bytes"] == HD * 6 + 4
        diff = np.abs(np.array(m.logits()) - l32[0]).max()
        assert 0 < diff < LOGIT_BOUND, (tk, tv, diff)


def test_f16_arena_bytes_from_allocator(smollm2, prompt):
    """At the same budget the f16 arena holds (2*hd*2+4)/(2*hd*4+4) of the f32 arena's bytes, and the
    C heap grows by exactly what kv_stats reports for each type."""
    if _core.heap_in_use() is None:
        pytest.skip("needs glibc's mallinfo2")
    held = {}
    for t in ("f16", "f32"):
        m = headkv.Model(smollm2, n_ctx=1024, n_threads=2, kv_method="snapkv", kv_budget=96, max_new_tokens=8,
                         type_k=t, type_v=t)
        m.eval(prompt)  # warm-up: one-time lazy allocations
        m.reset()
        before = _core.heap_in_use()
        m.eval(prompt)
        grown = _core.heap_in_use() - before
        st = m.kv_stats()
        assert st["bytes_held"] == st["capacity"].sum() * st["entry_bytes"]
        assert st["bytes_held"] <= grown <= st["bytes_held"] + 4096, (t, grown, st["bytes_held"])
        held[t] = (st["bytes_held"], st["capacity"].sum())
    assert held["f16"][1] == held["f32"][1]  # same entries
    assert held["f16"][0] * (2 * HD * 4 + 4) == held["f32"][0] * (2 * HD * 2 + 4)


@pytest.mark.parametrize("kw,err,msg", [
    ({"type_k": "q8_0"}, headkv.UnsupportedError, "not yet supported"),
    ({"type_v": "q4_0"}, headkv.UnsupportedError, "not yet supported"),
    ({"type_k": "half"}, headkv.InvalidArgumentError, "not a KV cache type"),
    ({"type_v": "F16 "}, headkv.InvalidArgumentError, "not a KV cache type"),
    ({"type_k": 1}, headkv.InvalidArgumentError, "type_k must be a cache type name"),
])
def test_bad_type_names_fail_before_allocation(smollm2, kw, err, msg):
    """A bad type fails with its typed error even where the cache could never be allocated (n_ctx
    2^28: terabytes), so the check comes before any allocation."""
    with pytest.raises(err, match=msg):
        headkv.Model(smollm2, n_ctx=1 << 28, n_threads=1, **kw)
    with pytest.raises(headkv.OutOfMemoryError):  # the same context with valid types reaches the allocator
        headkv.Model(smollm2, n_ctx=1 << 28, n_threads=1)


def test_llama_takes_names_and_ggml_ids(smollm2):
    """headkv.Llama takes llama-cpp-python's type_k/type_v: GGML type ids (0 f32, 1 f16, 8 q8_0) or names."""
    llm = headkv.Llama(smollm2, n_ctx=64, type_k=0, type_v="f32", verbose=False)
    assert llm.kv_stats()["bytes_held"] == 64 * 2 * 30 * 3 * HD * 4
    llm = headkv.Llama(smollm2, n_ctx=64, type_k=1, type_v=None, verbose=False)
    assert llm.kv_stats()["bytes_held"] == 64 * 2 * 30 * 3 * HD * 2
    with pytest.raises(headkv.UnsupportedError, match="q8_0"):
        headkv.Llama(smollm2, n_ctx=64, type_k=8, verbose=False)


def test_cli_and_bench_cache_type_flags(smollm2):
    """-ctk/-ctv reach the context: the bench's full cache at f32/f32 holds twice the f16 bytes (same
    n_ctx) and reports the types; the CLI refuses q8_0 (unsupported) and unknown names per flag."""
    from conftest import tool_path
    p = subprocess.run([tool_path("headkv-bench"), "-m", smollm2, "-p", "0", "-n", "2", "-r", "1", "-t", "1",
                        "--no-warmup", "-o", "json", "-ctk", "f16,f32", "--cache-type-v", "f16,f32"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = {(r["type_k"], r["type_v"]): r["kv_bytes"] for r in json.loads(p.stdout)}
    assert len(rows) == 4 and rows[("f32", "f32")] == 2 * rows[("f16", "f16")]
    assert rows[("f16", "f32")] == rows[("f32", "f16")] == 3 * rows[("f16", "f16")] // 2
    cli = [tool_path("headkv-cli"), "-m", smollm2, "-p", "hello", "-n", "2", "-c", "64"]
    r = subprocess.run(cli + ["-ctk", "q8_0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "(K) 'q8_0' is not yet supported" in r.stderr, r.stderr
    r = subprocess.run(cli + ["--cache-type-v", "fp16"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "(V) 'fp16' is not a KV cache type" in r.stderr, r.stderr
    r = subprocess.run(cli + ["-ctk", "f32", "-ctv", "f32", "--temp", "0"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
