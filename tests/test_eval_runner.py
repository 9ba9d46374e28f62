"""headkv.eval runner/report pieces without a model: the KV grid, crash-cut result files, and the
summary/Markdown/plots from hand-made records."""
import json

import pytest

import headkv
from headkv.eval.engine import Config, grid
from headkv.eval.report import markdown, summarize, write_reports
from headkv.eval.runner import read_jsonl, record_key


def test_grid():
    g = grid(["full", "snapkv", "headkv"], [64, 128])
    assert [c.name for c in g] == ["full", "snapkv@64", "snapkv@128", "headkv@64", "headkv@128"]
    assert Config("full", None).name == "full"
    with pytest.raises(headkv.InvalidArgumentError, match="unknown KV method"):
        grid(["nosuch"], [64])
    with pytest.raises(headkv.InvalidArgumentError, match="budget"):
        grid(["snapkv"], [])
    # a cache-type sweep: every config per type, f16 names unchanged
    g = grid(["full", "headkv"], [128], ["f16", "q8_0"])
    assert [c.name for c in g] == ["full", "full/q8_0", "headkv@128", "headkv@128/q8_0"]
    with pytest.raises(headkv.InvalidArgumentError, match="cache type"):
        grid(["full"], [64], ["q5_0"])


def test_type_sweep_rows_in_the_tables():
    recs = []
    for t, acc, kv in (("f16", 0.5, 200), ("q8_0", 0.75, 110)):
        r = _rec("niah", "a", "headkv", 128, acc, kv=kv)
        r.update(kv_type=t, config="headkv@128" + ("" if t == "f16" else "/q8_0"))
        recs.append(r)
    t = summarize(recs)["niah"]["configs"]
    assert t["headkv@128"]["method"] == "headkv" and t["headkv@128/q8_0"]["method"] == "headkv/q8_0"
    assert t["headkv@128/q8_0"]["kv_bytes"] == 110 and t["headkv@128/q8_0"]["accuracy"] == 0.75
    md = markdown(summarize(recs))
    assert "| headkv | 0.500 |" in md and "| headkv/q8_0 | 0.750 |" in md


def test_cut_last_line_is_dropped(tmp_path):
    p = tmp_path / "results.jsonl"
    good = json.dumps({"task": "niah", "id": "a", "config": "full", "seed": 0}) + "\n"
    p.write_text(good + '{"task": "niah", "id": "b", "conf')
    recs = read_jsonl(p)
    assert [r["id"] for r in recs] == ["a"]
    assert p.read_text() == good  # the cut line is gone, so appends start on a fresh line
    assert record_key(recs[0]) == ("niah", "a", "full", 0, None)


def _rec(task, id_, method, budget, acc, length=1024, depth=0.5, kv=100):
    cfg = "full" if method == "full" else f"{method}@{budget}"
    return {"task": task, "id": id_, "config": cfg, "method": method, "budget": budget, "seed": 0,
            "length": length, "depth": depth, "metrics": {"accuracy": acc}, "kv_bytes": kv, "prediction": "",
            "n_prompt": length}


def test_summary_markdown_plots(tmp_path):
    recs = []
    for i, (L, d) in enumerate([(1024, 0.1), (1024, 0.9), (2048, 0.1), (2048, 0.9)]):
        recs.append(_rec("niah", f"n{i}", "full", None, 1.0, L, d, kv=1000))
        recs.append(_rec("niah", f"n{i}", "snapkv", 64, float(i % 2), L, d))
        recs.append(_rec("niah", f"n{i}", "snapkv", 128, 1.0 if i < 3 else 0.0, L, d))
    recs.append(_rec("niah", "n9", "full", None, 1.0))  # finished by one config only: left out
    s = summarize(recs)["niah"]
    assert s["n_examples"] == 4 and s["n_partial"] == 1
    assert s["configs"]["snapkv@64"]["accuracy"] == 0.5 and s["configs"]["snapkv@128"]["accuracy"] == 0.75
    assert s["by_length"]["snapkv@128"][2048]["accuracy"] == 0.5
    assert s["cells"]["snapkv@64"] == {"1024/0.1": 0.0, "1024/0.9": 1.0, "2048/0.1": 0.0, "2048/0.9": 1.0}
    md = markdown({"niah": s})
    assert "| snapkv | 0.500 | 0.750 | 1.000 |" in md
    assert "1 examples not finished by every config left out" in md
    with open(tmp_path / "results.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    files = write_reports(tmp_path)
    names = sorted(p.rsplit("/", 1)[1] for p in files["plots"])
    assert names == ["niah_accuracy.png", "niah_heatmap_full.png", "niah_heatmap_snapkv.png"]
    assert json.loads((tmp_path / "summary.json").read_text())["niah"]["n_examples"] == 4


def test_niah_needles_stable_and_distinct():
    from headkv.eval.niah import fact_needles
    four = fact_needles(4, 0, 2048, 0.5)
    assert fact_needles(1, 0, 2048, 0.5)[0] == four[0]          # a cell's needles do not depend on the grid
    assert len({n["answer"] for n in four}) == 4 and len({n["question"] for n in four}) == 4
    assert fact_needles(4, 1, 2048, 0.5) != four and fact_needles(4, 0, 4096, 0.5) != four
    for n in four:
        assert n["needle"].startswith(n["answer_prefix"]) and n["needle"].endswith(f" {n['answer']}.")
