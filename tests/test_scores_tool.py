"""headkv-scores (issue 6): the scoring rules by hand, needle/haystack generators, the attention
probe and the native path against the PyTorch reference (transformers on the same GGUF), the CLI
end to end, the refusal, the output formats and the shipped SmolLM2 score files."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import headkv
from headkv import _core
from headkv import needles as nd
from headkv import scores as hs
from headkv.haystack import build_context, load_haystack, needle_char_span
from headkv.scoring import cli, rules, run

from conftest import smollm2_path

# Native vs reference per-head scores: attention probabilities agree to ~2e-6 (fp32 summation
# order); a head's example score is a sum of <= ~12 such values divided by the span length.
SCORE_ATOL = 1e-4


# ---- the rules, by hand ----

def test_r2_rule_hand_computed():
    # one layer, two heads, 6 positions, answer span [2, 4) -> k = 2
    att = np.array([[[0.05, 0.05, 0.40, 0.30, 0.10, 0.10],     # top-2 = {2, 3}, both inside
                     [0.50, 0.05, 0.30, 0.05, 0.05, 0.05]]])   # top-2 = {0, 2}, only 2 inside
    got = rules.r2_step(att, 2, 4)
    np.testing.assert_allclose(got, [[(0.40 + 0.30) / 2, 0.30 / 2]])
    # exact tie at the k-th value: the lower position wins (position 1 over 3 for head 0)
    tie = np.array([[[0.1, 0.3, 0.3, 0.3]]])
    np.testing.assert_allclose(rules.r2_step(tie, 2, 4), [[0.3 / 2]])        # top-2 = {1, 2}


def test_r_rule_hand_computed():
    ids = [10, 11, 12, 13, 14]
    att = np.array([[[0.1, 0.1, 0.6, 0.1, 0.1],     # top-1 = 2 (token 12), inside [1, 4)
                     [0.7, 0.1, 0.1, 0.05, 0.05],   # top-1 = 0, outside
                     [0.1, 0.1, 0.1, 0.6, 0.1]]])   # top-1 = 3 (token 13) inside
    got = rules.r_step(att, 1, 4, token=12, prompt_ids=ids)
    np.testing.assert_allclose(got, [[1 / 3, 0.0, 0.0]])     # head 2 copies 13, the step emitted 12


class _Recorded:
    """A backend that replays recorded attention tensors and tokens."""
    name = "recorded"

    def __init__(self, steps):
        self._steps = steps

    def steps(self, ids, max_steps, is_stop):
        for att, tok in self._steps[:max_steps]:
            yield att, tok
            if is_stop(tok):
                return


def test_example_score_accumulates_over_steps_and_keeps_by_f1(model):
    # A recorded 2-step decode over a 6-token prompt; the answer span is tokens [2, 4).
    answer = "apple pie"
    ans_ids = model.tokenize(" apple pie", add_bos=False)
    assert len(ans_ids) == 2
    L, H = 30, 9
    a1 = np.full((L, H, 6), 0.02); a1[:, :, 2] = 0.9          # step 1: mass on position 2
    a2 = np.full((L, H, 7), 0.01); a2[:, :, 3] = 0.5; a2[:, :, 0] = 0.6   # step 2: top-2 = {0, 3}
    a2[0, 0] = 1 / 7                                          # head (0, 0): uniform, ties -> {0, 1}
    rec = {"id": "hand", "ids": [1, 2] + ans_ids + [5, 6], "span_tokens": [2, 4], "n_answer_tokens": 2,
           "answer": answer}
    sc, res = run.score_one(_Recorded([(a1, ans_ids[0]), (a2, ans_ids[1])]), model, "R2", rec)
    # step 1: top-2 = {2, one 0.02 position}; inside: 0.9 -> 0.9/2; step 2: 0.5/2
    assert sc[5, 5] == pytest.approx(0.9 / 2 + 0.5 / 2)
    assert sc[0, 0] == pytest.approx(0.9 / 2 + 0.0)
    assert res["response"] == "apple pie" and res["f1"] == 1.0 and res["kept"]
    # R rule on the same steps: top-1 at 2 holds ans_ids[0]? no (prompt token there is ans_ids[0])
    rec_r = dict(rec)
    sc_r, _ = run.score_one(_Recorded([(a1, ans_ids[0]), (a2, ans_ids[1])]), model, "R", rec_r)
    # step 1: top-1 = 2, prompt[2] == ans_ids[0] == generated -> 1/2; step 2: top-1 = 0 (outside)
    assert sc_r[5, 5] == pytest.approx(0.5) and sc_r[0, 0] == pytest.approx(0.5)
    # a wrong answer is scored but not kept; the mean is over kept examples only
    wrong = model.tokenize(" fish soup", add_bos=False)
    sc_w, res_w = run.score_one(_Recorded([(a1, wrong[0]), (a2, wrong[1])]), model, "R2", rec)
    assert not res_w["kept"] and res_w["f1"] == 0.0
    mean, stack = rules.aggregate([sc, sc_w, 2 * sc], [True, False, True])
    assert stack.shape == (2, L, H)
    np.testing.assert_allclose(mean, 1.5 * sc)


def test_f1_matches_paper_normalization():
    assert nd.f1_score("The Apple pie.", "apple pie") == 1.0
    assert nd.f1_score("apple", "apple pie") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert nd.f1_score("", "apple pie") == 0.0


# ---- generators ----

def _stage_facts(needle):
    """(name, childhood activity, adult activity, adult sentence first?) read off a life-stage
    needle's text by its life-stage words, independently of the generator."""
    sents = [x.strip() for x in re.split(r"(?<=\.) ", needle)]
    assert len(sents) == 2, needle
    got = {}
    for i, x in enumerate(sents):
        stage = re.match(r"As (a child|an adult) ", x).group(1)
        name, act = re.search(r"(\w+)'s favourite activity (?:was|became) (.+)\.$", x).groups()
        got[stage] = (name, act, i)
    assert got["a child"][0] == got["an adult"][0]
    return got["a child"][0], got["a child"][1], got["an adult"][1], got["an adult"][2] == 0


def test_needles_reproducible_disjoint_splits_and_correct_r2_answers():
    a = nd.generate("R2", 200, seed=3)
    assert a == nd.generate("R2", 200, seed=3) and a == nd.generate("R2", 200, seed=3, family="life-stage")
    assert a != nd.generate("R2", 200, seed=4)
    names = lambda exs: {w for e in exs for w in re.findall(r"(\w+)'s favourite", e["needle"])}  # noqa: E731
    for fam in nd.R2_FAMILIES:
        sc = nd.generate("R2", 200, seed=3, family=fam)
        ev = nd.generate("R2", 200, seed=3, split="eval", family=fam)
        assert names(sc) and names(ev) and not names(sc) & names(ev)
        assert len({e["needle"] for e in sc}) > 190          # varied, not a handful of strings
    # life-stage (default): the answer is the activity of the adult stage, the question names no stage
    adult_first = 0
    for e in a:
        name, child, adult, first = _stage_facts(e["needle"])
        assert e["answer"] == e["span"] == adult and e["distractor"] == child != adult, e
        assert e["question"] == f"What is {name}'s favourite activity today?"
        assert not re.search(r"adult|child|became|was", e["question"] + e["answer_prefix"])
        assert "activity is" not in e["needle"]     # the prefix's wording points at neither sentence
        assert e["family"] == "life-stage" and e["template"] == ("stage-reverse" if first else "stage-chrono")
        adult_first += first
    assert 70 <= adult_first <= 130           # both orders: neither the first nor the last fact answers
    # comparison: the answer is the attribute of the person who wins the comparison
    for e in nd.generate("R2", 200, seed=3, family="comparison"):
        assert e["answer"] in e["needle"] and e["span"] == e["answer"] and e["distractor"] != e["answer"]
        facts = dict(re.findall(r"(\w+)'s favourite activity is ([^.]+)\.", e["needle"]))
        nums = {n: int(v) for n, v in re.findall(r"(\w+) is (\d+) ", e["needle"])}
        word = re.search(r"the (\w+) one of", e["question"]).group(1)
        pick = (max if word in ("older", "taller") else min)(nums, key=nums.get)
        assert facts[pick] == e["answer"], e
        assert pick not in e["answer_prefix"] or e["answer_prefix"].count(pick) == 1  # names both, picks none
    r = nd.generate("R", 30, seed=0)
    assert {e["template"] for e in r} == {"city-best", "favourite-food", "password"}
    assert all(e["answer"] in e["needle"] for e in r)
    with pytest.raises(ValueError, match="family"):
        nd.generate("R", 3, family="comparison")
    with pytest.raises(ValueError, match="family"):
        nd.generate("R2", 3, family="ages")


def test_answer_span_tokens_cover_the_answer(model):
    hay = load_haystack()
    for kind in ("R", "R2"):
        for rec in run.grid_examples(model, kind, hay, [200], [0.0, 1.0], 2, seed=5):
            p = run.prepare(model, rec)
            s, e = p["span_tokens"]
            assert model.detokenize(p["ids"][s:e]).decode().strip() == rec["answer"]
            # the span is the one inside the needle: the needle's tokens surround it
            assert rec["needle"] in model.detokenize(p["ids"]).decode()


def test_build_context_length_depth_and_verbatim_needle(model, essays):
    hay = load_haystack()
    assert len(hay) == len(essays)
    tok = lambda s: model.tokenize(s, add_bos=False)  # noqa: E731
    needle = "The password of the red door is falcon meadow."
    pos = []
    for d in (0.0, 0.5, 1.0):
        c = build_context(tok, hay, 800, d, needle, offset=2)
        n = len(tok(c))
        assert 700 <= n <= 804, n
        s, e = needle_char_span(c, needle)
        pos.append(s / len(c))
        assert c.count(needle) == 1
    assert pos[0] == 0.0 and 0.3 < pos[1] < 0.55 and pos[2] > 0.9
    with pytest.raises(headkv.InvalidArgumentError):
        build_context(tok, hay, 800, 1.5, needle)
    with pytest.raises(headkv.HeadkvIOError):
        load_haystack("/nonexistent/folder")


# ---- native vs reference ----

@pytest.fixture(scope="module")
def torch_backend(smollm2):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from headkv.scoring.backends import TorchBackend
    return TorchBackend(smollm2, device="cpu", threads=2)


def test_attention_probe_matches_transformers(smollm2, torch_backend, essays):
    m = headkv.Model(smollm2, n_ctx=1024, n_threads=2, type_k="f32", type_v="f32")  # fp32 K/V as the oracle
    m.attention_probe(True)
    ids = m.tokenize(essays[0][:1500])
    from headkv.scoring.backends import NativeBackend
    stop = lambda t: False  # noqa: E731
    nat = list(NativeBackend(m).steps(ids, 3, stop))
    ref = list(torch_backend.steps(ids, 3, stop))
    assert [t for _, t in nat] == [t for _, t in ref]
    for i, ((a, _), (b, _)) in enumerate(zip(nat, ref)):
        assert a.shape == b.shape == (30, 9, len(ids) + i)   # step i's query sees the prompt + i tokens
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(headkv.InvalidArgumentError):
        headkv.Model(smollm2, n_ctx=256, kv=headkv.KVConfig(method="snapkv", scores=None)).attention_probe(True)


@pytest.mark.parametrize("method", ["R2", "R"])
def test_native_equals_reference_on_fixed_grid(smollm2, torch_backend, method):
    m = headkv.Model(smollm2, n_ctx=1024, n_threads=2, type_k="f32", type_v="f32")  # fp32 K/V as the oracle
    hay = load_haystack()
    recs = run.grid_examples(m, method, hay, [250], [0.0, 0.35, 0.7, 1.0], 1, seed=11)
    from headkv.scoring.backends import NativeBackend
    nat_s, nat_r = run.score_records(NativeBackend(m), m, method, recs, progress=False)
    ref_s, ref_r = run.score_records(torch_backend, m, method, recs, progress=False)
    assert [r["generated"] for r in nat_r] == [r["generated"] for r in ref_r]
    assert [r["kept"] for r in nat_r] == [r["kept"] for r in ref_r]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(nat_s, ref_s))
    print(f"{method}: kept {sum(r['kept'] for r in nat_r)}/{len(recs)}, max |dscore| {worst:.2e}")
    assert worst < SCORE_ATOL
    assert any(np.asarray(s).max() > 0 for s in nat_s)   # the grid exercises the rule


# ---- the CLI ----

def _cli(tmp_path, *extra):
    out = tmp_path / "s.json"
    argv = ["-m", str(smollm2_path()), "--backend", "native", "--lengths", "200", "--depths", "0.5",
            "--per-cell", "3", "-t", "2", "-q", "-o", str(out), *extra]
    return cli.main(argv), out


def test_cli_end_to_end_headkv_official_plot(tmp_path, smollm2):
    pytest.importorskip("matplotlib")
    rc, out = _cli(tmp_path, "--min-kept", "1", "--plot", str(tmp_path / "s.png"))
    assert rc == 0
    doc = json.loads(out.read_text())
    s, method = hs.load_scores(out, smollm2)
    assert method == "R2" and s.shape == (30, 9) and s.max() > 0
    assert doc["settings"]["n_examples"] == 3 and 1 <= doc["settings"]["n_kept"] <= 3
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ex = [json.loads(x) for x in (tmp_path / "s.json.examples.jsonl").read_text().splitlines()]
    assert len(ex) == 3 and all({"context", "question", "answer", "result", "seed"} <= set(e) for e in ex)
    assert sum(e["result"]["kept"] for e in ex) == doc["settings"]["n_kept"]
    # official layout: per-example lists whose means are the headkv scores
    (tmp_path / "o").mkdir()
    rc, off = _cli(tmp_path / "o", "--min-kept", "1", "--format", "official")
    assert rc == 0
    so, mo = _core.load_scores(str(off), None)
    assert mo is None
    np.testing.assert_allclose(so, s, atol=1e-12)
    raw = json.loads(off.read_text())
    assert len(raw) == 270 and len(raw["0-0"]) == doc["settings"]["n_kept"]
    # replaying the written examples reproduces the scores
    rc, out2 = _cli(tmp_path / "o", "--min-kept", "1", "--examples", str(tmp_path / "s.json.examples.jsonl"),
                    "--write-examples", str(tmp_path / "replay.jsonl"))
    assert rc == 0
    np.testing.assert_allclose(hs.load_scores(out2)[0], s, atol=1e-12)


def test_cli_refuses_too_few_kept(tmp_path, capsys):
    rc, out = _cli(tmp_path, "--min-kept", "50")
    assert rc == 3 and not out.exists()
    assert "refusing to write" in capsys.readouterr().err
    rc, out = _cli(tmp_path, "--method", "R", "--family", "comparison")
    assert rc == 1 and not out.exists() and "--family applies to --method R2 only" in capsys.readouterr().err


def test_cli_user_examples_and_bad_records(tmp_path, capsys):
    good = tmp_path / "ex.jsonl"
    ctx = ("The museum opens at nine. Visitors must leave bags at the desk. The cafe on the top floor "
           "serves lemon cake and mint tea. Guided tours start every hour.")
    good.write_text(json.dumps({"context": ctx, "question": "What does the cafe serve?",
                                "answer": "lemon cake and mint tea"}) + "\n")
    rc, out = _cli(tmp_path, "--examples", str(good), "--allow-few", "--min-kept", "5")
    res = json.loads((tmp_path / "s.json.examples.jsonl").read_text())["result"]
    assert res["steps"] >= 1 and res["generated"]
    # kept: written with --allow-few below --min-kept; not kept: 0 examples is refused even so
    assert (rc, out.exists()) == ((0, True) if res["kept"] else (3, False))
    assert f"{int(res['kept'])}/1 examples kept" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": ctx, "question": "q?", "answer": "not in the text"}) + "\n")
    rc, _ = _cli(tmp_path, "--examples", str(bad))
    assert rc == 1 and "bad.jsonl:1" in capsys.readouterr().err


def test_python_m_and_console_script():
    r = subprocess.run([sys.executable, "-m", "headkv.scores", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--backend" in r.stdout and "--format" in r.stdout
    from conftest import tool_path
    r = subprocess.run([tool_path("headkv-scores"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--min-kept" in r.stdout


# ---- shipped files ----

def test_shipped_smollm2_files_and_default_headkv(smollm2):
    for method in ("R", "R2"):
        p = hs.shipped_scores(smollm2, method)
        s, got = hs.load_scores(p, smollm2)
        assert got == method and s.shape == (30, 9) and np.isfinite(s).all() and s.max() > 0
        settings = json.load(open(p))["settings"]
        assert settings["n_kept"] >= 20 and settings["backend"] in ("native", "reference")
    m = headkv.Model(smollm2, n_ctx=1024, n_threads=2, kv=headkv.KVConfig(method="headkv", budget=64))
    assert m.kv.scores == hs.shipped_scores(smollm2, "R2")
    ids = m.tokenize(" ".join(["The cat sat on the mat."] * 60))
    m.eval(ids)
    caps = m.kv_stats()["caps"]
    r2 = hs.load_scores(hs.shipped_scores(smollm2, "R2"))[0]
    ref = _core.plan_budget("headkv", r2, 30, 9, 3, 64, 8, 0, 1.0, len(ids))
    np.testing.assert_array_equal(caps, ref)
    assert caps.min() < caps.max()          # budgets follow the scores, not uniform
    assert len(list(m.generate(ids, temperature=0.0, max_tokens=4))) > 0


def test_no_shipped_file_is_a_clear_error(tmp_path, smollm2):
    from gguf_factory import write_tiny_llama
    p = tmp_path / "tiny.gguf"
    write_tiny_llama(p, smollm2)
    with pytest.raises(headkv.InvalidArgumentError, match="no shipped R2 head-score file matches"):
        hs.shipped_scores(p, "R2")
    with pytest.raises(headkv.InvalidArgumentError, match="headkv-scores"):
        headkv.Model(str(p), n_ctx=64, kv=headkv.KVConfig(method="headkv"))
