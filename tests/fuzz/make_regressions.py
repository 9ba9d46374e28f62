#!/usr/bin/env python3
"""Writes tests/fuzz/regressions/{gguf,scores}: small hostile inputs that must fail cleanly (a typed
headkv.Error) or load and run — never crash. Replayed by tests/test_hardening.py and, under
ASan+UBSan, by .ci/sanitize. Fuzzer crashers are added to the same folders by hand (named
crash-<what>). Re-run this script after changing it; the files are committed.

    python tests/fuzz/make_regressions.py
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

STR, ARR, U32, I32, U64, F32, BOOL, U8 = 8, 9, 4, 5, 10, 6, 7, 0


def s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def header(kvs, tensors=(), version=3, n_tensors=None, n_kv=None, pad_to=32, data=b""):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)
    for key, t, val in kvs:
        out += s(key) + struct.pack("<I", t) + val
    for name, dims, ttype, off in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, off)
    if pad_to:
        out += bytes(-len(out) % pad_to)
    return out + data


def arch():
    return ("general.architecture", STR, s("llama"))


def gguf_cases(out: Path):
    from make_seeds import tiny
    cases = {
        "array_len_2e61.gguf": header([arch(), ("x", ARR, struct.pack("<IQ", U32, 1 << 61))]),
        "string_array_2e40.gguf": header([("x", ARR, struct.pack("<IQ", STR, 1 << 40))]),
        "nested_array_2e50.gguf": header([("x", ARR, struct.pack("<IQ", ARR, 1 << 50))]),
        "nested_depth.gguf": header([("x", ARR, struct.pack("<IQ", ARR, 1) * 6 + struct.pack("<IQ", U8, 0))]),
        "kv_count_max.gguf": header([], n_kv=(1 << 64) - 1),
        "tensor_count_2e63.gguf": header([], n_tensors=(1 << 63) + 5),
        "string_len_max.gguf": header([("x", STR, struct.pack("<Q", (1 << 64) - 1))]),
        "bad_value_type.gguf": header([("x", 13, b"")]),
        "bad_array_type.gguf": header([("x", ARR, struct.pack("<IQ", 99, 1))]),
        "bool_2.gguf": header([("x", BOOL, b"\x02")]),
        "alignment_0.gguf": header([("general.alignment", U32, struct.pack("<I", 0))]),
        "alignment_3.gguf": header([("general.alignment", U32, struct.pack("<I", 3))]),
        "alignment_2e40.gguf": header([("general.alignment", U64, struct.pack("<Q", 1 << 40))]),
        "dims_overflow.gguf": header([arch()], [("t", [1 << 40, 1 << 40, 1 << 40], 0, 0)]),
        "dims_zero.gguf": header([arch()], [("t", [0], 0, 0)]),
        "dims_5.gguf": header([arch()], [("t", [1, 1, 1, 1, 1], 0, 0)]),
        "tensor_type_huge.gguf": header([arch()], [("t", [32], 0xFFFFFFFF, 0)]),
        "tensor_offset_max.gguf": header([arch()], [("t", [8], 0, (1 << 64) - 32)]),
        "tensor_partial_block.gguf": header([arch()], [("t", [33], 2, 0)], data=bytes(64)),
        "duplicate_key.gguf": header([arch(), arch()]),
        "duplicate_tensor.gguf": header([arch()], [("t", [8], 0, 0), ("t", [8], 0, 32)], data=bytes(64)),
        "version_1.gguf": header([], version=1),
        "hparams_zero_heads.gguf": header([arch(), ("llama.embedding_length", U32, struct.pack("<I", 64)),
                                           ("llama.block_count", U32, struct.pack("<I", 1)),
                                           ("llama.attention.head_count", U32, struct.pack("<I", 0)),
                                           ("llama.feed_forward_length", U32, struct.pack("<I", 64))]),
        "hparams_huge.gguf": header([arch(), ("llama.embedding_length", U64, struct.pack("<Q", (1 << 63) + 1)),
                                     ("llama.block_count", I32, struct.pack("<i", -1)),
                                     ("llama.attention.head_count", U32, struct.pack("<I", 1 << 31)),
                                     ("llama.feed_forward_length", U32, struct.pack("<I", 64))]),
        "tokens_not_strings.gguf": header([("tokenizer.ggml.model", STR, s("gpt2")),
                                           ("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", U32, 2) + bytes(8))]),
        "token_type_short.gguf": header([("tokenizer.ggml.model", STR, s("llama")),
                                         ("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 2) + s("a") + s("b")),
                                         ("tokenizer.ggml.token_type", ARR, struct.pack("<IQ", I32, 1) + bytes(4))]),
        "special_ids_out_of_range.gguf": header([
            ("tokenizer.ggml.model", STR, s("llama")),
            ("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 3) + s("<s>") + s("</s>") + s("\u2581a")),
            ("tokenizer.ggml.token_type", ARR, struct.pack("<IQ", I32, 3) + struct.pack("<3i", 99, -7, 3)),
            ("tokenizer.ggml.scores", ARR, struct.pack("<IQ", F32, 3) + struct.pack("<3f", float("nan"), float("inf"), -1e38)),
            ("tokenizer.ggml.bos_token_id", I32, struct.pack("<i", -5)),
            ("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 1 << 31)),
            ("tokenizer.ggml.unknown_token_id", U64, struct.pack("<Q", (1 << 64) - 1))]),
        "merges_malformed.gguf": header([
            ("tokenizer.ggml.model", STR, s("gpt2")),
            ("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 3) + s("a") + s("b") + s("") ),
            ("tokenizer.ggml.merges", ARR, struct.pack("<IQ", STR, 5) + s("ab") + s(" ") + s("a ") + s(" b") + s("a b c"))]),
    }
    for name, data in cases.items():
        (out / name).write_bytes(data)
    # Real tiny models with hostile content: misaligned tensor data (alignment 1), NaN/inf weights
    # (NaN logits reach the sampler), token_embd rows != vocabulary size.
    tiny(out / "align1_f16.gguf", "bpe", "F16", alignment=1, n_layer=1)
    p = out / "nan_weights.gguf"
    tiny(p, "spm", "F16", n_layer=1)
    from gguf import GGUFReader
    r = GGUFReader(str(p))
    t = next(t for t in r.tensors if t.name == "token_embd.weight")
    raw = bytearray(p.read_bytes())
    start = int(t.data_offset)
    raw[start:start + int(t.n_bytes)] = np.full(int(t.n_elements), np.nan, np.float16).tobytes()
    o = next(t for t in r.tensors if t.name == "output_norm.weight")
    raw[int(o.data_offset):int(o.data_offset) + 8] = np.array([np.inf, -np.inf], np.float32).tobytes()
    p.write_bytes(bytes(raw))


def score_cases(out: Path):
    cases = {
        "official_far_key.json": json.dumps({"4095-4095": [1.0]}),
        "official_huge_key.json": json.dumps({"0-0": [1.0], "999999-999999": [1.0]}),
        "official_overflow_sum.json": json.dumps({"0-0": [1.7e308, 1.7e308], "0-1": [1.0]}),
        "official_key_forms.json": '{"-0-0": [1], "00-1": [1], "0--1": [1], "1-": [1], "+1-0": [1], "1-0x": [1]}',
        "headkv_huge_grid.json": json.dumps({"format": "headkv-scores", "version": 1,
                                             "model": {"architecture": "llama", "n_layer": 4096, "n_head": 4096,
                                                       "n_head_kv": 1, "fingerprint": "0"},
                                             "method": "R", "scores": []}),
        "headkv_bad_types.json": json.dumps({"format": "headkv-scores", "version": 1.5, "model": [],
                                             "method": 7, "scores": {}}),
        "headkv_version_huge.json": '{"format": "headkv-scores", "version": 1e300}',
        "headkv_big_scores.json": json.dumps({"format": "headkv-scores", "version": 1,
                                              "model": {"architecture": "llama", "n_layer": 2, "n_head": 4,
                                                        "n_head_kv": 2, "fingerprint": "0123456789abcdef"},
                                              "method": "R", "scores": [[1e308, 1e308, 1e308, 1e308], [0, 0, 0, 1e-320]]}),
        "deep_nesting.json": "[" * 100000 + "]" * 100000,
        "deep_objects.json": '{"a":' * 5000 + "1" + "}" * 5000,
        "number_forms.json": "[1e99999, -1e99999, 1e-99999, 0.0000000000000000000000000001e-400, 123456789012345678901234567890]",
        "bad_numbers.json": "[01, 1., .5, -, 1e, 0x10, +1, Infinity]",
        "surrogates.json": '["\\ud800", "\\udc00\\ud800", "\\ud83d\\u0041"]',
        "truncated.json": '{"format": "headkv-scores", "scores": [[1, 2',
    }
    for name, text in cases.items():
        (out / name).write_text(text)
    (out / "invalid_utf8.json").write_bytes(b'{"0-0": [1], "\xff\xfe": [2], "\xed\xa0\x80": [3], "\xc3": [4]}')
    (out / "nul_bytes.json").write_bytes(b'{"0-0": [1]}\x00\x00')


def main():
    root = HERE / "regressions"
    (root / "gguf").mkdir(parents=True, exist_ok=True)
    (root / "scores").mkdir(parents=True, exist_ok=True)
    gguf_cases(root / "gguf")
    score_cases(root / "scores")
    for d in ("gguf", "scores"):
        files = sorted((root / d).iterdir())
        print(f"{d}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
