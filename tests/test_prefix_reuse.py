"""Prefix reuse, truncate, save/load_state, prompts longer than n_ctx under compression, and the
decode room of a compressed context (issue 24's first-hour items)."""
import pytest

import headkv
from headkv.errors import InvalidArgumentError

NEEDLE = " The secret number of the blue gate is 5606394622. "


@pytest.fixture(scope="module")
def doc(essays):
    return essays[2][:2500] + NEEDLE + essays[3][:2500]  # about 1,150 tokens


def _turns(m, doc):
    """Two chat turns about one document; returns both replies' texts and the second call's reuse."""
    msgs = [{"role": "user", "content": doc + "\n\nWhat is the secret number of the blue gate?"}]
    r1 = m.create_chat_completion(msgs, max_tokens=20, temperature=0)
    held = m.n_past
    msgs += [r1["choices"][0]["message"], {"role": "user", "content": "Say the number again."}]
    r2 = m.create_chat_completion(msgs, max_tokens=20, temperature=0)
    return r1, r2, held, m.n_reused, msgs


def test_full_cache_follow_up_reuses_prefix_and_matches_fresh_run(smollm2, doc):
    """The second question evaluates only its own tokens (the whole first turn is reused) and its
    answer equals a fresh prefill of the whole conversation."""
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2)
    r1, r2, held, reused, msgs = _turns(m, doc)
    assert "5606394622" in r1["choices"][0]["message"]["content"]
    # Everything evaluated in turn one that the rendered conversation repeats is reused: at least the
    # first prompt, at most what the context held.
    assert r1["usage"]["prompt_tokens"] <= reused <= held
    fresh = headkv.Model(smollm2, n_ctx=2048, n_threads=2, cache_prompt=False)
    r3 = fresh.create_chat_completion(msgs, max_tokens=20, temperature=0)
    assert fresh.n_reused == 0
    assert r2["choices"][0]["message"]["content"] == r3["choices"][0]["message"]["content"]


def test_identical_prompt_reevaluates_only_its_last_token(model):
    ids = model.tokenize("The quick brown fox jumps over the lazy dog")
    a = list(model.generate(ids, temperature=0, max_tokens=6))
    b = list(model.generate(ids, temperature=0, max_tokens=6))
    assert model.n_reused == len(ids) - 1 and a == b


def test_compressed_follow_up_keeps_the_compressed_prompt(smollm2, doc):
    """A compressing method reuses its compressed prompt for a follow-up turn: the reply equals the
    query-agnostic path done by hand (compressed first prompt, then the new tokens appended)."""
    kw = dict(n_ctx=2048, n_threads=2, kv_method="snapkv", kv_budget=256)
    m = headkv.Model(smollm2, **kw)
    r1, r2, held, reused, msgs = _turns(m, doc)
    n_first = r1["usage"]["prompt_tokens"]
    assert m.n_prompt == n_first and n_first <= reused <= held
    # by hand: compress the first prompt, append the rest of the conversation's tokens
    hand = headkv.Model(smollm2, **kw)
    toks = m.tokens()  # the conversation as the context holds it (prompt, reply, follow-up)
    all_toks = hand.tokenize(hand.apply_chat_template(msgs), add_bos=False, special=True)
    assert all_toks[:len(toks) - 0][:n_first] == toks[:n_first]
    hand.eval(all_toks[:n_first])
    out = list(hand.generate(all_toks[n_first:], temperature=0, max_tokens=20, reset=False))
    text = hand.detokenize(out).decode("utf-8", "replace")
    assert r2["choices"][0]["message"]["content"] == text.strip() or r2["choices"][0]["message"]["content"] == text


def test_truncate_and_state(smollm2, doc):
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="headkv", kv_budget=128)
    d = m.tokenize(doc)
    m.eval(d)
    doc_state = m.save_state()
    q = m.tokenize("\n\nQuestion: what is the secret number of the blue gate?\nAnswer:", add_bos=False)
    a1 = list(m.generate(q, temperature=0, max_tokens=12, reset=False))
    with pytest.raises(InvalidArgumentError, match="cannot be partly forgotten"):
        m.truncate(len(d) - 1)
    assert m.n_past == len(d) + len(q) + len(a1)  # generate() evaluates each token it yields
    m.truncate(len(d))  # a rollback: the compressed document is kept, the question forgotten
    assert m.n_past == len(d) and m.n_prompt == len(d)
    assert list(m.generate(q, temperature=0, max_tokens=12, reset=False)) == a1
    with pytest.raises(InvalidArgumentError):
        m.truncate(m.n_past + 1)
    m.reset()
    m.load_state(doc_state)  # the snapshot holds the compressed arena: restored by copying, no prefill
    assert m.n_past == m.n_prompt == len(d) and m.tokens() == d
    assert list(m.generate(q, temperature=0, max_tokens=12, reset=False)) == a1


@pytest.mark.parametrize("method", ["full", "headkv", "adakv"])
def test_state_bytes_restore_the_sequence_in_a_fresh_model(smollm2, doc, method):
    """save_state's bytes rebuild the sequence in another Model: the same kept positions per head,
    the same bytes held, the same last logits, and the same continuation, token for token (the
    snapshot is the KV itself, not a recipe to recompute it)."""
    import numpy as np
    kw = dict(n_ctx=2048, n_threads=2, kv_method=method, kv_budget=96)
    m = headkv.Model(smollm2, **kw)
    d = m.tokenize(doc)
    m.eval(d)
    m.eval(m.tokenize(" Question: the secret number?", add_bos=False))
    st = m.save_state()
    assert isinstance(st.data, bytes) and st.n_tokens == m.n_past and st.n_prompt == m.n_prompt
    logits, held = np.array(m.logits()), m.kv_stats()["bytes_held"]
    positions = m.kv_positions() if method != "full" else None
    want = list(m.generate([m.tokens()[-1]], temperature=0, max_tokens=8, reset=False))
    fresh = headkv.Model(smollm2, **kw)
    fresh.load_state(st)
    assert fresh.tokens() == list(st.tokens) and fresh.n_prompt == st.n_prompt
    np.testing.assert_array_equal(fresh.logits(), logits)
    assert fresh.kv_stats()["bytes_held"] == held
    if method != "full":
        assert all(list(a) == list(b) for la, lb in zip(fresh.kv_positions(), positions) for a, b in zip(la, lb))
    assert list(fresh.generate([fresh.tokens()[-1]], temperature=0, max_tokens=8, reset=False)) == want


@pytest.mark.parametrize("method", ["snapkv", "headkv"])
def test_state_of_a_compressing_context_before_its_prompt(smollm2, doc, method):
    """A compressing context saved before its prompt holds nothing: loading that state empties a
    context that has compressed a prompt, which then compresses the next prompt exactly as a fresh
    model does (same kept positions, same logits)."""
    import numpy as np
    kw = dict(n_ctx=2048, n_threads=2, kv_method=method, kv_budget=64)
    m = headkv.Model(smollm2, **kw)
    empty = m.save_state()
    assert empty.n_tokens == 0 and empty.n_prompt == 0
    d = m.tokenize(doc)[:300]
    m.eval(d[:120])
    m.load_state(empty)
    assert m.tokens() == [] and m.n_prompt == 0 and m.kv_stats()["bytes_held"] == 0
    m.eval(d)
    fresh = headkv.Model(smollm2, **kw)
    fresh.eval(d)
    assert m.n_prompt == fresh.n_prompt == len(d)
    np.testing.assert_array_equal(m.logits(), fresh.logits())
    assert all(list(a) == list(b) for la, lb in zip(m.kv_positions(), fresh.kv_positions()) for a, b in zip(la, lb))


def test_bad_states_are_refused_and_leave_the_context_unchanged(smollm2, doc):
    import dataclasses
    import numpy as np
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="snapkv", kv_budget=64)
    d = m.tokenize(doc)[:400]
    m.eval(d)
    st = m.save_state()
    logits = np.array(m.logits())
    full = headkv.Model(smollm2, n_ctx=2048, n_threads=2)
    full.eval(d[:50])
    cases = [
        (full, st, "KV method 'snapkv'"),
        (headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="snapkv", kv_budget=64, type_k="f32"), st,
         "cache types"),
        (m, dataclasses.replace(st, data=st.data[:-7]), "not a headkv state"),
        (m, dataclasses.replace(st, data=b"GGUF" + st.data[4:]), "bad magic"),
        (m, dataclasses.replace(st, data=st.data + b"\0"), "trailing"),
        (headkv.Model(smollm2, n_ctx=32, n_threads=2), full.save_state(), "more than n_ctx"),
    ]
    for target, state, msg in cases:
        with pytest.raises(InvalidArgumentError, match=msg):
            target.load_state(state)
    assert m.tokens() == d and m.n_prompt == len(d)
    np.testing.assert_array_equal(m.logits(), logits)
    assert full.tokens() == d[:50]
    with pytest.raises(InvalidArgumentError):
        m.load_state("not a state")


def test_prompt_four_times_n_ctx_compressed_and_answered(smollm2, essays):
    """n_ctx bounds the full cache; a compressing method takes a prompt 4x longer and answers from it."""
    doc = essays[5][:5500] + NEEDLE + essays[6][:5500]
    m = headkv.Model(smollm2, n_ctx=512, n_threads=2, kv_method="headkv", kv_budget=256)
    msgs = [{"role": "user", "content": doc + "\n\nWhat is the secret number of the blue gate?"}]
    r = m.create_chat_completion(msgs, max_tokens=24, temperature=0)
    assert r["usage"]["prompt_tokens"] >= 4 * 512
    assert "5606394622" in r["choices"][0]["message"]["content"]
    st = m.kv_stats()
    assert st["used"].sum() < 0.3 * st["used"].size * r["usage"]["prompt_tokens"]  # kept: 256 per head + decode
    full = headkv.Model(smollm2, n_ctx=512, n_threads=2)
    with pytest.raises(headkv.ContextFullError):
        full.create_chat_completion(msgs, max_tokens=4, temperature=0)


def test_long_generation_from_compressed_context_and_its_limit(tmp_path, smollm2):
    """The decode room follows the request (2,000 tokens from a compressed context, past the
    configured 512), and when a follow-up uses it up the generation stops with finish_reason
    "kv_full" and a warning, instead of an error."""
    from gguf_factory import write_tiny_llama
    tiny = str(write_tiny_llama(tmp_path / "tiny.gguf", smollm2))
    m = headkv.Llama(tiny, n_ctx=256, kv_method="snapkv", kv_budget=32, max_new_tokens=512, verbose=False)
    eog = [t for t in range(m.n_vocab) if m.is_eog(t)]
    bias = {t: float("-inf") for t in eog}
    r = m.create_completion("one two three " * 30, max_tokens=2000, temperature=0.9, seed=3, logit_bias=bias)
    assert r["usage"]["completion_tokens"] == 2000 and r["choices"][0]["finish_reason"] == "length"
    assert m.n_past > 2000 > m.n_ctx
    # a context compressed with the configured room (40) and appended to beyond it
    m2 = headkv.Llama(tiny, n_ctx=256, kv_method="snapkv", kv_budget=32, max_new_tokens=40, verbose=False)
    m2.eval(m2.tokenize("one two three " * 30))
    with pytest.warns(RuntimeWarning, match="decode room"):
        r2 = m2.create_completion(" four", max_tokens=100, temperature=0, reset=False, logit_bias=bias)
    assert r2["choices"][0]["finish_reason"] == "kv_full"
    # 40 slots: the 2 appended prompt tokens, then one per generated token but the last sampled one
    assert r2["usage"]["completion_tokens"] == 40 - len(m2.tokenize(" four", add_bos=False)) + 1


def test_example_model_path(smollm2):
    assert headkv.example_model() == smollm2
    with pytest.raises(headkv.HeadkvIOError, match="unknown example model"):
        headkv.example_model("nosuch")


def test_device_auto_picks_a_usable_device(smollm2):
    m = headkv.Model(smollm2, n_ctx=256, n_threads=1, device="auto")
    want = "cuda" if headkv._core.cuda_built() and headkv._core.cuda_device_count() > 0 else "cpu"
    assert m.device == want
