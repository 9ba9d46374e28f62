"""Reports from ``results.jsonl``: every example as CSV, means as JSON, Markdown tables (method x
budget per task and metric), and PNG plots (metric vs budget; NIAH depth x length heatmaps).
``ruler``: RULER and NIAH averages (means over subtasks) with query-aware / query-agnostic side by
side, and tables per subtask, value kind and length."""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from ..io import atomic_write, write_text_atomic
from ..kv import METHODS
from .metrics import mean
from .ruler import MODES as RULER_MODES, NIAH_SUBTASKS as RULER_NIAH, SUBTASKS as RULER_ORDER, VALUE_KINDS
from .runner import read_results

PRIMARY = {"niah": "accuracy", "reasoning-needles": "contains", "longbench": "score", "loogle": "rouge_l",
           "fidelity": "kl", "ruler": "ruler_aware"}


def _method_order(m):
    base, _, kv_type = m.partition("/")  # "headkv/q8_0": a method with another cache type
    return (METHODS.index(base) if base in METHODS else len(METHODS), kv_type)


def _method_label(r: dict) -> str:
    """A table row's method: the method, with its KV cache type when that is not f16."""
    t = r.get("kv_type") or "f16"
    return r["method"] if t == "f16" else f"{r['method']}/{t}"


def summarize(records: list[dict]) -> dict:
    """{task: {"configs": {config: {"method", "budget", "n", "kv_bytes", metric: mean}},
    "by_length": {config: {length: {metric: mean}}}, "cells": {config: {"L/d": accuracy}} (niah),
    "by_dataset": {dataset: {config: score}} (longbench)}"""
    by_task = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    out = {}
    for task, rs in by_task.items():
        # compare configs on the same examples: keep the examples every config has finished
        cfgs_of = defaultdict(set)
        for r in rs:
            cfgs_of[(r["id"], r.get("seed"))].add(r["config"])
        all_cfgs = {r["config"] for r in rs}
        complete = {k for k, v in cfgs_of.items() if v == all_cfgs}
        n_partial = len(cfgs_of) - len(complete)
        rs = [r for r in rs if (r["id"], r.get("seed")) in complete]
        if not rs:
            continue
        groups = defaultdict(list)
        for r in rs:
            groups[r["config"]].append(r)
        t = {"configs": {}, "by_length": {}, "n_examples": len(complete), "n_partial": n_partial}
        for cfg, g in groups.items():
            names = sorted({k for r in g for k in r["metrics"]})
            row = {"method": _method_label(g[0]), "budget": g[0]["budget"], "n": len(g),
                   "kv_bytes": mean(r["kv_bytes"] for r in g)}
            for k in names:
                row[k] = mean(r["metrics"][k] for r in g if k in r["metrics"])
            t["configs"][cfg] = row
            lens = defaultdict(list)
            for r in g:
                if r.get("length") is not None:
                    lens[int(r["length"])].append(r)
            t["by_length"][cfg] = {L: {k: mean(r["metrics"][k] for r in lr if k in r["metrics"]) for k in names}
                                   for L, lr in sorted(lens.items())}
        if task == "niah":
            cells = {}
            for cfg, g in groups.items():
                c = defaultdict(list)
                for r in g:
                    c[(int(r["length"]), float(r["depth"]))].append(r["metrics"]["accuracy"])
                cells[cfg] = {f"{L}/{d:g}": mean(v) for (L, d), v in sorted(c.items())}
            t["cells"] = cells
            kinds = defaultdict(lambda: defaultdict(list))
            for r in rs:
                if r.get("kind"):
                    kinds[r["kind"]][r["config"]].append(r["metrics"]["accuracy"])
            if kinds:   # number lengths (--niah-digits)
                t["by_kind"] = {k: {c: mean(v) for c, v in cs.items()}
                                for k, cs in sorted(kinds.items(), key=lambda kv: (len(kv[0]), kv[0]))}
        if task == "longbench":
            ds = defaultdict(lambda: defaultdict(list))
            for r in rs:
                ds[r["dataset"]][r["config"]].append(r["metrics"]["score"])
            t["by_dataset"] = {d: {c: mean(v) for c, v in cs.items()} for d, cs in sorted(ds.items())}
            for cfg, row in t["configs"].items():  # LongBench's average: over datasets, not examples
                row["score"] = mean(t["by_dataset"][d][cfg] for d in t["by_dataset"] if cfg in t["by_dataset"][d])
        if task == "ruler":
            _ruler_summary(t, groups)
        out[task] = t
    return out


def _ruler_summary(t: dict, groups: dict) -> None:
    """ruler: means per (mode, subtask); the RULER average (mean over subtasks) and NIAH average
    (mean over the niah_* subtasks) per mode replace the configs' example means (which would mix
    modes and weight subtasks by their example counts). Adds "by_subtask" {mode: {subtask: {config:
    score}}}, "exact_by_subtask" (single-answer niah), "by_kind" {mode: {value kind: {config:
    score}}} (niah_single) and "by_length" {config: {length: {ruler_<mode>: average}}}."""
    by_sub, exact, by_kind, by_len = (defaultdict(lambda: defaultdict(dict)) for _ in range(4))
    for cfg, g in groups.items():
        cell, ex, kinds, lens = (defaultdict(list) for _ in range(4))
        for r in g:
            mode, st = r.get("mode", "aware"), r.get("subtask")
            cell[(mode, st)].append(r["metrics"]["score"])
            lens[(mode, int(r["length"]), st)].append(r["metrics"]["score"])
            if "exact" in r["metrics"]:
                ex[(mode, st)].append(r["metrics"]["exact"])
            if st == "niah_single" and r.get("kind"):
                kinds[(mode, r["kind"])].append(r["metrics"]["score"])
        for (mode, st), v in cell.items():
            by_sub[mode][st][cfg] = mean(v)
        for (mode, st), v in ex.items():
            exact[mode][st][cfg] = mean(v)
        for (mode, k), v in kinds.items():
            by_kind[mode][k][cfg] = mean(v)
        row = {k: v for k, v in t["configs"][cfg].items() if k in ("method", "budget", "n", "kv_bytes")}
        per_len = defaultdict(dict)
        for mode in RULER_MODES:
            subs = [st for st in RULER_ORDER if (mode, st) in cell]
            if not subs:
                continue
            row[f"ruler_{mode}"] = mean(by_sub[mode][st][cfg] for st in subs)
            niah = [st for st in subs if st in RULER_NIAH]
            if niah:
                row[f"niah_{mode}"] = mean(by_sub[mode][st][cfg] for st in niah)
            for L in sorted({L for (m, L, _) in lens if m == mode}):
                per_len[L][f"ruler_{mode}"] = mean(mean(lens[(mode, L, st)]) for st in subs if (mode, L, st) in lens)
        t["configs"][cfg] = row
        by_len[cfg] = dict(sorted(per_len.items()))
    order = {k: i for i, k in enumerate(RULER_ORDER + VALUE_KINDS)}

    def plain(d):
        return {m: {k: dict(v) for k, v in sorted(d[m].items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))}
                for m in RULER_MODES if m in d}
    t["by_subtask"], t["exact_by_subtask"], t["by_kind"] = plain(by_sub), plain(exact), plain(by_kind)
    t["by_length"] = dict(by_len)


def _fmt(v, digits=3):
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _grid_table(configs: dict, metric: str, digits=3) -> list[str]:
    budgets = sorted({r["budget"] for r in configs.values() if r["budget"] is not None})
    methods = sorted({r["method"] for r in configs.values()}, key=_method_order)
    head = "| method | " + " | ".join(str(b) for b in budgets) + " | full |"
    lines = [head, "|" + " --- |" * (len(budgets) + 2)]
    full = next((r for r in configs.values() if r["method"] == "full"), None)
    for m in methods:
        if m == "full":
            continue
        cells = []
        for b in budgets:
            r = next((r for r in configs.values() if r["method"] == m and r["budget"] == b), None)
            cells.append(_fmt(r.get(metric) if r else None, digits))
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(full.get(metric) if full else None, digits)} |")
    if full and len(methods) == 1:
        lines.append("| full | " + " | ".join("–" for _ in budgets) + f" | {_fmt(full.get(metric), digits)} |")
    return lines


def markdown(summary: dict) -> str:
    out = []
    for task, t in summary.items():
        metrics = [k for k in next(iter(t["configs"].values())) if k not in ("method", "budget", "n", "kv_bytes")]
        part = f"; {t['n_partial']} examples not finished by every config left out" if t.get("n_partial") else ""
        out.append(f"### {task} ({t['n_examples']} examples x {len(t['configs'])} configs{part})\n")
        if task == "ruler":
            out.extend(_ruler_markdown(t))
            metrics = []
        for k in ([PRIMARY[task]] if PRIMARY.get(task) in metrics else []) + \
                 [k for k in metrics if k != PRIMARY.get(task)]:
            out.append(f"**{k}** (rows: method, columns: KV budget per head; `full` = uncompressed cache)\n")
            out.extend(_grid_table(t["configs"], k))
            out.append("")
        lengths = sorted({L for c in t["by_length"].values() for L in c})
        if task in ("niah", "reasoning-needles") and len(lengths) > 1:
            k = PRIMARY[task]
            out.append(f"**{k} by context length** (rows: config)\n")
            out.append("| config | " + " | ".join(str(L) for L in lengths) + " |")
            out.append("|" + " --- |" * (len(lengths) + 1))
            for cfg in _sorted_cfgs(t["configs"]):
                bl = t["by_length"][cfg]
                out.append(f"| {cfg} | " + " | ".join(_fmt(bl.get(L, {}).get(k)) for L in lengths) + " |")
            out.append("")
        if task == "niah" and len(t.get("by_kind", {})) > 1:
            kinds = list(t["by_kind"])
            out.append("**accuracy by needle number length** (one token per digit; rows: config)\n")
            out.append("| config | " + " | ".join(kinds) + " |")
            out.append("|" + " --- |" * (len(kinds) + 1))
            for cfg in _sorted_cfgs(t["configs"]):
                out.append(f"| {cfg} | " + " | ".join(_fmt(t["by_kind"][k].get(cfg)) for k in kinds) + " |")
            out.append("")
        if task == "longbench":
            cfgs = _sorted_cfgs(t["configs"])
            out.append("**score by dataset** (rows: dataset)\n")
            out.append("| dataset | " + " | ".join(cfgs) + " |")
            out.append("|" + " --- |" * (len(cfgs) + 1))
            for d, cs in t["by_dataset"].items():
                out.append(f"| {d} | " + " | ".join(_fmt(cs.get(c)) for c in cfgs) + " |")
            out.append("")
        out.append("**mean KV bytes held per example** (KiB)\n")
        out.extend(_grid_table({c: dict(r, kv_kib=r["kv_bytes"] / 1024) for c, r in t["configs"].items()},
                               "kv_kib", 0))
        out.append("")
    return "\n".join(out)


def _mode_rows(t: dict, modes) -> list[tuple[str, str]]:
    return [(cfg, m) for cfg in _sorted_cfgs(t["configs"]) for m in modes]


def _ruler_markdown(t: dict) -> list[str]:
    """RULER and NIAH averages (aware / agnostic in one cell), then per subtask, per value kind
    (niah_single), the single-answer exact match, and per length (rows: config x mode)."""
    modes = [m for m in RULER_MODES if m in t["by_subtask"]]
    out = []
    for key, title in (("ruler", "RULER average (mean over subtasks)"),
                       ("niah", "NIAH average (mean over the niah_* subtasks)")):
        if not any(f"{key}_{m}" in r for r in t["configs"].values() for m in modes):
            continue
        pair = {c: dict(r, pair=" / ".join(_fmt(r.get(f"{key}_{m}")) for m in modes)) for c, r in t["configs"].items()}
        out.append(f"**{title}**, query-{' / query-'.join(modes)} (rows: method, columns: KV budget per head; "
                   f"`full` = uncompressed cache)\n")
        out.extend(_grid_table(pair, "pair"))
        out.append("")
    subs = list(dict.fromkeys(st for m in modes for st in t["by_subtask"][m]))
    has_niah = any(st in RULER_NIAH for st in subs)
    out.append("**score by subtask** (string match of all answers; rows: config x mode)\n")
    cols = subs + (["NIAH avg"] if has_niah else []) + ["RULER avg"]
    out.append("| config | mode | " + " | ".join(cols) + " |")
    out.append("|" + " --- |" * (len(cols) + 2))
    for cfg, m in _mode_rows(t, modes):
        r = t["configs"][cfg]
        cells = [_fmt(t["by_subtask"][m].get(st, {}).get(cfg)) for st in subs]
        cells += ([_fmt(r.get(f"niah_{m}"))] if has_niah else []) + [_fmt(r.get(f"ruler_{m}"))]
        out.append(f"| {cfg} | {m} | " + " | ".join(cells) + " |")
    out.append("")
    for name, table, what in (("exact_by_subtask", "exact", "answer found, no distractor's value given"),
                              ("by_kind", "niah_single score by value kind", "digits = tokens for numbers")):
        keys = list(dict.fromkeys(k for m in modes for k in t[name].get(m, {})))
        if not keys:
            continue
        out.append(f"**{table}** ({what}; rows: config x mode)\n")
        out.append("| config | mode | " + " | ".join(keys) + " |")
        out.append("|" + " --- |" * (len(keys) + 2))
        for cfg, m in _mode_rows(t, modes):
            cells = [_fmt(t[name].get(m, {}).get(k, {}).get(cfg)) for k in keys]
            out.append(f"| {cfg} | {m} | " + " | ".join(cells) + " |")
        out.append("")
    lengths = sorted({L for c in t["by_length"].values() for L in c})
    if len(lengths) > 1:
        out.append("**RULER average by length** (rows: config x mode)\n")
        out.append("| config | mode | " + " | ".join(str(L) for L in lengths) + " |")
        out.append("|" + " --- |" * (len(lengths) + 2))
        for cfg, m in _mode_rows(t, modes):
            bl = t["by_length"][cfg]
            out.append(f"| {cfg} | {m} | " + " | ".join(_fmt(bl.get(L, {}).get(f"ruler_{m}")) for L in lengths) + " |")
        out.append("")
    return out


def _sorted_cfgs(configs: dict) -> list[str]:
    return sorted(configs, key=lambda c: (_method_order(configs[c]["method"]), configs[c]["budget"] or 0))


def write_csv(records: list[dict], path) -> None:
    metric_names = sorted({k for r in records for k in r["metrics"]})
    cols = ["task", "id", "config", "method", "budget", "seed", "length", "depth", "dataset", "kind", "subtask",
            "mode", "n_prompt",
            "kv_bytes"] + metric_names + ["answer", "prediction", "time_s"]
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            row = []
            for c in cols:
                v = r["metrics"].get(c) if c in metric_names else r.get(c)
                if c == "answer" and v is None and r.get("answers"):
                    v = " || ".join(r["answers"])
                row.append("" if v is None else v)
            w.writerow(row)


def plots(summary: dict, out_dir) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, t in summary.items():
        cfgs = t["configs"]
        metrics = [k for k in next(iter(cfgs.values())) if k not in ("method", "budget", "n", "kv_bytes")]
        if task == "ruler":     # one plot per average, query-aware solid, query-agnostic dashed
            plotted = [(a, [f"{a}_{m}" for m in RULER_MODES if f"{a}_{m}" in metrics]) for a in ("ruler", "niah")]
        else:
            plotted = [(k, [k]) for k in metrics]
        for k, keys in plotted:
            if not keys:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for ls, mk, key in zip(("-", "--"), ("o", "x"), keys):
                tag = f" ({key.rsplit('_', 1)[1]})" if len(keys) > 1 else ""
                for m in sorted({r["method"] for r in cfgs.values()}, key=_method_order):
                    rows = sorted((r for r in cfgs.values() if r["method"] == m), key=lambda r: r["budget"] or 0)
                    if m == "full":
                        ax.axhline(rows[0].get(key, math.nan), color="black", linestyle=":" if ls == "--" else "--",
                                   label="full" + tag)
                    else:
                        ci = sorted({r["method"] for r in cfgs.values()} - {"full"}, key=_method_order).index(m)
                        ax.plot([r["budget"] for r in rows], [r.get(key, math.nan) for r in rows], marker=mk,
                                linestyle=ls, color=f"C{ci}", label=m + tag)
            ax.set_xscale("log", base=2)
            bs = sorted({r["budget"] for r in cfgs.values() if r["budget"] is not None})
            if bs:
                ax.set_xticks(bs, [str(b) for b in bs])
                ax.minorticks_off()
            ax.set_xlabel("KV budget per head (entries)")
            label = {"ruler": "RULER average", "niah": "NIAH average"}.get(k, k) if task == "ruler" else k
            ax.set_ylabel(label)
            ax.set_title(f"{task}: {label}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            p = out_dir / f"{task}_{k}.png"
            with atomic_write(p, "wb") as f:
                fig.savefig(f, format="png", dpi=100)
            plt.close(fig)
            written.append(str(p))
        if task == "niah":
            written += _niah_heatmaps(t, out_dir, plt)
    return written


def _niah_heatmaps(t, out_dir, plt) -> list[str]:
    import numpy as np
    written = []
    cfgs = t["configs"]
    keys = {tuple(k.split("/")) for c in t["cells"].values() for k in c}
    lengths = sorted({int(L) for L, _ in keys})
    depths = sorted({float(d) for _, d in keys})
    for m in sorted({r["method"] for r in cfgs.values()}, key=_method_order):
        names = sorted((c for c in cfgs if cfgs[c]["method"] == m), key=lambda c: cfgs[c]["budget"] or 0)
        fig, axes = plt.subplots(1, len(names), figsize=(2.2 + 2.4 * len(names), 3.2), squeeze=False)
        for ax, c in zip(axes[0], names):
            a = np.full((len(depths), len(lengths)), np.nan)
            for i, d in enumerate(depths):
                for j, L in enumerate(lengths):
                    a[i, j] = t["cells"][c].get(f"{L}/{d:g}", np.nan)
            ax.imshow(a, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    if not np.isnan(a[i, j]):
                        ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), [f"{L // 1024}k" if L % 1024 == 0 else str(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
            ax.set_xlabel("context length")
            ax.set_title(c if m != "full" else "full cache", fontsize=9)
        axes[0][0].set_ylabel("needle depth")
        fig.suptitle(f"NIAH accuracy: {m}", fontsize=10)
        fig.tight_layout()
        p = out_dir / f"niah_heatmap_{m}.png"
        with atomic_write(p, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        written.append(str(p))
    return written


def _no_nan(x):
    if isinstance(x, dict):
        return {str(k): _no_nan(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def write_reports(out_dir, make_plots=True) -> dict:
    """Writes results.csv, summary.json, summary.md (and plots/*.png) next to results.jsonl."""
    out_dir = Path(out_dir)
    records = read_results(out_dir)
    if not records:
        raise FileNotFoundError(f"no results*.jsonl in {out_dir}")
    s = summarize(records)
    write_csv(records, out_dir / "results.csv")
    write_text_atomic(out_dir / "summary.json", json.dumps(_no_nan(s), indent=1, sort_keys=True) + "\n")
    write_text_atomic(out_dir / "summary.md", markdown(s) + "\n")
    files = {"csv": str(out_dir / "results.csv"), "json": str(out_dir / "summary.json"),
             "markdown": str(out_dir / "summary.md")}
    if make_plots:
        files["plots"] = plots(s, out_dir / "plots")
    return files
