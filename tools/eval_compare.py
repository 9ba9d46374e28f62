"""One table over several headkv-eval result folders: per (folder, config) the RULER NIAH and RULER
averages per mode, niah accuracy (all, and by value length), fidelity top-1 agreement and KV bytes.

    python tools/eval_compare.py runs/main runs/paper ... [--md]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

NIAH_SUBTASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery")


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def rows(folder: Path):
    recs = []
    for p in sorted(folder.glob("results*.jsonl")):
        recs += [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    by = defaultdict(list)
    for r in recs:
        by[r["config"]].append(r)
    out = []
    for cfg, rs in by.items():
        row = {"run": folder.name, "config": cfg, "n": len(rs)}
        for mode in ("aware", "agnostic"):
            sub = defaultdict(list)
            for r in rs:
                if r["task"] == "ruler" and r.get("mode") == mode:
                    sub[r["subtask"]].append(r["metrics"]["score"])
            if sub:
                row[f"ruler_{mode}"] = mean(mean(v) for v in sub.values())
                row[f"niah_{mode}"] = mean(mean(sub[s]) for s in NIAH_SUBTASKS if s in sub)
        nia = [r for r in rs if r["task"] == "niah"]
        if nia:
            row["niah"] = mean(r["metrics"]["accuracy"] for r in nia)
            for k in sorted({r.get("kind") or "4-digit" for r in nia}):
                row[f"niah {k}"] = mean(r["metrics"]["accuracy"] for r in nia if (r.get("kind") or "4-digit") == k)
        fid = [r for r in rs if r["task"] == "fidelity"]
        if fid:
            row["top1"] = mean(r["metrics"]["top1_agree"] for r in fid)
            row["kl"] = mean(r["metrics"]["kl"] for r in fid)
        row["kv_kib"] = mean(r["kv_bytes"] for r in rs) / 1024
        out.append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    a = ap.parse_args(argv)
    table = [r for f in a.folders for r in rows(Path(f))]
    cols = ["run", "config", "n", "niah_aware", "ruler_aware", "niah_agnostic", "ruler_agnostic", "niah"]
    cols += sorted({k for r in table for k in r if k.startswith("niah ")}) + ["top1", "kl", "kv_kib"]
    cols = [c for c in cols if any(c in r for r in table)]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in table:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) and c != "kv_kib" else
                         (f"{v:.0f}" if isinstance(v, float) else str(v)))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
