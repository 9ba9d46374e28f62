"""One table over several headkv-eval result folders: per (folder, config) the RULER NIAH and RULER
averages per mode, niah accuracy (all, and by value length), fidelity top-1 agreement and KV bytes.

    python tools/eval_compare.py runs/main runs/paper ... [--md]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

def rows(folder: Path):
    """Per config of one folder: headkv-eval's own summary (report.summarize) flattened into one row."""
    from headkv.eval.report import summarize
    from headkv.eval.runner import read_results
    summary = summarize(read_results(folder))
    out = {}
    for task, t in summary.items():
        for cfg, c in t["configs"].items():
            row = out.setdefault(cfg, {"run": folder.name, "config": cfg, "n": 0, "kv": []})
            row["n"] += c["n"]
            row["kv"].append((c["kv_bytes"], c["n"]))
            if task == "ruler":
                row.update({k: v for k, v in c.items() if k.startswith(("ruler_", "niah_"))})
            elif task == "niah":
                row["niah"] = c["accuracy"]
                for kind, by_cfg in t.get("by_kind", {}).items():
                    if cfg in by_cfg:
                        row[f"niah {kind}"] = by_cfg[cfg]
            elif task == "fidelity":
                row["top1"], row["kl"] = c["top1_agree"], c["kl"]
    for row in out.values():
        kv = row.pop("kv")
        row["kv_kib"] = sum(b * n for b, n in kv) / max(1, sum(n for _, n in kv)) / 1024
    return list(out.values())


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
