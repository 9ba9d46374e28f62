"""Several sequences decoded in one batched step (CPU): headkv.SequenceGroup and SequencePool's
batched path against the same requests run alone.

Exactness: a batched step runs each weight matrix over n rows at once, and the quantized dot
products sum in another order for several rows than for one (two accumulator chains for a single
row, one per row for several; the GEMM path from 16 rows). So a batched row's logits equal the
single-sequence logits up to float rounding, not bit for bit: with an f32 KV cache within 2e-5 of
the largest logit, with the default f16 cache within 1e-3 (a rounding difference can round a stored
K/V element to the neighbouring half). Greedy tokens are the same."""
import numpy as np
import pytest

import headkv

N_CTX = 256
PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away, there lived a", "def fibonacci(n):",
           "The capital of France is", "List three colors:", "Water boils at a temperature of",
           "In 1492, Columbus sailed", "My favourite food is"]
KV = {"full": {}, "snapkv": dict(kv_method="snapkv", kv_budget=16),
      "headkv": dict(kv_method="headkv", kv_budget=16)}


def _alone(path, prompt, n, **kv):
    """Greedy tokens and the logits before each, the sequence alone in its own model."""
    m = headkv.Model(path, n_ctx=N_CTX, n_threads=2, **kv)
    m.eval(prompt)
    toks, logits = [], []
    for _ in range(n):
        lg = m.logits()
        logits.append(lg.copy())
        toks.append(int(np.argmax(lg)))
        m.eval([toks[-1]])
    return toks, logits


@pytest.fixture(scope="module")
def base(smollm2):
    return headkv.Model(smollm2, n_ctx=N_CTX, n_threads=2)


def _kvconfig(base, kv):
    return headkv.Model(base.model_path, n_ctx=8, n_threads=1, **kv).kv


@pytest.mark.parametrize("method", list(KV))
def test_group_decodes_as_alone_with_joins_and_leaves(smollm2, base, method):
    """Six sequences of different prompt lengths: three start, two join after 3 steps, the first
    leaves after 5 and one joins after 6; each decodes its own number of greedy tokens."""
    kv = KV[method]
    prompts = [base.tokenize(p) for p in PROMPTS[:6]]
    lengths = [5, 12, 9, 10, 7, 8]
    joins = [0, 0, 0, 3, 3, 6]
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, n_threads=2, kv=_kvconfig(base, kv))
    got = {i: [] for i in range(6)}
    logits = {i: [] for i in range(6)}
    step = 0
    while any(len(got[i]) < lengths[i] for i in range(6)):
        for i in range(6):
            if joins[i] == step:
                g.add(100 + i, prompts[i])
                logits[i].append(g.logits(100 + i))
        ids, toks = [], []
        for i in range(6):
            if (100 + i) not in g.ids:
                continue
            t = int(np.argmax(logits[i][-1]))
            got[i].append(t)
            if len(got[i]) == lengths[i]:
                g.remove(100 + i)  # done: leaves before the step
            else:
                ids.append(100 + i)
                toks.append(t)
        if ids:
            out = g.step(ids, toks)
            for r, sid in enumerate(ids):
                logits[sid - 100].append(out[r])
                assert np.array_equal(out[r], g.logits(sid))
        step += 1
    assert len(g) == 0 and g.kv_bytes() == 0
    for i in range(6):
        ref, ref_logits = _alone(smollm2, prompts[i], lengths[i], **kv)
        assert got[i] == ref, (method, i)
        for a, b in zip(logits[i], ref_logits):
            assert np.max(np.abs(a - b)) <= 1e-3 * np.max(np.abs(b)), (method, i)


@pytest.mark.parametrize("method", ["full", "snapkv"])
def test_batched_logits_match_single_f32_cache(smollm2, base, method):
    kv = dict(KV[method], type_k="f32", type_v="f32")
    prompts = [base.tokenize(p) for p in PROMPTS[:4]]
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, n_threads=2, kv=_kvconfig(base, kv))
    for i, p in enumerate(prompts):
        g.add(i, p)
    refs = [_alone(smollm2, p, 6, **kv) for p in prompts]
    worst = 0.0
    for s in range(6):
        for i in range(4):
            ref = refs[i][1][s]
            lg = g.logits(i)
            worst = max(worst, float(np.max(np.abs(lg - ref)) / np.max(np.abs(ref))))
            assert int(np.argmax(lg)) == refs[i][0][s]
        if s < 5:
            g.step(range(4), [refs[i][0][s] for i in range(4)])
    assert worst <= 2e-5, worst


def test_group_errors_change_nothing(smollm2, base):
    a, b = base.tokenize(PROMPTS[0]), base.tokenize(PROMPTS[1])
    g = headkv.SequenceGroup(base, n_ctx=len(b) + 2, n_threads=2)
    g.add(1, a)
    g.add(2, b)
    ta, tb = int(np.argmax(g.logits(1))), int(np.argmax(g.logits(2)))
    before = (g.n_past(1), g.n_past(2), g.logits(1).copy(), g.logits(2).copy())
    with pytest.raises(headkv.InvalidArgumentError, match="no sequence with id 3"):
        g.step([1, 3], [ta, tb])
    with pytest.raises(headkv.InvalidArgumentError, match="twice"):
        g.step([1, 1], [ta, ta])
    with pytest.raises(headkv.InvalidArgumentError, match="outside the vocabulary"):
        g.step([1, 2], [ta, 10 ** 6])
    with pytest.raises(headkv.InvalidArgumentError, match="already"):
        g.add(1, a)
    with pytest.raises(headkv.InvalidArgumentError):
        g.add(5, [])
    with pytest.raises(headkv.InvalidArgumentError):
        g.remove(7)
    assert (g.n_past(1), g.n_past(2)) == before[:2] and sorted(g.ids) == [1, 2]
    assert np.array_equal(g.logits(1), before[2]) and np.array_equal(g.logits(2), before[3])
    # sequence 2 fills its context (n_ctx = its prompt + 2): the step naming it fails, 1 is unchanged
    seq1 = [ta]
    g.step([1, 2], [ta, tb])
    seq1.append(int(np.argmax(g.logits(1))))
    g.step([1, 2], [seq1[-1], int(np.argmax(g.logits(2)))])
    seq1.append(int(np.argmax(g.logits(1))))
    n1 = g.n_past(1)
    with pytest.raises(headkv.ContextFullError, match="sequence id 2"):
        g.step([1, 2], [seq1[-1], int(np.argmax(g.logits(2)))])
    assert g.n_past(1) == n1 and g.n_past(2) == len(b) + 2
    # after the errors, sequence 1 still decodes what it decodes alone
    g.remove(2)
    for _ in range(3):
        g.step([1], [seq1[-1]])
        seq1.append(int(np.argmax(g.logits(1))))
    assert seq1 == _alone(smollm2, a, 6)[0]


def test_group_step_counts_chunk_a_prompt_beside_decoding(smollm2, base, essays):
    """SequenceGroup.step with counts (C: hk_group_step_n): sequence 2 joins with its prompt's first 24
    tokens and takes the rest in chunks of 24 / 7 / the remainder, each in the step that gives sequence 1
    its next greedy token. Sequence 2's logits then equal one eval of the whole prompt, and sequence 1
    decodes what it decodes alone; bad counts change nothing."""
    a = base.tokenize(PROMPTS[1])
    long = base.tokenize(essays[0])[:80]
    toks1, logits1 = _alone(smollm2, a, 5)
    whole = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=2)
    whole.eval(long)
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, n_threads=2, n_batch=32)
    g.add(1, a)
    g.add(2, long[:24])
    before = (g.n_past(1), g.n_past(2))
    with pytest.raises(headkv.InvalidArgumentError, match="n_batch=32"):  # a chunk larger than n_batch
        g.step([1, 2], [toks1[0]] + long[24:57], counts=[1, 33])
    with pytest.raises(headkv.InvalidArgumentError, match=">= 1"):
        g.step([1, 2], [toks1[0]], counts=[1, 0])
    with pytest.raises(headkv.InvalidArgumentError, match="add up to 25"):
        g.step([1, 2], [toks1[0]] + long[24:50], counts=[1, 24])
    assert (g.n_past(1), g.n_past(2)) == before
    off, got1 = 24, []
    for i, chunk in enumerate([24, 7, len(long) - 55]):
        assert np.max(np.abs(g.logits(1) - logits1[i])) <= 1e-3 * np.max(np.abs(logits1[i]))
        got1.append(int(np.argmax(g.logits(1))))
        out = g.step([1, 2], [got1[-1]] + long[off:off + chunk], counts=[1, chunk])
        off += chunk
        assert out.shape == (2, base.n_vocab) and np.array_equal(out[1], g.logits(2))
    assert g.n_past(2) == len(long) and off == len(long)
    ref = whole.logits()
    assert np.max(np.abs(g.logits(2) - ref)) <= 1e-3 * np.max(np.abs(ref))
    assert int(np.argmax(g.logits(2))) == int(np.argmax(ref))
    got1.append(int(np.argmax(g.logits(1))))
    assert got1 == toks1[:4]


def test_group_admission(smollm2, base):
    a = base.tokenize(PROMPTS[0])
    one = headkv.Model(smollm2, n_ctx=64, n_threads=1).kv_bytes()
    g = headkv.SequenceGroup(base, n_ctx=64, n_threads=2, kv_limit_bytes=2 * one + one // 2)
    g.add(1, a)
    g.add(2, a)
    with pytest.raises(headkv.OutOfMemoryError, match="refused"):
        g.add(3, a)
    assert sorted(g.ids) == [1, 2] and g.kv_bytes() == 2 * one
    g.remove(1)
    g.add(3, a)  # room again
    assert sorted(g.ids) == [2, 3]
    with pytest.raises(headkv.OutOfMemoryError, match=f"its full cache needs {one} bytes"):
        headkv.SequenceGroup(base, n_ctx=64, n_threads=2, kv_limit_bytes=one - 1).add(1, a)
    # refused from its size before it is allocated: a cache far beyond this machine's memory
    # (1e9 positions) is the group's refusal, not the allocator's
    with pytest.raises(headkv.OutOfMemoryError, match="refused: its full cache needs .* the group holds 0 bytes"):
        headkv.SequenceGroup(base, n_ctx=10**9, n_threads=2, kv_limit_bytes=one).add(1, a)
    # compressed: refused from the prompt's plan, before its prefill
    kv = _kvconfig(base, KV["snapkv"])
    c = headkv.SequenceGroup(base, n_ctx=N_CTX, n_threads=2, kv=kv)
    c.add(1, a)
    per = c.kv_bytes(1)
    c2 = headkv.SequenceGroup(base, n_ctx=N_CTX, n_threads=2, kv=kv, kv_limit_bytes=per + per // 2)
    c2.add(1, a)
    with pytest.raises(headkv.OutOfMemoryError, match="compressed KV"):
        c2.add(2, a)
    assert c2.ids == [1] and c2.kv_bytes() == per

def test_group_devices(base):
    """A group's device: the model's by default, or named; unknown names are refused, and the GPU
    devices without the CUDA backend (the GPU group itself: tests/test_cuda_batch.py)."""
    g = headkv.SequenceGroup(base, n_ctx=64, n_threads=1)
    assert g.device == "cpu" and g.scratch_bytes == 0
    assert headkv.SequenceGroup(base, n_ctx=64, n_threads=1, device="cpu").device == "cpu"
    with pytest.raises(headkv.InvalidArgumentError, match="unknown device 'tpu'"):
        headkv.SequenceGroup(base, n_ctx=64, n_threads=1, device="tpu")
    if not headkv._core.cuda_built():
        for dev in ("cuda", "cuda-fp32"):
            with pytest.raises(headkv.UnsupportedError, match="no CUDA backend"):
                headkv.SequenceGroup(base, n_ctx=64, n_threads=1, device=dev)


def test_batch_step_over_siblings(smollm2, base):
    """_core.BatchStep (what BatchDecoder runs) over sibling CPU models: each sequence as alone;
    bad lists are refused before any sequence changes."""
    prompts = [base.tokenize(p) for p in PROMPTS[:3]]
    first = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=2)
    models = [first] + [headkv.Model(smollm2, n_ctx=N_CTX, share_with=first) for _ in range(2)]
    for m, p in zip(models, prompts):
        m.eval(p)
    step = headkv._core.BatchStep()
    got = [[] for _ in models]
    for _ in range(5):
        toks = [int(np.argmax(m.logits())) for m in models]
        for g, t in zip(got, toks):
            g.append(t)
        step.step([m._e for m in models], toks)
    for g, p in zip(got, prompts):
        assert g == _alone(smollm2, p, 5)[0]
    n_past = [m._e.n_past for m in models]
    with pytest.raises(headkv.InvalidArgumentError, match="engines but"):
        step.step([m._e for m in models], [1])
    with pytest.raises(headkv.InvalidArgumentError, match="at least one"):
        step.step([], [])
    with pytest.raises(headkv.InvalidArgumentError, match="twice"):
        step.step([first._e, first._e], [1, 1])
    lone = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=1)  # its own load of the model
    lone.eval(prompts[0])
    with pytest.raises(headkv.InvalidArgumentError, match="another model"):
        step.step([first._e, lone._e], [1, 1])
    assert [m._e.n_past for m in models] == n_past


@pytest.mark.parametrize("method", ["full", "headkv"])
def test_pool_batched_requests_match_alone(smollm2, method):
    """Eight concurrent greedy requests of different lengths through the pool's batched path return
    what each returns alone; the pool did run batched steps."""
    kv = KV[method]
    alone = headkv.Llama(smollm2, n_ctx=N_CTX, n_threads=2, verbose=False, **kv)
    jobs = [(p, 6 + 3 * i) for i, p in enumerate(PROMPTS)]
    ref = [alone.create_completion(p, max_tokens=n, temperature=0)["choices"][0]["text"] for p, n in jobs]
    with headkv.SequencePool(smollm2, 8, n_ctx=N_CTX, n_threads=2, **kv) as pool:
        out = pool.run([(pool.prompt_tokens(p), (p, n)) for p, n in jobs],
                       lambda m, j: m.create_completion(j[0], max_tokens=j[1], temperature=0))
        st = pool.stats()
    assert [o["choices"][0]["text"] for o in out] == ref
    assert st["batched_steps"] > 0 and st["batched_tokens"] > st["batched_steps"]
