"""Aggregate decode throughput of concurrent requests through headkv.SequencePool (CPU): one request
alone vs N at once, with batched decode steps (batch=True) and with the thread path (batch=False,
each sequence its own context and threads). Not a test; prints tokens/s.

    python bench/batch_decode.py [--model PATH] [--threads 2] [--n 8] [--tokens 48] [--repeat 2]
"""
import argparse
import time

import headkv

PROMPTS = ["Write a short story about a robot who learns to paint.", "Explain how a rainbow forms.",
           "List five uses of a paperclip.", "What is the capital of Australia, and why?",
           "Describe the water cycle in simple terms.", "Give three tips for learning a language.",
           "Summarize the plot of Romeo and Juliet.", "Why is the sky blue?"]


def run(path, n_req, batch, threads, tokens):
    with headkv.SequencePool(path, n_req, n_ctx=512, n_threads=threads, batch=batch) as pool:
        convs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n_req)]
        pool.create_chat_completions(convs[:1], max_tokens=2, temperature=0)  # warm-up
        t = time.perf_counter()
        out = pool.create_chat_completions(convs, max_tokens=tokens, temperature=0, stop=[])
        dt = time.perf_counter() - t
    n = sum(o["usage"]["completion_tokens"] for o in out)
    return n / dt, n, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    path = a.model or headkv.example_model()
    for r in range(a.repeat):
        one = run(path, 1, True, a.threads, a.tokens)
        bat = run(path, a.n, True, a.threads, a.tokens)
        thr = run(path, a.n, False, a.threads, a.tokens)
        print(f"run {r + 1}: 1 request {one[0]:.1f} t/s | {a.n} concurrent batched {bat[0]:.1f} t/s "
              f"({bat[0] / one[0]:.2f}x) | {a.n} concurrent thread path {thr[0]:.1f} t/s ({thr[0] / one[0]:.2f}x)"
              f"  [tokens {one[1]}/{bat[1]}/{thr[1]}]", flush=True)


if __name__ == "__main__":
    main()
