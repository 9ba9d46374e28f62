"""llama.cpp's q8_0 / q4_0 blocks in NumPy, written from ggml-quants.c's reference C
(quantize_row_q8_0_ref, quantize_row_q4_0_ref, dequantize_row_q8_0 / _q4_0), independently of headkv's C++:
the oracle for the bytes the KV cache stores.
  q8_0 block (34 bytes): f16 d = max|x| / 127, then 32 int8 q = roundf(x / d); value d * q.
  q4_0 block (18 bytes): f16 d = m / -8 (m: the first value of largest magnitude, with its sign), then 16 bytes
  whose low nibbles are elements 0..15 and high nibbles 16..31, q = min(15, (int8)(x / d + 8.5)); value d * (q - 8).
All arithmetic in float32, as the C code does it.
"""
import numpy as np

BLOCK_BYTES = {"q8_0": 34, "q4_0": 18}


def _inverse(d):
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def q8_0_quantize(x):
    b = np.asarray(x, np.float32).reshape(-1, 32)
    d = (np.abs(b).max(1) / np.float32(127)).astype(np.float32)
    v = (b * _inverse(d)[:, None]).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf: half away from zero
    out = np.empty((len(b), 34), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def q4_0_quantize(x):
    b = np.asarray(x, np.float32).reshape(-1, 32)
    # the first element of largest magnitude, with its sign; +0.0 for an all-zero block (the C code starts
    # from max = 0.0f, so d = 0.0f / -8 = -0.0, stored as f16 0x8000)
    amax = np.abs(b).max(1)
    m = np.where(amax > 0, b[np.arange(len(b)), np.abs(b).argmax(1)], np.float32(0)).astype(np.float32)
    d = (m / np.float32(-8)).astype(np.float32)
    v = (b * _inverse(d)[:, None]).astype(np.float32) + np.float32(8.5)
    nib = np.minimum(15, np.trunc(v).astype(np.int64)).astype(np.uint8)
    out = np.empty((len(b), 18), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = nib[:, :16] | (nib[:, 16:] << 4)
    return out.tobytes()


QUANTIZE = {"q8_0": q8_0_quantize, "q4_0": q4_0_quantize}


def dequantize(t, data):
    """Values of the blocks in `data` (bytes of type t: q8_0, q4_0, f16 or f32) as float32."""
    if t == "f32":
        return np.frombuffer(data, np.float32).copy()
    if t == "f16":
        return np.frombuffer(data, np.float16).astype(np.float32)
    a = np.frombuffer(data, np.uint8).reshape(-1, BLOCK_BYTES[t])
    d = a[:, :2].copy().view(np.float16).astype(np.float32)
    if t == "q8_0":
        q = a[:, 2:].view(np.int8).astype(np.float32)
    else:
        q = np.concatenate([a[:, 2:] & 0xF, a[:, 2:] >> 4], 1).astype(np.float32) - 8
    return (d * q).reshape(-1)
