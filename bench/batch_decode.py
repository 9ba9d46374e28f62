"""Aggregate decode throughput of concurrent sequences. Not a test.

CPU (default): requests through headkv.SequencePool, one request alone vs N at once, with batched
decode steps (batch=True) and with the thread path (batch=False, each sequence its own context and
threads); prints tokens/s.

    python bench/batch_decode.py [--model PATH] [--threads 2] [--n 8] [--tokens 48] [--repeat 2]

Group mode (--device cuda or cuda-fp32, or --group on the CPU): headkv.SequenceGroup on the device, for the full cache and for
--kv-method/--kv-budget (e.g. headkv 1024). Per KV configuration: one sequence alone (a plain Model,
the single-context decode graph), then sequences of --prompt-len random tokens added to one group
until --fit-max are in or the device (or the KV limit) refuses one (OutOfMemory: that count is how
many fit), then --steps timed batched steps over the first B sequences for each B of --seqs that
fit. One JSON line per measurement:
  {"mode": "alone" | "group" | "fit", "kv": "full" | "<method>-<budget>", "seqs": B, "tps": aggregate
   generated tokens/s (host argmax of every row included, as a greedy server does), "step_ms",
   "speedup_vs_alone", "kv_bytes_per_seq", "batch_gemm" (HEADKV_BATCH_GEMM=1: cuBLAS from 9 rows),
   ...}

    python bench/batch_decode.py --device cuda --model llama3-8b-q4_0.gguf --prompt-len 32768 \\
        --seqs 1,8,32 --steps 32 --kv-method headkv --kv-budget 1024 --fit-max 64
"""
import argparse
import gc
import json
import os
import tempfile
import time

import numpy as np

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


def cpu_main(a, path):
    for r in range(a.repeat):
        one = run(path, 1, True, a.threads, a.tokens)
        bat = run(path, a.n, True, a.threads, a.tokens)
        thr = run(path, a.n, False, a.threads, a.tokens)
        print(f"run {r + 1}: 1 request {one[0]:.1f} t/s | {a.n} concurrent batched {bat[0]:.1f} t/s "
              f"({bat[0] / one[0]:.2f}x) | {a.n} concurrent thread path {thr[0]:.1f} t/s ({thr[0] / one[0]:.2f}x)"
              f"  [tokens {one[1]}/{bat[1]}/{thr[1]}]", flush=True)


# ---- group mode: SequenceGroup (the GPU; the CPU with --group)

def random_scores(path, seed=0):
    """A head-score file of random scores for the model's shape (a synthetic model has no shipped
    one; the throughput and the memory do not depend on which heads get the budget)."""
    md = headkv.Model(path, n_ctx=8, n_threads=1).metadata
    arch = md["general.architecture"]
    L, H = int(md[f"{arch}.block_count"]), int(md[f"{arch}.attention.head_count"])
    rng = np.random.default_rng(seed)
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({f"{l}-{h}": list(rng.random(3)) for l in range(L) for h in range(H)}, f)
    f.close()
    return f.name


def emit(rec):
    print(json.dumps(rec), flush=True)


def alone_tps(path, device, threads, prompt, steps, kv):
    m = headkv.Model(path, n_ctx=len(prompt) + steps + 8, n_threads=threads, device=device, **kv)
    t = time.perf_counter()
    m.eval(prompt)
    prefill_s = time.perf_counter() - t
    tok = int(np.argmax(m.logits()))
    m.eval([tok])  # warm-up (the decode graph is captured with the prompt)
    t = time.perf_counter()
    for _ in range(steps):
        m.eval([tok])
        tok = int(np.argmax(m.logits()))
    dt = time.perf_counter() - t
    kvb = m.kv_bytes()
    del m
    gc.collect()
    return steps / dt, prefill_s, kvb


def group_config(a, path, name, kv, rng, n_vocab):
    seqs = sorted({int(s) for s in a.seqs.split(",")})
    fit_max = max(a.fit_max, seqs[-1])
    room = len(seqs) * (a.steps + 2) + 8  # decode steps each sequence may take over the sweep
    prompt_of = lambda: [int(t) for t in rng.integers(0, n_vocab, a.prompt_len)]  # noqa: E731
    base = dict(device=a.device, model=os.path.basename(path), kv=name, prompt_len=a.prompt_len, steps=a.steps,
                batch_gemm=os.environ.get("HEADKV_BATCH_GEMM") == "1",
                batch_graph=os.environ.get("HEADKV_BATCH_GRAPH") != "0")
    kv_seq = dict(kv, max_new_tokens=room) if kv else {}
    one, one_prefill, one_kv = alone_tps(path, a.device, a.threads, prompt_of(), a.steps, kv_seq)
    emit(dict(base, mode="alone", seqs=1, tps=round(one, 2), step_ms=round(1e3 / one, 3),
              prefill_s=round(one_prefill, 3), kv_bytes_per_seq=one_kv))
    model = headkv.Model(path, n_ctx=8, n_threads=1, device=a.device, **kv_seq)  # weights and KV config only
    g = headkv.SequenceGroup(model, n_ctx=a.prompt_len + room, n_threads=a.threads, device=a.device,
                             kv_limit_bytes=a.kv_limit)
    refused, add_s = None, []
    while len(g) < fit_max:
        t = time.perf_counter()
        try:
            g.add(len(g), prompt_of())
        except headkv.OutOfMemoryError as e:
            refused = str(e)
            break
        add_s.append(time.perf_counter() - t)
    n = len(g)
    free, total, held = headkv._core.cuda_memory()
    per = g.kv_bytes() // max(n, 1)
    emit(dict(base, mode="fit", seqs=n, limited_by="refused" if refused else "fit_max", refused=refused,
              kv_bytes_per_seq=per, kv_bytes_total=g.kv_bytes(), scratch_bytes=g.scratch_bytes,
              device_free=free, device_total=total, device_held=held,
              more_by_free_memory=int(free // per) if per and not refused else 0,
              prefill_s_mean=round(float(np.mean(add_s)), 3) if add_s else None))
    toks = {i: int(np.argmax(g.logits(i))) for i in g.ids}
    for B in seqs:
        if B > n:
            emit(dict(base, mode="group", seqs=B, fits=False, fit=n))
            continue
        ids = list(range(B))
        for s in range(a.steps + 2):  # two warm-up steps (the step's graph is captured at the first)
            if s == 2:
                t = time.perf_counter()
            out = g.step(ids, [toks[i] for i in ids])
            for r, i in enumerate(ids):
                toks[i] = int(np.argmax(out[r]))
        dt = time.perf_counter() - t
        tps = B * a.steps / dt
        emit(dict(base, mode="group", seqs=B, fits=True, tps=round(tps, 2), step_ms=round(1e3 * dt / a.steps, 3),
                  speedup_vs_alone=round(tps / one, 3), kv_bytes_per_seq=per, scratch_bytes=g.scratch_bytes))
    del g, model
    gc.collect()


def group_main(a, path):
    n_vocab = headkv.Model(path, n_ctx=8, n_threads=1).n_vocab
    rng = np.random.default_rng(a.seed)
    configs = [] if a.skip_full else [("full", {})]
    if a.kv_method and a.kv_method != "full":
        kv = dict(kv_method=a.kv_method, kv_budget=a.kv_budget)
        if a.kv_method == "headkv":
            try:
                from headkv.scores import shipped_scores
                kv["scores"] = a.scores or shipped_scores(path, "R2")
            except headkv.Error:
                kv["scores"] = random_scores(path)
        configs.append((f"{a.kv_method}-{a.kv_budget}", kv))
    for name, kv in configs:
        group_config(a, path, name, kv, rng, n_vocab)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu", help="cpu (SequencePool), cuda or cuda-fp32 (SequenceGroup)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--n", type=int, default=8, help="CPU: concurrent requests")
    ap.add_argument("--tokens", type=int, default=48, help="CPU: tokens per request")
    ap.add_argument("--repeat", type=int, default=2, help="CPU")
    ap.add_argument("--prompt-len", type=int, default=1024, help="GPU: tokens of each sequence's prompt")
    ap.add_argument("--seqs", default="1,8,32", help="GPU: batch sizes to time")
    ap.add_argument("--steps", type=int, default=32, help="GPU: timed steps per batch size")
    ap.add_argument("--fit-max", type=int, default=0, help="GPU: add sequences up to this many (default: max of --seqs)")
    ap.add_argument("--kv-limit", type=int, default=0, help="GPU: the group's KV byte limit (0: device memory only)")
    ap.add_argument("--kv-method", default="headkv", help="GPU: the compressed configuration beside the full cache")
    ap.add_argument("--kv-budget", type=int, default=1024)
    ap.add_argument("--scores", default=None, help="GPU, headkv: score file (default: shipped, else random)")
    ap.add_argument("--skip-full", action="store_true", help="GPU: only the compressed configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group", action="store_true", help="group mode on the CPU (the GPU devices always use it)")
    a = ap.parse_args()
    path = a.model or headkv.example_model()
    if a.device == "cpu" and not a.group:
        cpu_main(a, path)
    else:
        group_main(a, path)


if __name__ == "__main__":
    main()
