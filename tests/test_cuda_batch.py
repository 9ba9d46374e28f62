"""Several sequences decoded together on the GPU (headkv.SequenceGroup on "cuda" / "cuda-fp32",
SequencePool's batched path on the GPU) against the same sequences decoded alone on the GPU, on
SmolLM2 Q4_1. Marked gpu: skipped without a CUDA device; run with
`pytest -m gpu tests/test_cuda_batch.py -v -s` (the -s shows the measured differences).

What is compared and the stated bounds:
* The batched step runs the RMSNorm as its own kernel and multiplies every row with the matvecs of
  its precision: fp32 activations in cuda-fp32 (and with HEADKV_MATVEC=fp32), each row quantized to
  int8 blocks in the default "cuda" (backend/cuda_batch.h); a sequence alone runs the RMSNorm fused
  into its single-token matvecs with the same activations. So with fp32 activations the logits
  differ only by float rounding (the norm applied before or after the dot product; a rounding can
  move a stored fp16 K/V element to the neighbouring half): within 2e-3 of the largest |logit|, and
  the greedy tokens are identical.
  With q8_0 / q4_0 K/V that rounding moves an element to the neighbouring quantization level (a step of
  amax/127 or amax/8), measured 5e-3 (q8_0) and 5.5e-2 (q4_0) of the largest |logit| on the H100, and
  greedy tokens can part: teacher-forced on the lone greedy tokens, the bound of the int8 case below.
* The default "cuda" (int8 activations on both sides): a lone step quantizes x·norm_w and applies
  1/rms to the finished dot products, the batched step quantizes the normalized row, so a value near
  a rounding boundary can take the neighbouring int8 level, and such a difference grows through the
  layers as int8 noise does. Teacher-forced on the lone sequence's greedy tokens: top-1 agrees in
  >= 90% of the steps, mean KL(alone || batched) < 5e-3 (a quarter of test_cuda.py's bound for int8
  against fp32 activations), logits within 0.1 of the largest |logit| (H100: 94-97%, 2.5e-3-2.7e-3,
  4.6e-2-6.4e-2). The int8 tensor-core rows (from 9 rows) and the dp4a rows quantize the same
  normalized rows alike; only float summation order differs, which again moves boundary values:
  the same bounds, teacher-forced on the dp4a rows' greedy tokens.
* Graph replay (the default) and plain launches (HEADKV_BATCH_GRAPH=0), and the attention as one
  launch for all sequences (the default) or one per sequence (HEADKV_BATCH_ATTN=0), give the same
  logits bit for bit; the cuBLAS path (the default from 32 rows; HEADKV_BATCH_GEMM=1 from 9, =0 never) in
  cuda-fp32 within 2e-3 of the largest |logit| of the matvec path.
"""
import numpy as np
import pytest

import headkv

pytestmark = pytest.mark.gpu

N_CTX = 1024
PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away, there lived a", "def fibonacci(n):",
           "The capital of France is", "List three colors, one per line, and explain each of them briefly:",
           "Water boils at a temperature of", "In 1492, Columbus sailed", "My favourite food is"]
# Budgets below the essay prompts' lengths (about 60 to 500 tokens): the compressed methods keep a
# part of each prompt, a different part per head.
KV = {"full": {}, "headkv": dict(kv_method="headkv", kv_budget=32, max_new_tokens=64),
      "snapkv": dict(kv_method="snapkv", kv_budget=32, max_new_tokens=64),
      # quantized caches: each sequence's own block types through the batched store and attention
      "full-q8_0": dict(type_k="q8_0", type_v="q8_0"),
      "headkv-q4_0": dict(kv_method="headkv", kv_budget=32, max_new_tokens=64, type_k="q4_0", type_v="q4_0")}
ESSAY_CHARS = [300, 2200, 900, 1500, 600]


@pytest.fixture(scope="module")
def essay_texts(essays):
    return [essays[i][:n] for i, n in enumerate(ESSAY_CHARS)]
REL = 2e-3  # |batched - alone| <= REL * max |alone logit| (matching activations)
INT8_KL, INT8_REL = 5e-3, 0.1  # two int8 roundings of one row (module docstring)


def _model(path, device, **kv):
    return headkv.Model(path, n_ctx=N_CTX, n_threads=2, device=device, **kv)


def _alone(path, device, prompt, n, forced=None, **kv):
    """Logits before each of n tokens of the sequence alone; the tokens are its greedy ones, or
    `forced` (teacher forcing)."""
    m = _model(path, device, **kv)
    m.eval(prompt)
    toks, logits = [], []
    for s in range(n):
        lg = m.logits().copy()
        logits.append(lg)
        toks.append(int(np.argmax(lg)) if forced is None else forced[s])
        m.eval([toks[-1]])
    return toks, logits


def _kl(p_logits, q_logits):
    p = np.exp(p_logits - p_logits.max())
    p /= p.sum()
    q = np.exp(q_logits - q_logits.max())
    q /= q.sum()
    return float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))


def _run_group(g, prompts, lengths, joins, forced=None):
    """Decodes the sequences in group g: sequence i joins before step joins[i] and leaves once it has
    lengths[i] tokens; each step appends every member's greedy token (or forced[i][s]). Returns each
    sequence's tokens and the logits before each."""
    n = len(prompts)
    got = {i: [] for i in range(n)}
    logits = {i: [] for i in range(n)}
    step = 0
    while any(len(got[i]) < lengths[i] for i in range(n)):
        for i in range(n):
            if joins[i] == step:
                g.add(100 + i, prompts[i])
                logits[i].append(g.logits(100 + i))
        ids, toks = [], []
        for i in range(n):
            if (100 + i) not in g.ids:
                continue
            t = int(np.argmax(logits[i][-1])) if forced is None else forced[i][len(got[i])]
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
    return got, logits


def _forced_agreement(g, path, device, prompts, kv, rel=False):
    """Group g decodes the prompts teacher-forced on each sequence's lone greedy tokens: the steps where
    the batched top-1 equals the lone one, and KL(alone || batched) of every step (rel: also the
    largest |batched - alone| / max |alone| of any step)."""
    refs = [_alone(path, device, p, n, **kv) for p, n in zip(prompts, LENGTHS)]
    _, logits = _run_group(g, prompts, LENGTHS, JOINS, forced=[r[0] for r in refs])
    pairs = [(a, b) for i in range(len(prompts)) for a, b in zip(logits[i], refs[i][1])]
    same, kls = sum(int(np.argmax(a) == np.argmax(b)) for a, b in pairs), [_kl(b, a) for a, b in pairs]
    if not rel:
        return same, kls
    return same, kls, max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in pairs)


# Five sequences of different prompt lengths: three start, two join after 3 and 6 steps, the first
# leaves after 18 tokens; every sequence decodes at least 16 tokens.
LENGTHS = [18, 24, 20, 22, 16]
JOINS = [0, 0, 0, 3, 6]


@pytest.mark.parametrize("method", ["full", "headkv", "snapkv", "full-q8_0", "headkv-q4_0"])
@pytest.mark.parametrize("device", ["cuda-fp32", "cuda"])
def test_group_decodes_as_alone(smollm2, essay_texts, method, device, monkeypatch):
    if device == "cuda":  # the lone sequences with fp32 activations too (read when a context is made)
        monkeypatch.setenv("HEADKV_MATVEC", "fp32")
    kv = KV[method]
    base = _model(smollm2, device, **kv)
    prompts = [base.tokenize(p) for p in essay_texts]
    assert len({len(p) for p in prompts}) == 5 and min(map(len, prompts)) > 2 * 32
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, device=device)
    assert g.device == device and g.scratch_bytes == 0
    if "type_k" in kv:  # q8_0 / q4_0 K/V: teacher-forced on the lone greedy tokens
        same, kls = _forced_agreement(g, smollm2, device, prompts, kv)
        print(f"{method} {device}: batched top-1 = alone in {same}/{sum(LENGTHS)} steps, mean KL {np.mean(kls):.2e}")
        assert same >= 0.9 * sum(LENGTHS) and np.mean(kls) < 0.02
        return
    got, logits = _run_group(g, prompts, LENGTHS, JOINS)
    assert g.scratch_bytes > 0
    worst = 0.0
    for i in range(5):
        ref, ref_logits = _alone(smollm2, device, prompts[i], LENGTHS[i], **kv)
        assert got[i] == ref, (method, device, i)
        for a, b in zip(logits[i], ref_logits):
            worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
    print(f"{method} {device}: max |batched - alone| / max |logit| = {worst:.2e}")
    assert worst <= REL, worst


@pytest.mark.parametrize("method", ["full", "headkv"])
def test_group_vs_int8_alone(smollm2, essay_texts, method, monkeypatch):
    """Default "cuda": the lone decode step and the batched one both quantize activations to int8
    (the batched rows after their RMSNorm); teacher-forced on the lone greedy tokens."""
    monkeypatch.delenv("HEADKV_MATVEC", raising=False)
    kv = KV[method]
    base = _model(smollm2, "cuda", **kv)
    prompts = [base.tokenize(p) for p in essay_texts]
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, device="cuda")
    same, kls, worst = _forced_agreement(g, smollm2, "cuda", prompts, kv, rel=True)
    total = sum(LENGTHS)
    print(f"{method}: batched top-1 = alone (int8) in {same}/{total} steps, mean KL {np.mean(kls):.2e}, "
          f"max |batched - alone| / max |logit| {worst:.2e}")
    assert same >= 0.9 * total and np.mean(kls) < INT8_KL and worst <= INT8_REL


def test_group_of_one_is_the_lone_step(smollm2, essay_texts, monkeypatch):
    """A step of one sequence is that sequence's own decode step (the default "cuda" precision, where the
    batched rows would round activations to int8 differently): its logits equal the lone run's bit for bit."""
    monkeypatch.delenv("HEADKV_MATVEC", raising=False)
    kv = KV["headkv"]
    base = _model(smollm2, "cuda", **kv)
    prompt = base.tokenize(essay_texts[0])
    toks, ref = _alone(smollm2, "cuda", prompt, 9, **kv)
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, device="cuda")
    g.add(0, prompt)
    assert np.array_equal(g.logits(0), ref[0])
    for s in range(8):
        assert np.array_equal(g.step([0], [toks[s]])[0], ref[s + 1]), s


def _lockstep(g, prompts, steps, forced=None):
    """All sequences join, then `steps` steps together; logits of every step. Each step feeds every
    row's greedy token, or forced[step] (teacher forcing on another run's greedy tokens)."""
    for i, p in enumerate(prompts):
        g.add(i, p)
    toks = [int(np.argmax(g.logits(i))) for i in range(len(prompts))]
    out = []
    for s in range(steps):
        lg = g.step(list(range(len(prompts))), forced[s] if forced else toks)
        out.append(lg)
        toks = [int(np.argmax(r)) for r in lg]
    return out


def _forced_on(g, prompts, ref):
    """Group g takes the prompts, then steps teacher-forced on the greedy tokens of ref (_lockstep's
    logits from the same prompts: its first step was fed the prompts' greedy tokens, which come from
    the same prefill); g's logits of every step."""
    for i, p in enumerate(prompts):
        g.add(i, p)
    toks = [int(np.argmax(g.logits(i))) for i in range(len(prompts))]
    out = []
    for lg in ref:
        out.append(g.step(list(range(len(prompts))), toks))
        toks = [int(np.argmax(r)) for r in lg]
    return out


def _agreement(ref, got):
    """Rows and steps where got's top-1 equals ref's, and KL(ref || got) of each."""
    pairs = [(x, y) for a, b in zip(ref, got) for x, y in zip(a, b)]
    return sum(int(np.argmax(x) == np.argmax(y)) for x, y in pairs), [_kl(x, y) for x, y in pairs]


def test_graph_replay_equals_plain_launches(smollm2, essay_texts, monkeypatch):
    base = _model(smollm2, "cuda", **KV["headkv"])
    prompts = [base.tokenize(p) for p in essay_texts + PROMPTS[:1]]
    monkeypatch.delenv("HEADKV_BATCH_GRAPH", raising=False)
    a = _lockstep(headkv.SequenceGroup(base, n_ctx=N_CTX, device="cuda"), prompts, 12)
    monkeypatch.setenv("HEADKV_BATCH_GRAPH", "0")
    b = _lockstep(headkv.SequenceGroup(base, n_ctx=N_CTX, device="cuda"), prompts, 12)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("method", ["headkv", "full-q8_0"])
def test_one_attention_launch_equals_per_sequence(smollm2, essay_texts, method, monkeypatch):
    """The batched step's RoPE/store and attention as one launch per layer for all sequences (the
    default) or one per sequence (HEADKV_BATCH_ATTN=0): the same kernels' code over the same
    arguments, so the same logits bit for bit, with and without graphs."""
    base = _model(smollm2, "cuda", **KV[method])
    prompts = [base.tokenize(p) for p in essay_texts + PROMPTS[:3]]
    runs = []
    for attn, graph in (("1", "1"), ("0", "1"), ("1", "0")):
        monkeypatch.setenv("HEADKV_BATCH_ATTN", attn)
        monkeypatch.setenv("HEADKV_BATCH_GRAPH", graph)
        runs.append(_lockstep(headkv.SequenceGroup(base, n_ctx=N_CTX, device="cuda"), prompts, 10))
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            assert np.array_equal(x, y)


def test_tensor_core_rows_match_the_matvec_rows(smollm2, monkeypatch):
    """20 sequences in "cuda": from 9 rows the linear layers run on int8 tensor cores (the default) or
    on the dp4a matvecs 8 rows at a time (HEADKV_BATCH_MMQ=0), both over the same int8 activations:
    teacher-forced on the dp4a rows' greedy tokens, within the bounds of two int8 roundings (module
    docstring); the first step, from the same prompts' caches, within INT8_REL."""
    base = _model(smollm2, "cuda")
    prompts = [base.tokenize(PROMPTS[i % 8] + " " * (i // 8)) for i in range(20)]
    monkeypatch.setenv("HEADKV_BATCH_MMQ", "0")
    ref = _lockstep(headkv.SequenceGroup(base, n_ctx=64, device="cuda"), prompts, 8)
    monkeypatch.delenv("HEADKV_BATCH_MMQ", raising=False)
    got = _forced_on(headkv.SequenceGroup(base, n_ctx=64, device="cuda"), prompts, ref)
    same, kls = _agreement(ref, got)
    first = max(float(np.max(np.abs(x - y)) / np.max(np.abs(x))) for x, y in zip(ref[0], got[0]))
    print(f"20 rows: tensor cores vs matvec rows: top-1 {same}/160, mean KL {np.mean(kls):.2e}, "
          f"first step {first:.2e}")
    assert same >= 0.9 * 160 and np.mean(kls) < INT8_KL and first <= INT8_REL


def test_gemm_path_and_large_batches(smollm2, monkeypatch):
    """70 sequences (two slices of at most 64 rows): the last row within REL of it alone on the matvec
    path (HEADKV_BATCH_GEMM=0); the default (cuBLAS from 32 rows, fp32 in cuda-fp32) and
    HEADKV_BATCH_GEMM=1 (from 9 rows) within REL of the matvec path."""
    base = _model(smollm2, "cuda-fp32")
    prompts = [base.tokenize(PROMPTS[i % 8] + " " * (i // 8)) for i in range(70)]
    runs = {}
    for setting in ("0", None, "1"):
        if setting is None:
            monkeypatch.delenv("HEADKV_BATCH_GEMM", raising=False)
        else:
            monkeypatch.setenv("HEADKV_BATCH_GEMM", setting)
        runs[setting] = _lockstep(headkv.SequenceGroup(base, n_ctx=64, device="cuda-fp32"), prompts, 4)
    a = runs["0"]
    ref, ref_logits = _alone(smollm2, "cuda-fp32", prompts[69], 5)
    worst = max(float(np.max(np.abs(x[69] - r)) / np.max(np.abs(r))) for x, r in zip(a, ref_logits[1:]))
    for setting in (None, "1"):
        gemm = max(float(np.max(np.abs(x - y)) / np.max(np.abs(x))) for x, y in zip(a, runs[setting]))
        print(f"70 rows: last row vs alone {worst:.2e}; GEMM ({setting or 'default'}) vs matvec {gemm:.2e}")
        assert gemm <= REL
    assert worst <= REL


def test_gemm_default_in_the_fast_precision(smollm2, monkeypatch):
    """40 sequences in "cuda" without the tensor-core rows (HEADKV_BATCH_MMQ=0; the default for weight types
    they do not take: from 32 rows fp16 cuBLAS GEMMs on dequantized weights)
    teacher-forced on the matvec path's greedy tokens (HEADKV_BATCH_GEMM=0: int8 activations): the same
    top-1 in >= 90% of the rows and steps, mean KL(matvec || GEMM) < 0.02 (test_cuda.py's bound for
    int8 against fp32 activations)."""
    base = _model(smollm2, "cuda")
    prompts = [base.tokenize(PROMPTS[i % 8] + " " * (i // 8)) for i in range(40)]
    monkeypatch.setenv("HEADKV_BATCH_MMQ", "0")  # (the tensor-core rows would take Q4_1 before cuBLAS)
    monkeypatch.setenv("HEADKV_BATCH_GEMM", "0")
    ref = _lockstep(headkv.SequenceGroup(base, n_ctx=64, device="cuda"), prompts, 6)
    monkeypatch.delenv("HEADKV_BATCH_GEMM", raising=False)
    got = _forced_on(headkv.SequenceGroup(base, n_ctx=64, device="cuda"), prompts, ref)
    same, kls = _agreement(ref, got)
    print(f"40 rows, fast precision: GEMM vs matvec top-1 {same}/{6 * 40}, mean KL {np.mean(kls):.2e}")
    assert same >= 0.9 * 6 * 40 and np.mean(kls) < 0.02


def test_group_admission_and_errors(smollm2):
    base = _model(smollm2, "cuda")
    a = base.tokenize(PROMPTS[0])
    one = _model(smollm2, "cuda").kv_bytes()  # the full cache of n_ctx = N_CTX
    g = headkv.SequenceGroup(base, n_ctx=N_CTX, device="cuda", kv_limit_bytes=2 * one + one // 2)
    g.add(1, a)
    g.add(2, a)
    with pytest.raises(headkv.OutOfMemoryError, match="refused"):
        g.add(3, a)
    assert sorted(g.ids) == [1, 2] and g.kv_bytes() == 2 * one
    g.remove(1)
    g.add(3, a)  # room again
    assert sorted(g.ids) == [2, 3]
    t = int(np.argmax(g.logits(2)))
    n2 = g.n_past(2)
    with pytest.raises(headkv.InvalidArgumentError, match="twice"):
        g.step([2, 2], [t, t])
    with pytest.raises(headkv.InvalidArgumentError, match="outside the vocabulary"):
        g.step([2, 3], [t, 10 ** 7])
    with pytest.raises(headkv.InvalidArgumentError, match="no sequence with id 9"):
        g.step([2, 9], [t, t])
    assert g.n_past(2) == n2
    # compressed: refused from the prompt's plan, before its prefill
    kv = KV["headkv"]
    hk = _model(smollm2, "cuda", **kv)
    c = headkv.SequenceGroup(hk, n_ctx=N_CTX, device="cuda")
    c.add(1, a)
    per = c.kv_bytes(1)
    c2 = headkv.SequenceGroup(hk, n_ctx=N_CTX, device="cuda", kv_limit_bytes=per + per // 2)
    c2.add(1, a)
    with pytest.raises(headkv.OutOfMemoryError, match="compressed KV"):
        c2.add(2, a)
    assert c2.ids == [1] and c2.kv_bytes() == per
    # a full cache larger than the device: refused before anything is allocated
    free, total, _ = headkv._core.cuda_memory()
    big_ctx = int(total // (30 * 3 * (4 * 64 + 4))) + 1024
    big = headkv.SequenceGroup(base, n_ctx=big_ctx, device="cuda")
    with pytest.raises(headkv.OutOfMemoryError):
        big.add(1, a)
    assert len(big) == 0 and big.kv_bytes() == 0


@pytest.mark.parametrize("method", ["full", "headkv"])
def test_pool_on_gpu_matches_alone(smollm2, method):
    """Eight concurrent greedy requests through SequencePool on cuda-fp32 (batched steps over sibling
    contexts sharing the device weights) return what each returns alone."""
    kv = KV[method]
    alone = headkv.Llama(smollm2, n_ctx=N_CTX, device="cuda-fp32", verbose=False, **kv)
    jobs = [(p, 6 + 3 * i) for i, p in enumerate(PROMPTS)]
    ref = [alone.create_completion(p, max_tokens=n, temperature=0)["choices"][0]["text"] for p, n in jobs]
    with headkv.SequencePool(smollm2, 8, n_ctx=N_CTX, device="cuda-fp32", **kv) as pool:
        out = pool.run([(pool.prompt_tokens(p), (p, n)) for p, n in jobs],
                       lambda m, j: m.create_completion(j[0], max_tokens=j[1], temperature=0))
        st = pool.stats()
    assert [o["choices"][0]["text"] for o in out] == ref
    assert st["batched_steps"] > 0 and st["batched_tokens"] > st["batched_steps"]
