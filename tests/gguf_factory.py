"""Small GGUF files for tests, written with gguf-py: tiny random Llama models that reuse the
SmolLM2 vocabulary, and byte-level corruptions of real files."""
from __future__ import annotations

import functools
import os
import struct

import numpy as np


@functools.lru_cache(maxsize=4)
def _tokenizer_fields(src_path, _stamp):
    """(key, value, type, element type) of every tokenizer.* key of a GGUF. Read once per file
    version (_stamp: size and mtime) and process: gguf-py parses SmolLM2's 49k-token vocabulary in
    pure Python, seconds per read."""
    from gguf import GGUFReader
    from gguf.constants import GGUFValueType

    out = []
    for key, field in GGUFReader(src_path).fields.items():
        if key.startswith("tokenizer."):
            vt = field.types[0]
            out.append((key, field.contents(), vt, field.types[1] if vt == GGUFValueType.ARRAY else None))
    return tuple(out)


def copy_tokenizer(writer, src_path, n_vocab=None, pre=None):
    """Copies every tokenizer.* key of a GGUF into a GGUFWriter; with n_vocab, only the first n_vocab
    tokens, the merges among them, and the special-token ids below n_vocab (a small vocabulary keeps
    a file quick to parse for transformers' GGUF loader, which reads it in pure Python); `pre` replaces
    tokenizer.ggml.pre (the pre-tokenizer's name)."""
    from gguf.constants import GGUFValueType

    st = os.stat(src_path)
    fields = _tokenizer_fields(os.path.abspath(os.fspath(src_path)), (st.st_size, st.st_mtime_ns))
    tokens = next(vals for key, vals, _, _ in fields if key == "tokenizer.ggml.tokens")
    n_vocab = len(tokens) if n_vocab is None else min(n_vocab, len(tokens))
    kept = set(tokens[:n_vocab])
    for key, vals, vt, et in fields:
        if n_vocab < len(tokens):
            if key == "tokenizer.ggml.merges":
                vals = [m for m in vals if all(x in kept for x in (*m.split(" ", 1), m.replace(" ", "", 1)))]
            elif vt == GGUFValueType.ARRAY and len(vals) == len(tokens):
                vals = vals[:n_vocab]
            elif key.endswith("_token_id") and vals >= n_vocab:
                continue
        if key == "tokenizer.ggml.pre" and pre is not None:
            vals = pre
        if vt == GGUFValueType.ARRAY:
            writer.add_array(key, vals) if et == GGUFValueType.STRING else writer.add_key_value(key, vals, vt, sub_type=et)
        else:
            writer.add_key_value(key, vals, vt)
    return n_vocab


def write_tiny_llama(path, vocab_src, *, arch="llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
                     wtype="F32", seed=0, extra=None, alignment=None, tied=True, types=None, kscale=None,
                     n_vocab=None, head_dim=None, sliding_window=None, extra_tensors=None, pre=None):
    """A random-weight GGUF of a llama-block architecture (arch "llama", "qwen2" with Q/K/V biases,
    "qwen3" with per-head q/k norms; "gemma2" / "gemma3" with post-norms, `sliding_window` and, for
    gemma2, logit soft-capping (50 / 30), for gemma3 q/k norms; `head_dim` other than n_embd/n_head is
    written as key_length) with SmolLM2's vocabulary (its first `n_vocab` tokens if given). `wtype` is a gguf-py
    GGMLQuantizationType name for the 2-D weights (quantized with gguf.quants where possible);
    `types` maps a tensor name part ("attn_v", "ffn_down", ...) to another type for those tensors;
    `kscale` gives K-quant weights centred values of about that super-block scale (random_kquant)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    if alignment:
        w.add_custom_alignment(alignment)
    n_vocab = copy_tokenizer(w, vocab_src, n_vocab, pre)
    w.add_block_count(n_layer)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if sliding_window:
        w.add_sliding_window(sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    for k, v in (extra or {}).items():
        w.add_key_value(k, v[0], v[1])
    hd = head_dim or n_embd // n_head
    if head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)

    def mat(name, rows, cols):
        wt = next((t for part, t in (types or {}).items() if part in name), wtype)
        qt = gguf.GGMLQuantizationType[wt]
        a = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, a.astype(np.float16))
        elif wt in _K_LAYOUT:
            q = random_kquant(rows, cols, wt, rng, **({"scale": kscale, "centered": True} if kscale else {}))
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)
        else:
            q = gguf.quants.quantize(a, qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)

    def vec(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    for name, a in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(a, dtype=np.float32))
    mat("token_embd.weight", n_vocab, n_embd)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        if arch == "phi3":  # fused: Q, K, V rows in one tensor
            mat(p + "attn_qkv.weight", (n_head + 2 * n_head_kv) * hd, n_embd)
        else:
            mat(p + "attn_q.weight", n_head * hd, n_embd)
            mat(p + "attn_k.weight", n_head_kv * hd, n_embd)
            mat(p + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(p + "attn_output.weight", n_embd, n_head * hd)
        if arch == "qwen2":
            for part, n in (("attn_q", n_head * hd), ("attn_k", n_head_kv * hd), ("attn_v", n_head_kv * hd)):
                w.add_tensor(p + part + ".bias", (0.1 * rng.standard_normal(n)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            vec(p + "attn_q_norm.weight", hd)
            vec(p + "attn_k_norm.weight", hd)
        if arch in ("gemma2", "gemma3"):
            vec(p + "post_attention_norm.weight", n_embd)
            vec(p + "post_ffw_norm.weight", n_embd)
        if arch == "phi3":  # fused: gate rows, then up rows
            mat(p + "ffn_up.weight", 2 * n_ff, n_embd)
        else:
            mat(p + "ffn_gate.weight", n_ff, n_embd)
            mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tensor_info_positions(path):
    """{name: (byte position of its type field, byte position of its offset field)}."""
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        type_pos = t.field.offset + 8 + len(t.name.encode()) + 4 + 8 * len(t.shape)
        out[t.name] = (type_pos, type_pos + 4)
    return out


def patch(path, pos, fmt, value):
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack(fmt, value))


_K_LAYOUT = {  # type name: (block bytes, [(byte offset of an fp16 scale field), ...])
    "Q4_K": (144, [0, 2]),
    "Q5_K": (176, [0, 2]),
    "Q6_K": (210, [208]),
}


def random_kquant(rows, cols, name, rng, scale=2e-3, centered=False):
    """Random raw K-quant blocks (gguf-py cannot quantize K types) with small finite fp16 scales.
    centered: Q4_K / Q5_K values d*sc*q - dmin*m with m = sc / 2 and dmin = 2 d (middle q), so the
    weights have mean ~0 like a real model's (random mins make every weight positive)."""
    nbytes, scale_offsets = _K_LAYOUT[name]
    nb = cols // 256
    raw = rng.integers(0, 256, size=(rows, nb, nbytes), dtype=np.uint8)
    if centered:  # about the same weight spread for every type (Q5_K: q up to 31, Q6_K: |sc| up to 128)
        scale /= {"Q4_K": 1, "Q5_K": 2, "Q6_K": 8}[name]
    for off in scale_offsets:
        d = (rng.random((rows, nb)) * scale + scale / 4).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, nb, 2)
    if centered and name in ("Q4_K", "Q5_K"):
        # even 6-bit scales sc_j, mins m_j = sc_j / 2 (unlike sc, so a kernel that swaps them fails)
        # and dmin = 2 d (middle q): d*sc*q - dmin*m = d*sc*(q - middle)
        sc = rng.integers(1, 32, size=(rows, nb, 8)).astype(np.uint8) * 2
        m = sc // 2
        raw[:, :, 4:8] = (sc[..., 0:4] & 0x3F) | ((sc[..., 4:8] >> 4) << 6)
        raw[:, :, 8:12] = (m[..., 0:4] & 0x3F) | ((m[..., 4:8] >> 4) << 6)
        raw[:, :, 12:16] = (sc[..., 4:8] & 0xF) | ((m[..., 4:8] & 0xF) << 4)
        d = raw[:, :, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = (d * 2 * (7.5 if name == "Q4_K" else 15.5)).astype(np.float16)
        raw[:, :, 2:4] = dmin.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * nbytes)
