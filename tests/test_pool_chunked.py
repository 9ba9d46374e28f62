"""Chunked prefill in a batched SequencePool (continuous batching, issue 27): a joining request's
full-cache prompt runs in chunks, each in one batched step with the tokens of the sequences already
generating (headkv.batching.BatchDecoder.prefill; on the CPU Context::decode_batch with per-sequence
token counts).

Oracles: one ``eval`` of the whole prompt (logits, greedy continuation) and every request run alone
in its own Model / Llama. The interleaving is checked by counting runs through the decoder's
``on_run`` hook (no timing): with ``yield_s=None`` a chunk waits for the token of every decoding
sequence, so each chunk of a prompt runs in a step with each of them."""
import math
import threading

import numpy as np
import pytest

import headkv
from headkv.batching import BatchDecoder

N_CTX = 1024
GREEDY = dict(temperature=0.0, top_k=1)
SHORT = "Once upon a time, in a small village by the sea, there lived"


def _kv(method, score_file):
    return {} if method == "full" else dict(kv_method="headkv", kv_budget=64, scores=score_file)


def _greedy_alone(path, tokens, n, **kw):
    m = headkv.Model(path, n_ctx=N_CTX, n_threads=2, **kw)
    return list(m.generate(tokens, max_tokens=n, **GREEDY))


@pytest.fixture(scope="module")
def long_tokens(model, essays):
    """600 essay tokens (a multi-chunk prompt, longer than the headkv budget)."""
    return model.tokenize(essays[5][:4000])[:600]


@pytest.mark.parametrize("chunk", [64, pytest.param(50, marks=pytest.mark.slow)])
def test_chunked_prefill_equals_one_eval(smollm2, long_tokens, chunk):
    """Chunks of n_batch tokens run the very forwards of one eval (logits bit-identical); chunks of
    another size change only the summation order (f32 cache: within 2e-5 of the largest logit).
    Greedy continuations are the same."""
    kw = dict(n_ctx=N_CTX, n_threads=2, n_batch=64, type_k="f32", type_v="f32")
    one = headkv.Model(smollm2, **kw)
    one.eval(long_tokens)
    ref = one.logits()
    m = headkv.Model(smollm2, **kw)
    d = BatchDecoder(prefill_chunk=chunk)
    d.prefill(m._e, long_tokens)
    got = m.logits()
    assert m.tokens() == long_tokens
    assert d.n_chunks == math.ceil(len(long_tokens) / chunk) and d.n_steps == 0
    if chunk == 64:
        assert np.array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    cont = []
    for mm in (one, m):
        toks = []
        for _ in range(12):
            toks.append(int(np.argmax(mm.logits())))
            mm.eval([toks[-1]])
        cont.append(toks)
    assert cont[0] == cont[1]


def _decode_while_prefilling(pool, short, long, n_b):
    """Request A (``short``) generates greedily; once it has 2 tokens, request B (``long``) joins
    and generates ``n_b`` tokens; A stops 2 tokens after B's first. Returns A's and B's tokens, the
    decoder's run log [(A's engine ran, B's engine ran, B's ran a chunk)] and a state dict (whether
    A ended on its own, B's error and engine)."""
    log, a_toks, b_toks, state = [], [], [], {}
    a_going, b_first = threading.Event(), threading.Event()
    engines = {}

    def on_run(ran, chunks):
        log.append((engines.get("a") in ran, engines.get("b") in ran, engines.get("b") in chunks))

    pool.decoder.on_run = on_run

    def a():
        seq = pool.acquire(short)
        engines["a"] = seq.model._e
        try:
            state["a_ended_alone"] = True
            for t in seq.model.generate(short, max_tokens=300, **GREEDY):
                a_toks.append(t)
                if len(a_toks) == 2:
                    a_going.set()
                if b_first.is_set() and len(a_toks) >= state["a_at_b_first"] + 2:
                    state["a_ended_alone"] = False
                    break
        finally:
            a_going.set()
            pool.release(seq)

    def b():
        a_going.wait()
        seq = pool.acquire(long)
        engines["b"] = state["b_engine"] = seq.model._e
        try:
            for t in seq.model.generate(long, max_tokens=n_b, **GREEDY):
                if not b_toks:
                    state["a_at_b_first"] = len(a_toks)
                    b_first.set()
                b_toks.append(t)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            state["b_error"] = e
        finally:
            state.setdefault("a_at_b_first", len(a_toks))
            b_first.set()
            pool.release(seq)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.decoder.on_run = None
    return a_toks, b_toks, log, state


@pytest.mark.parametrize("method", ["full", "headkv"])
def test_decode_runs_between_chunks_and_outputs_equal_alone(smollm2, model, long_tokens, score_file, method):
    kv = _kv(method, score_file)
    short = model.tokenize(SHORT)
    with headkv.SequencePool(smollm2, 2, n_ctx=N_CTX, n_threads=2, prefill_chunk=32, cls=headkv.Model, **kv) as pool:
        pool.decoder.yield_s = None  # a chunk waits for the owed decode step however long it takes
        a_toks, b_toks, log, state = _decode_while_prefilling(pool, short, long_tokens, 6)
        assert "b_error" not in state
        assert not state["a_ended_alone"]  # A was decoding from before B joined until after B's prefill
        b_chunks = [(is_a, is_b) for is_a, is_b, b_chunk in log if b_chunk]
        if method == "full":
            assert len(b_chunks) == math.ceil(len(long_tokens) / 32)
            # Every chunk of B's prompt ran in one step with a token of A: A advanced between chunks.
            assert all(is_a for is_a, _ in b_chunks), log
            assert pool.stats()["prefill_chunks"] == pool.decoder.n_chunks == len(b_chunks) + 1  # + A's prompt
        else:  # a compressing prompt is one piece (it runs beside the steps, not in them)
            assert b_chunks == [] and pool.decoder.n_chunks == 0
    assert b_toks == _greedy_alone(smollm2, long_tokens, 6, **kv)
    assert a_toks == _greedy_alone(smollm2, short, len(a_toks), **kv)


@pytest.mark.parametrize("method", ["full", pytest.param("headkv", marks=pytest.mark.slow)])
def test_batch_api_with_a_long_prompt_equals_alone(smollm2, essays, score_file, method):
    """Three completions at once through the Llama path (one prompt of several chunks): each text
    equals the same request on a Llama alone."""
    kv = _kv(method, score_file)
    prompts = [SHORT, essays[5][:2500], "The capital of France is"]
    kw = dict(n_ctx=N_CTX, n_threads=2, **kv)
    with headkv.SequencePool(smollm2, 3, prefill_chunk=48, **kw) as pool:
        got = pool.create_completions(prompts, temperature=0.0, max_tokens=8)
        chunks = pool.stats()["prefill_chunks"]
    ref = headkv.Llama(smollm2, verbose=False, **kw)
    for p, out in zip(prompts, got):
        want = ref.create_completion(p, temperature=0.0, max_tokens=8)
        assert out["choices"][0]["text"] == want["choices"][0]["text"]
        assert out["usage"] == want["usage"]
    assert (chunks > 3) == (method == "full")


def test_error_in_a_chunk_leaves_the_pool_usable(smollm2, model, long_tokens):
    """B's prompt holds a token outside the vocabulary in its third chunk: the step with that chunk
    is refused before it runs, the rows are evaluated alone, B's raises, B's context is rolled back;
    A keeps decoding what it decodes alone, and the pool serves B's request afterwards."""
    short = model.tokenize(SHORT)
    bad = long_tokens[:70] + [model.n_vocab] + long_tokens[71:]
    with headkv.SequencePool(smollm2, 2, n_ctx=N_CTX, n_threads=2, prefill_chunk=32, cls=headkv.Model) as pool:
        pool.decoder.yield_s = None
        a_toks, b_toks, log, state = _decode_while_prefilling(pool, short, bad, 4)
        assert isinstance(state.get("b_error"), headkv.InvalidArgumentError) and b_toks == []
        assert sum(b_chunk for _, _, b_chunk in log) == 3 and not state["a_ended_alone"]
        b_seq = next(s for s in pool.sequences if s.model._e is state["b_engine"])
        assert b_seq.model.tokens() == [] and b_seq.tokens == []  # rolled back, as the pool saw it on release
        assert not pool.decoder._running and pool.decoder._pending == []
        out = pool.run([(long_tokens, None)], lambda m, _: list(m.generate(long_tokens, max_tokens=4, **GREEDY)))
    assert a_toks == _greedy_alone(smollm2, short, len(a_toks))
    assert out[0] == _greedy_alone(smollm2, long_tokens, 4)


def test_failed_chunk_leaves_the_context_as_it_was(smollm2, long_tokens):
    m = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=2)
    m.eval(long_tokens[:10])
    d = BatchDecoder(prefill_chunk=16)
    with pytest.raises(headkv.InvalidArgumentError):
        d.prefill(m._e, long_tokens[10:100] + [m.n_vocab])
    assert m.tokens() == long_tokens[:10] and d.n_chunks == 6
    with pytest.raises(headkv.InvalidArgumentError):
        BatchDecoder(prefill_chunk=-1)
    with pytest.raises(headkv.InvalidArgumentError):
        headkv.SequencePool(smollm2, 2, n_ctx=64, prefill_chunk=-1)
    # a step takes at most n_batch tokens of one sequence: a larger chunk is cut to n_batch
    with headkv.SequencePool(smollm2, 2, n_ctx=64, n_threads=1, n_batch=24, prefill_chunk=64, cls=headkv.Model) as pool:
        assert pool.decoder.prefill_chunk == 24


def test_mixed_step_equals_separate_evals(smollm2):
    """One step with a decode row and a prompt chunk (BatchStep.step with counts) appends what a
    one-token eval and a chunk eval append (f32 cache: logits within 2e-5 of the largest)."""
    kw = dict(n_ctx=256, n_threads=2, type_k="f32", type_v="f32")
    a = headkv.Model(smollm2, **kw)
    b = headkv.Model(smollm2, share_with=a, **kw)
    ra, rb = headkv.Model(smollm2, **kw), headkv.Model(smollm2, **kw)
    pa, pb = a.tokenize("The capital of France is"), a.tokenize("Once upon a time, in a land far away, there")
    a.eval(pa)
    ra.eval(pa)
    t = int(np.argmax(a.logits()))
    headkv._core.BatchStep().step([a._e, b._e], [t] + pb, [1, len(pb)])
    ra.eval([t])
    rb.eval(pb)
    for m, r in ((a, ra), (b, rb)):
        assert m.tokens() == r.tokens()
        np.testing.assert_allclose(m.logits(), r.logits(), rtol=0, atol=2e-5 * np.abs(r.logits()).max())
    with pytest.raises(headkv.InvalidArgumentError):  # counts must add up to the tokens
        headkv._core.BatchStep().step([a._e, b._e], [t, t], [1, 2])
    assert a.tokens() == ra.tokens()


def test_prefill_chunk_zero_is_one_eval(smollm2, long_tokens):
    """prefill_chunk=0: the prompt in one eval, outside the turns (no chunk is counted)."""
    one = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=2)
    one.eval(long_tokens)
    m = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=2)
    d = BatchDecoder(prefill_chunk=0)
    d.prefill(m._e, long_tokens)
    assert d.n_chunks == 0 and m.tokens() == long_tokens
    assert np.array_equal(m.logits(), one.logits())
