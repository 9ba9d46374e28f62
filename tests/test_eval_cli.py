"""headkv-eval end to end on the real SmolLM2: a tiny LongBench-format file written here, niah
and fidelity on short contexts; outputs, resumability and reruns with the same seed."""
import csv
import json
import subprocess

import pytest

from conftest import tool_path
from headkv.eval import longbench as lb
from headkv.eval.runner import read_jsonl, read_results

FACTS = [("Zorbia", "Mellor"), ("Quenland", "Drast"), ("Varnia", "Osk")]


def _filler(i):
    return (f"Record {i}. The weather in the valley was mild and the river ran slowly past the old mill. "
            "Farmers brought their goods to the market every week and talked about the harvest. ")


def _longbench_file(path):
    rows = []
    for i, (country, capital) in enumerate(FACTS):
        ctx = _filler(i) * 2 + f"The capital of {country} is {capital}. " + _filler(i + 1) * 2
        rows.append({"_id": f"qa{i}", "dataset": "multifieldqa_en", "input": f"What is the capital of {country}?",
                     "context": ctx, "answers": [capital], "all_classes": None, "length": len(ctx.split())})
    rows.append({"_id": "cnt", "dataset": "passage_count", "input": "",
                 "context": "Paragraph 1: The sky is blue.\n\nParagraph 2: Grass is green.\n\n"
                            "Paragraph 3: The sky is blue.", "answers": ["2"], "all_classes": None, "length": 14})
    rows.append({"_id": "trec0", "dataset": "trec", "input": "Question: Where is Paris?\nType:",
                 "context": "Question: Who wrote Hamlet?\nType: Individual\nQuestion: Where is Rome?\nType: City",
                 "answers": ["City"], "all_classes": ["Individual", "City", "Country"], "length": 20})
    rows.append({"_id": "code0", "dataset": "lcc", "input": "",
                 "context": "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n", "answers": ["    return a - b"],
                 "all_classes": None, "length": 12})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def _run(args, smollm2):
    p = subprocess.run([tool_path("headkv-eval"), *args, "-m", smollm2, "-c", "1024", "-t", "2", "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p


def _strip(recs):
    return sorted((json.dumps({k: v for k, v in r.items() if k != "time_s"}, sort_keys=True) for r in recs))


def test_longbench_end_to_end_and_resume(tmp_path, smollm2):
    rows = _longbench_file(tmp_path / "lb.jsonl")
    out = tmp_path / "out"
    args = ["longbench", "--data", str(tmp_path / "lb.jsonl"), "--methods", "full,snapkv", "--budgets", "64",
            "--max-gen", "12", "--out", str(out)]
    p = _run(args, smollm2)
    recs = read_jsonl(out / "results.jsonl")
    assert len(recs) == 2 * len(rows)
    assert {r["config"] for r in recs} == {"full", "snapkv@64"}
    # every stored score is the dataset's metric of the stored prediction
    by_id = {ex["id"]: ex for ex in lb.load(tmp_path / "lb.jsonl")}
    for r in recs:
        assert r["metrics"]["score"] == pytest.approx(lb.score(by_id[r["id"]], r["prediction"]))
        assert r["metric"] == lb.metric_name(r["dataset"])
        assert r["n_prompt"] > 0 and r["kv_bytes"] > 0
    # the full cache finds the facts (in a ~120-token context); QA F1 then charges the extra words
    full_qa = [r for r in recs if r["config"] == "full" and r["dataset"] == "multifieldqa_en"]
    assert sum(r["answers"][0] in r["prediction"] for r in full_qa) >= 2, [r["prediction"] for r in full_qa]
    assert all(r["metrics"]["score"] > 0 for r in full_qa if r["answers"][0] in r["prediction"])
    # compression really happened: snapkv@64 holds fewer bytes than the full cache on the longer prompts
    kv = {(r["id"], r["config"]): r["kv_bytes"] for r in recs}
    assert all(kv[(i, "snapkv@64")] < kv[(i, "full")] for i, _ in kv if i.startswith("multifieldqa_en"))
    # reports
    summary = json.loads((out / "summary.json").read_text())
    t = summary["longbench"]
    assert set(t["by_dataset"]) == {"multifieldqa_en", "passage_count", "trec", "lcc"}
    mean_qa = sum(r["metrics"]["score"] for r in full_qa) / len(full_qa)
    assert t["by_dataset"]["multifieldqa_en"]["full"] == pytest.approx(mean_qa)
    # LongBench's average is over datasets
    assert t["configs"]["full"]["score"] == pytest.approx(sum(d["full"] for d in t["by_dataset"].values()) / 4)
    md = (out / "summary.md").read_text()
    assert "| snapkv |" in md and "score by dataset" in md
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(recs)
    assert (out / "plots" / "longbench_score.png").stat().st_size > 1000
    assert "| snapkv |" in p.stdout
    # resumable: a second run computes nothing and leaves the results as they were
    before = (out / "results.jsonl").read_bytes()
    p2 = _run(args, smollm2)
    assert "computed 0," in p2.stderr
    assert (out / "results.jsonl").read_bytes() == before
    # a setting that changes results is part of the folder's identity: --cap-ceiling (absent from the
    # manifest at its default, so folders written before the option resume) is refused here
    p3 = subprocess.run([tool_path("headkv-eval"), *args, "--cap-ceiling", "2", "-m", smollm2, "-c", "1024", "-t", "2",
                         "--no-progress"], capture_output=True, text=True, timeout=600)
    assert p3.returncode != 0 and "cap_ceiling" in p3.stderr
    assert "cap_ceiling" not in (out / "run.json").read_text()
    assert (out / "results.jsonl").read_bytes() == before


def test_needles_fidelity_rerun_same_numbers(tmp_path, smollm2):
    args = ["run", "--tasks", "niah,reasoning-needles,fidelity", "--methods", "full,streaming", "--budgets",
            "32", "--lengths", "320", "--depths", "0.5", "--needles-per-cell", "2", "--reasoning-n", "1",
            "--reasoning-lengths", "320", "--fidelity-essays", "1", "--fidelity-prompt", "192", "--fidelity-gen", "6",
            "--fidelity-cont", "8", "--seed", "3", "--no-plots"]
    a, b = tmp_path / "a", tmp_path / "b"
    _run(args + ["--out", str(a)], smollm2)
    # the second copy runs as two shards (separate processes, one file each)
    _run(args + ["--out", str(b), "--shard", "0/2"], smollm2)
    _run(args + ["--out", str(b), "--shard", "1/2"], smollm2)
    ra, rb = read_results(a), read_results(b)
    assert len(ra) == 2 * (2 + 1 + 1) and _strip(ra) == _strip(rb)
    niah = [r for r in ra if r["task"] == "niah"]
    assert len({r["needle"] for r in niah}) == 2 and all(r["seed"] == 3 for r in ra)
    fid = {r["config"]: r["metrics"] for r in ra if r["task"] == "fidelity"}
    assert fid["full"]["kl"] == 0 and fid["full"]["top1_agree"] == 1.0
    # streaming keeps 32 of ~190 prompt tokens per head: the next-token distribution moves
    assert fid["streaming@32"]["kl"] > 1e-3 and fid["streaming@32"]["nll_delta"] != 0
    assert (a / "summary.md").exists() and (b / "summary.md").exists()


def test_loogle_end_to_end(tmp_path, smollm2):
    doc = _filler(0) * 2 + "The lighthouse keeper was named Arvid Holm. " + _filler(1) * 2
    pairs = [{"S": "", "Q": "What was the lighthouse keeper's name?", "A": "Arvid Holm"}]
    (tmp_path / "shortdep_qa.jsonl").write_text(
        json.dumps({"input": doc, "title": "Keeper", "qa_pairs": repr(pairs), "output": "none"}) + "\n")
    out = tmp_path / "out"
    _run(["loogle", "--data", str(tmp_path / "shortdep_qa.jsonl"), "--methods", "full", "--max-gen", "16",
          "--kv-types", "f16,q8_0", "--out", str(out), "--no-plots"], smollm2)
    r, q8 = read_jsonl(out / "results.jsonl")  # the cache-type sweep: f16, then q8_0 at about half the bytes
    assert (r["kv_type"], q8["kv_type"], q8["config"]) == ("f16", "q8_0", "full/q8_0")
    assert 0.5 < q8["kv_bytes"] / r["kv_bytes"] < 0.55
    assert r["id"] == "shortdep_qa/Keeper/0" and r["answer"] == "Arvid Holm"
    assert set(r["metrics"]) == {"rouge_l", "exact_match"}
    from headkv.eval import loogle
    assert r["metrics"] == loogle.score({"subtask": "shortdep_qa", "answer": "Arvid Holm"}, r["prediction"])
    assert "loogle" in json.loads((out / "summary.json").read_text())


def test_cli_errors_leave_nothing_behind(tmp_path, smollm2):
    out = tmp_path / "out"
    for args, msg in ((["longbench", "--data", str(tmp_path / "missing.jsonl")], "cannot read LongBench file"),
                      (["niah", "--methods", "full,nosuch"], "unknown KV method"),
                      (["niah", "--kv-types", "f16,q5_1"], "unknown KV cache type"),
                      (["niah", "--lengths", "40"], "no room"),
                      (["niah", "--cap-ceiling", "0.5"], "--cap-ceiling must be"),
                      (["niah", "--cap-ceiling", "nan"], "--cap-ceiling must be")):
        p = subprocess.run([tool_path("headkv-eval"), *args, "-m", smollm2, "--out", str(out), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and "headkv-eval: error:" in p.stderr and msg in p.stderr, p.stderr
        assert not out.exists()


def test_missing_optional_package_fails_before_any_example(tmp_path, monkeypatch, capsys):
    """headkv-eval checks the packages its tasks and plots need before computing anything."""
    import importlib.util
    from headkv.eval import cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    rc = cli.main(["niah", "--methods", "full", "--lengths", "256", "--depths", "0.5", "--needles-per-cell", "1",
                   "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1 and "matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists()
