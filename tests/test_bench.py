"""headkv-bench: llama-bench compatible flags, JSON/CSV/markdown schema, clear failures."""
import csv
import io
import json
import math
import subprocess

import pytest

from conftest import tool_path

INT_FIELDS = ["model_size", "n_vocab", "n_threads", "n_batch", "n_ctx", "n_prompt", "n_gen", "n_depth",
              "repetitions", "avg_ns", "stddev_ns", "weight_bytes", "kv_bytes", "kv_bytes_read",
              "peak_rss_bytes", "peak_device_bytes"]
STR_FIELDS = ["build", "cpu_info", "device", "device_name", "model_filename", "kv_method", "test", "name",
              "test_time", "bandwidth_source"]
POSITIVE = ["model_size", "n_vocab", "n_threads", "n_batch", "n_ctx", "repetitions", "avg_ns", "avg_ts",
            "weight_bytes", "kv_bytes", "peak_rss_bytes", "bandwidth_gbps"]


@pytest.fixture(scope="module")
def bench():
    return tool_path("headkv-bench")


def run(bench, *args, check=True):
    p = subprocess.run([bench, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"headkv-bench {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def finite_positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def json_rows(bench, smollm2):
    p = run(bench, "-m", smollm2, "-p", 32, "-n", 8, "-d", "0,64", "-r", 2, "-t", 2, "-o", "json")
    return json.loads(p.stdout)


def test_json_schema(json_rows, smollm2):
    rows = json_rows
    # cross product: depths x (pp, tg), in llama-bench order
    assert [(r["test"], r["n_depth"]) for r in rows] == [("pp32", 0), ("tg8", 0), ("pp32", 64), ("tg8", 64)]
    assert [r["name"] for r in rows] == ["pp32", "tg8", "pp32 @ d64", "tg8 @ d64"]
    for r in rows:
        for k in INT_FIELDS:
            assert isinstance(r[k], int) and not isinstance(r[k], bool), (k, r[k])
        for k in STR_FIELDS:
            assert isinstance(r[k], str) and r[k], (k, r[k])
        for k in POSITIVE:
            assert finite_positive(r[k]), (k, r[k])
        assert r["model_filename"] == smollm2
        assert r["device"] == "cpu" and r["peak_device_bytes"] == 0
        assert r["kv_method"] == "full" and r["kv_budget"] is None
        assert r["n_threads"] == 2 and r["repetitions"] == 2
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 2
        assert all(finite_positive(x) for x in r["samples_ns"] + r["samples_ts"])
        assert math.isfinite(r["stddev_ts"]) and r["stddev_ts"] >= 0
        n_tok = r["n_prompt"] + r["n_gen"]
        assert r["avg_ts"] == pytest.approx(sum(r["samples_ts"]) / 2, rel=1e-9)
        assert r["samples_ts"][0] == pytest.approx(n_tok * 1e9 / r["samples_ns"][0], rel=1e-6)
        assert r["n_ctx"] >= r["n_depth"] + n_tok
        assert r["weight_bytes"] > 50e6  # SmolLM2 Q4_1: ~97 MB of weights
        assert r["peak_rss_bytes"] > r["kv_bytes"]
        assert 0 < r["kv_bytes_read"] <= r["kv_bytes"]
        assert r["bandwidth_source"] == "measured"
        if r["test"].startswith("tg"):
            assert finite_positive(r["roofline_fraction"]) and r["roofline_fraction"] < 2
            assert r["bytes_per_token"] == r["weight_bytes"] + r["kv_bytes_read"]
        else:
            assert r["roofline_fraction"] is None
    # a deeper context holds more KV
    assert rows[2]["kv_bytes"] > rows[0]["kv_bytes"]
    assert rows[3]["kv_bytes"] > rows[1]["kv_bytes"]


def test_markdown_and_csv(bench, smollm2):
    p = run(bench, "-m", smollm2, "-p", 16, "-n", 4, "-d", 32, "-r", 1, "-t", 1, "--bandwidth", 20)
    lines = [l for l in p.stdout.splitlines() if l.startswith("|")]
    assert len(lines) == 4
    assert "t/s" in lines[0] and "roofline" in lines[0]
    assert "pp16 @ d32" in lines[2] and "tg4 @ d32" in lines[3]
    assert "±" in lines[2] and lines[3].rstrip(" |").endswith("%")
    assert "20.0 GB/s (given)" in p.stdout

    p = run(bench, "-m", smollm2, "-p", "8,16", "-n", 0, "-r", 1, "-t", 1, "-o", "csv", "--bandwidth", 20)
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [r["test"] for r in rows] == ["pp8", "pp16"]
    assert all(float(r["avg_ts"]) > 0 and float(r["bandwidth_gbps"]) == 20 for r in rows)


def test_pg_and_threads_cross_product(bench, smollm2):
    p = run(bench, "-m", smollm2, "-p", 0, "-n", 0, "-pg", "8,2", "-t", "1,2", "-r", 1, "-o", "jsonl",
            "--bandwidth", 20)
    rows = [json.loads(l) for l in p.stdout.splitlines()]
    assert [(r["test"], r["n_threads"]) for r in rows] == [("pp8+tg2", 1), ("pp8+tg2", 2)]
    assert all(r["roofline_fraction"] is None and r["avg_ts"] > 0 for r in rows)


@pytest.mark.parametrize("args,msg", [
    (["--kv-method", "headkv", "--scores", "/nonexistent.json"], "cannot open"),
    (["--kv-method", "full,h2o"], "not available in this build"),
    (["--kv-method", "snapkv", "-d", "16"], "not defined"),
    (["--kv-method", "bogus"], "unknown --kv-method"),
    (["--device", "cuda"], "not available"),
    (["-o", "xml"], "-o must be"),
    (["-p", "abc"], "bad integer"),
    (["--frobnicate"], "unknown argument"),
    (["--kv-method", "snapkv", "--kv-budget", "0.25"], "must be >= 1"),  # entries per head, as in the CLI
    (["--kv-method", "snapkv", "--kv-budget", "64.5"], "whole numbers"),
    (["--kv-method", "snapkv", "--kv-budget", "64", "--kv-budget-mib", "2"], "give one of them"),
    (["--kv-method", "snapkv", "--kv-budget-mib", "0"], "--kv-budget-mib"),
])
def test_rejects_clearly(bench, smollm2, args, msg):
    p = run(bench, "-m", smollm2, "-p", 8, "-n", 2, "-r", 1, *args, check=False)
    assert p.returncode != 0
    assert msg in p.stderr
    assert p.stdout == ""


def test_compressed_decode_holds_fewer_bytes(bench, smollm2):
    p = run(bench, "-m", smollm2, "-p", 0, "-n", 4, "-d", 256, "-r", 1, "-t", 1, "--kv-method", "full,snapkv",
            "--kv-budget", 32, "-o", "json", "--bandwidth", 20)
    full, snap = json.loads(p.stdout)
    assert full["kv_method"] == "full" and snap["kv_method"] == "snapkv"
    assert snap["avg_ts"] > 0 and 0 < snap["kv_bytes"] < full["kv_bytes"] / 4


def test_budget_in_mib_compares_cache_types_at_equal_memory(bench, smollm2):
    """--kv-budget-mib: each cache type keeps as many entries per head as fit the MiB (q8_0 about 1.9x
    f16's), so the arenas hold about the same bytes; the JSON row names the MiB."""
    p = run(bench, "-m", smollm2, "-p", 0, "-n", 2, "-d", 512, "-r", 1, "-t", 1, "--kv-method", "snapkv",
            "--kv-budget-mib", 2, "-ctk", "f16,q8_0", "-ctv", "f16,q8_0", "-o", "json", "--bandwidth", 20)
    rows = {(r["type_k"], r["type_v"]): r for r in json.loads(p.stdout)}
    f16, q8 = rows[("f16", "f16")], rows[("q8_0", "q8_0")]
    assert f16["kv_budget_mib"] == q8["kv_budget_mib"] == 2 and f16["kv_budget"] is None
    # the kept entries fill the 2 MiB (+ the 3 decode slots per head)
    for r in (f16, q8):
        assert 2 * 1048576 * 0.9 < r["kv_bytes"] < 2 * 1048576 * 1.1, r["kv_bytes"]


def test_kv_flags_parse_with_full(bench, smollm2):
    p = run(bench, "-m", smollm2, "-p", 8, "-n", 0, "-r", 1, "-t", 1, "--kv-method", "full", "--kv-budget",
            "64,128", "--beta", "1.5", "-o", "json", "--bandwidth", 20)
    rows = json.loads(p.stdout)
    assert [r["kv_budget"] for r in rows] == [64, 128]
    assert all(r["beta"] == 1.5 for r in rows)
    assert "ignored" in p.stderr


def test_missing_model(bench, tmp_path):
    p = run(bench, "-m", tmp_path / "nope.gguf", "-p", 8, "-n", 0, check=False)
    assert p.returncode != 0 and "nope.gguf" in p.stderr and p.stdout == ""


def test_help(bench):
    p = run(bench, "--help")
    for flag in ("-m", "-p", "-n", "-d", "-r", "-t", "-o", "--device", "--kv-method", "--kv-budget", "--scores",
                 "--beta", "--bandwidth"):
        assert flag in p.stdout


def test_headkv_without_scores_uses_the_shipped_file(bench, smollm2):
    """As in the CLI and Python: --kv-method headkv alone takes the model's shipped R2 scores, and
    holds the same KV bytes as naming that file."""
    from headkv.scores import shipped_scores
    args = ["-m", smollm2, "-p", 0, "-n", 2, "-d", 300, "-r", 1, "-t", 1, "--kv-method", "headkv", "--kv-budget", 64,
            "-o", "json", "--bandwidth", 20]
    a = json.loads(run(bench, *args).stdout)[0]
    b = json.loads(run(bench, *args, "--scores", shipped_scores(smollm2)).stdout)[0]
    assert a["kv_bytes"] == b["kv_bytes"] > 0



def _batch_decode(*args):
    import os
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "batch_decode.py")
    p = subprocess.run([sys.executable, script, "--group", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_batch_decode_group_mode(smollm2):
    """bench/batch_decode.py's group mode (the GPU bench's code path, on the CPU with --group): one
    JSON line per measurement; with a KV limit of 2.5 compressed sequences the fit line counts two
    and names the refusal, and a batch size beyond the fit is reported as not fitting."""
    common = ["--model", smollm2, "--prompt-len", 40, "--steps", 2, "--kv-method", "snapkv", "--kv-budget", 12,
              "--threads", 2]
    rows = _batch_decode(*common, "--seqs", "1,2")
    assert [(r["kv"], r["mode"], r["seqs"]) for r in rows] == [
        (kv, m, n) for kv in ("full", "snapkv-12") for m, n in (("alone", 1), ("fit", 2), ("group", 1), ("group", 2))]
    for r in rows:
        if r["mode"] in ("alone", "group"):
            assert finite_positive(r["tps"]) and finite_positive(r["step_ms"]) and r["kv_bytes_per_seq"] > 0
    fit = [r for r in rows if r["mode"] == "fit"]
    assert all(r["limited_by"] == "fit_max" and r["refused"] is None for r in fit)
    per = fit[1]["kv_bytes_per_seq"]
    assert per < fit[0]["kv_bytes_per_seq"]  # a 40-token prompt at budget 12 against the full cache of its n_ctx
    rows = _batch_decode(*common, "--seqs", "1,3", "--skip-full", "--fit-max", 5, "--kv-limit", per * 5 // 2)
    assert [(r["mode"], r["seqs"]) for r in rows] == [("alone", 1), ("fit", 2), ("group", 1), ("group", 3)]
    assert rows[1]["limited_by"] == "refused" and "KV limit" in rows[1]["refused"]
    assert rows[1]["kv_bytes_total"] == 2 * per and rows[3]["fits"] is False and rows[3]["fit"] == 2
