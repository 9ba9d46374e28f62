"""headkv-eval ruler: every subtask's answer re-derived from the prompt's text alone (needles, VAR
chains and word lists parsed back, not read from the generator), prompt layout (context + query,
length, needle depths), reproducibility, the whole-token scoring on hand-checked cases, the report's
averages, and one tiny end-to-end run on SmolLM2 (CPU) in both prompt modes."""
import json
import re
import subprocess
from collections import Counter

import pytest

import headkv
from conftest import tool_path
from headkv.eval import metrics as M
from headkv.eval.report import markdown, summarize
from headkv.eval.ruler import MAX_GEN, NIAH_SUBTASKS, SUBTASKS, VALUE_KINDS, RulerTask
from headkv.eval.runner import read_jsonl


@pytest.fixture(scope="module")
def tok(smollm2):
    return headkv.Model(smollm2, n_ctx=256, n_threads=1)


def _text(tok, ids):
    return tok.detokenize(ids).decode("utf-8")


def _document(tok, ex):
    """The user turn's document: the context's text after the instruction's blank line."""
    return _text(tok, ex["context"]).split("<|im_start|>user\n", 1)[1].split("\n\n", 1)[1]


# ---- answers re-derived from the text ----
_NEEDLE = re.compile(r"The special magic (number|code|phrase) for ([a-z]+-[a-z]+) is: ([^.]+)\.")
_KIND_RE = {"number": r"[1-9]\d*", "code": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}", "phrase": r"[a-z]+( [a-z]+){0,2}"}


def _niah_answers(tok, ex):
    values = {}
    for noun, key, val in _NEEDLE.findall(_document(tok, ex)):
        assert re.fullmatch(_KIND_RE[noun], val), (noun, val)
        values.setdefault(key, []).append(val)
    q = _text(tok, ex["query"])
    keys = re.split(r", | and ", re.search(r"magic \w+ for (.+?) mentioned in the provided text\?", q).group(1))
    assert all(k in values for k in keys)
    st = ex["subtask"]
    if st in ("niah_single", "niah_multikey"):
        assert len(keys) == 1 and len(values[keys[0]]) == 1
        assert len(values) == (1 if st == "niah_single" else 4)        # 3 distractor keys
    elif st == "niah_multivalue":
        assert len(keys) == 1 and 2 <= len(values[keys[0]]) <= 4 and len(values) == 1
    else:
        assert 2 <= len(keys) <= 4 and len(values) == len(keys)
    return [v for k in keys for v in values[k]]


def _vt_answers(tok, ex):
    doc = _document(tok, ex)
    assigns = re.findall(r"VAR ([A-Z]{5}) = (\d+|VAR [A-Z]{5})\.", doc)
    value = re.search(r"assigned the value (\d+) in the text above", _text(tok, ex["query"])).group(1)
    chain = {name for name, rhs in assigns if rhs == value}
    while True:
        more = {name for name, rhs in assigns if rhs.startswith("VAR ") and rhs[4:] in chain} - chain
        if not more:
            break
        chain |= more
    assert len(chain) == len(assigns) // 2 and 3 <= len(chain) <= 5       # 2-4 hops, and a distractor chain
    assert len({rhs for _, rhs in assigns if rhs.isdigit()}) == 2
    return chain


def _cwe_answers(tok, ex):
    lines = _document(tok, ex).split("\n")
    items = [re.fullmatch(r"(\d+)\. ([a-z]+)", ln).groups() for ln in lines]
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    top = Counter(w for _, w in items).most_common()
    assert top[9][1] >= 3 * top[10][1]                  # the 10 stand out
    return {w for w, _ in top[:10]}


def _fwe_answers(tok, ex):
    words = _document(tok, ex).split()
    assert all(re.fullmatch(r"[a-z]{5}", w) for w in words)
    top = Counter(words).most_common()
    assert top[0][1] > top[1][1] > top[2][1] > top[3][1]
    return [w for w, _ in top[:3]]


def _check_layout(tok, ex, length):
    assert ex["context"] + ex["query"] == ex["prompt"]
    n = len(ex["prompt"]) + ex["max_gen"]
    assert 0.97 * length <= n <= length, (ex["id"], n)
    assert ex["max_gen"] == MAX_GEN[ex["subtask"]]
    q = _text(tok, ex["query"])
    assert q.startswith("\n\n") and "<|im_start|>assistant\n" in q
    assert ex["question"] not in _text(tok, ex["context"]) and ex["question"] in q   # asked in the query only


def _check_depths(tok, ex):
    """Each needle sits at the last sentence boundary at or before its depth (a fraction of the
    text without needles): none between the needle and the depth, up to the few separator
    characters that the removed needles leave behind."""
    doc = _document(tok, ex)
    clean = doc
    for nd in ex["needles"]:
        clean = clean.replace(nd, "", 1)
    for nd, d in zip(ex["needles"], ex["depths"]):
        before = doc[:doc.index(nd)]
        for other in ex["needles"]:
            before = before.replace(other, "", 1)
        frac = len(before) / len(clean)
        assert d - 0.25 <= frac <= d + 0.01, (ex["id"], nd, d, frac)
        gap = clean[len(before) + 25:int(d * len(clean)) - 25]
        assert not re.search(r"[.!?]\s|\n\n", gap), (ex["id"], nd, d, frac, gap)


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_answers_rederived_from_prompt_text(tok, subtask):
    for seed, indices in ((0, range(6)), (1, (0, 3)), (7, (1,))):
        task = RulerTask([subtask], [1024], seed=seed)
        for i in indices:
            ex = task.make(tok, subtask, 1024, i)
            _check_layout(tok, ex, 1024)
            if subtask in NIAH_SUBTASKS:
                assert sorted(_niah_answers(tok, ex)) == sorted(ex["answers"])
                assert ex["kind"] == VALUE_KINDS[i % len(VALUE_KINDS)]
                _check_depths(tok, ex)
                assert ex["depth"] == ex["depths"][0]
            elif subtask == "vt":
                assert _vt_answers(tok, ex) == set(ex["answers"]) and len(ex["answers"]) == len(set(ex["answers"]))
                _check_depths(tok, ex)
            elif subtask == "cwe":
                assert _cwe_answers(tok, ex) == set(ex["answers"]) and len(ex["answers"]) == 10
            else:
                assert _fwe_answers(tok, ex) == ex["answers"]


def test_value_kinds_span_lengths(tok):
    """niah_single cycles through the value kinds; numbers take one token per digit."""
    task = RulerTask(["niah_single"], [512])
    for i, kind in enumerate(VALUE_KINDS):
        ex = task.make(tok, "niah_single", 512, i)
        (val,) = ex["answers"]
        if kind.startswith("number"):
            assert len(val) == int(kind[6:]) and len(tok.tokenize(" " + val, add_bos=False)) == len(val) + 1
        elif kind == "uuid":
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}", val)
        else:
            assert 1 <= len(val.split()) <= 3


def test_reproducible_distinct_and_grid_free(tok):
    a = RulerTask(lengths=[1024], n=2, seed=3).examples(tok)
    b = RulerTask(lengths=[1024], n=2, seed=3).examples(tok)
    assert [e["prompt"] for e in a] == [e["prompt"] for e in b] and [e["id"] for e in a] == [e["id"] for e in b]
    assert len(a) == len(SUBTASKS) * 2 * 2
    # both modes share one prompt; ids and modes tell them apart
    by = {}
    for e in a:
        base, mode = e["id"].rsplit("/", 1)
        assert mode == e["mode"] and mode in ("aware", "agnostic")
        by.setdefault(base, []).append(e)
    assert all(len(v) == 2 and v[0]["prompt"] == v[1]["prompt"] for v in by.values())
    # distinct indices -> distinct examples; another seed -> other examples
    for st in SUBTASKS:
        e0, e1 = by[f"ruler/{st}/1024/0"][0], by[f"ruler/{st}/1024/1"][0]
        assert e0["prompt"] != e1["prompt"] and e0["answers"] != e1["answers"]
        other = RulerTask([st], [1024], seed=4).make(tok, st, 1024, 0)
        assert other["answers"] != e0["answers"]
        # an example depends on (seed, subtask, length, index) only, not on the rest of the grid
        assert RulerTask([st], [1024], n=1, seed=3).make(tok, st, 1024, 1)["prompt"] == e1["prompt"]


def test_errors(tok):
    with pytest.raises(headkv.InvalidArgumentError, match="unknown ruler subtask"):
        RulerTask(["nosuch"])
    with pytest.raises(headkv.InvalidArgumentError, match="modes"):
        RulerTask(modes=["sideways"])
    with pytest.raises(headkv.InvalidArgumentError):
        RulerTask(["cwe"], [256]).make(tok, "cwe", 256, 0)


# ---- scoring ----
def test_match_all_whole_tokens():
    assert M.match_all("The number is 13927061.", ["1392"]) == 0.0          # prefix of a longer number
    assert M.match_all("The number is 1392.", ["13927061"]) == 0.0          # a 10-digit answer's head
    assert M.match_all("It is 1392.", ["1392"]) == 1.0
    assert M.match_all("x1392 and 1392y", ["1392"]) == 0.0
    assert M.match_all("Values: 4417, 9020.", ["4417", "9020", "1234"]) == pytest.approx(2 / 3)
    assert M.match_all("- 4417\n- 9020", ["9020", "4417"]) == 1.0
    assert M.match_all("AMBER\n falcon!", ["amber falcon"]) == 1.0           # case and whitespace runs aside
    assert M.match_all("amber", ["amber falcon"]) == 0.0
    assert M.match_all("3fa85f64-5717", ["3fa85f64-5717-4562"]) == 0.0
    assert M.match_all("KPXQW, MZTRAB", ["KPXQW", "MZTRA"]) == 0.5
    assert M.match_all("anything", []) == 0.0
    # niah's matcher agrees: whole words only
    assert M.contains_answer("1392706", "1392") == 0.0 and M.contains_answer("1392.", "1392706") == 0.0
    assert M.contains_answer(" 1392706.", "1392706") == 1.0


def test_task_score_exact():
    t = RulerTask()
    mk = {"subtask": "niah_multikey", "answers": ["4417"], "distractors": ["9020", "1111", "2222"]}
    assert t.score(mk, " 4417.") == {"score": 1.0, "exact": 1.0}
    assert t.score(mk, " 4417, 9020, 1111") == {"score": 1.0, "exact": 0.0}   # every value listed
    assert t.score(mk, " 441.") == {"score": 0.0, "exact": 0.0}
    mv = {"subtask": "niah_multivalue", "answers": ["12", "34", "56"]}
    assert t.score(mv, "12 and 56") == {"score": pytest.approx(2 / 3)}


def test_niah_digits(tok):
    from headkv.eval.niah import NiahTask, fact_needles
    four = fact_needles(4, 0, 2048, 0.5)
    mixed = fact_needles(4, 0, 2048, 0.5, digits=(4, 7, 10))
    assert [len(n["answer"]) for n in mixed] == [4, 7, 10, 4]
    assert mixed[0] == dict(four[0]) and mixed[3] == four[3]       # the 4-digit needles are unchanged
    assert fact_needles(2, 0, 2048, 0.5, digits=(4, 7, 10)) == mixed[:2]
    exs = NiahTask([512], [0.5], 3, digits=(4, 7, 10)).examples(tok)
    assert [e["id"] for e in exs] == ["niah/512/0.5/0", "niah/512/0.5/1/d7", "niah/512/0.5/2/d10"]
    assert [e["kind"] for e in exs] == ["4-digit", "7-digit", "10-digit"]
    t = NiahTask([512], [0.5], 3)
    assert t.score(exs[2], f" {exs[2]['answer'][:4]}.")["accuracy"] == 0.0
    assert t.score(exs[2], f" {exs[2]['answer']}.")["accuracy"] == 1.0


# ---- report ----
def _rec(id_, st, mode, method, budget, score, length=2048, kind=None, exact=None):
    cfg = "full" if method == "full" else f"{method}@{budget}"
    m = {"score": score}
    if exact is not None:
        m["exact"] = exact
    r = {"task": "ruler", "id": f"{id_}/{mode}", "config": cfg, "method": method, "budget": budget, "seed": 0,
         "length": length, "subtask": st, "mode": mode, "metrics": m, "kv_bytes": 10, "prediction": "", "n_prompt": 9}
    if kind:
        r["kind"] = kind
    return r


def test_report_ruler_averages():
    recs = []
    for mode, snap in (("aware", (1.0, 0.0, 0.5)), ("agnostic", (0.0, 0.0, 0.25))):
        for method, budget, s in (("full", None, (1.0, 1.0, 1.0)), ("snapkv", 64, snap)):
            recs.append(_rec("a", "niah_single", mode, method, budget, s[0], kind="number4", exact=s[0]))
            recs.append(_rec("b", "niah_single", mode, method, budget, s[1], kind="number10", exact=s[1], length=4096))
            recs.append(_rec("c", "vt", mode, method, budget, s[2]))
    t = summarize(recs)["ruler"]
    # RULER average = mean over subtasks (niah_single 0.5, vt 0.5), not over the 3 examples (0.5)
    row = t["configs"]["snapkv@64"]
    assert row["ruler_aware"] == pytest.approx((0.5 + 0.5) / 2) and row["niah_aware"] == pytest.approx(0.5)
    assert row["ruler_agnostic"] == pytest.approx((0.0 + 0.25) / 2) and row["niah_agnostic"] == 0.0
    assert "score" not in row       # example means would mix the modes
    assert t["by_subtask"]["agnostic"]["vt"]["snapkv@64"] == 0.25
    assert t["by_kind"]["aware"] == {"number4": {"full": 1.0, "snapkv@64": 1.0},
                                     "number10": {"full": 1.0, "snapkv@64": 0.0}}
    assert t["by_length"]["snapkv@64"][4096] == {"ruler_aware": 0.0, "ruler_agnostic": 0.0}
    md = markdown({"ruler": t})
    assert "**RULER average (mean over subtasks)**, query-aware / query-agnostic" in md
    assert "| snapkv | 0.500 / 0.125 | 1.000 / 1.000 |" in md
    assert "| snapkv@64 | agnostic | 0.000 | 0.250 | 0.000 | 0.125 |" in md
    assert "NIAH average" in md and "RULER average by length" in md and "by value kind" in md


def test_cli_builds_ruler(tmp_path):
    from headkv.eval.cli import build_tasks, parser
    a = parser().parse_args(["run", "--tasks", "ruler,niah", "--out", str(tmp_path), "--ruler-subtasks", "vt,cwe",
                             "--ruler-lengths", "1024", "--ruler-n", "2", "--ruler-mode", "agnostic",
                             "--niah-digits", "4,12"])
    r, n = build_tasks(a.tasks, a)
    assert (r.name, r.subtasks, r.lengths, r.n, r.modes) == ("ruler", ["vt", "cwe"], [1024], 2, ["agnostic"])
    assert n.digits == [4, 12] and n.max_gen == 18
    a = parser().parse_args(["ruler", "--out", str(tmp_path)])
    (r,) = build_tasks([a.command], a)
    assert r.modes == ["aware", "agnostic"] and r.lengths == [2048, 4096, 8192] and r.subtasks == list(SUBTASKS)


def test_no_chat_gives_completion_style_prompts(tmp_path, tok):
    """--no-chat (base models): ruler, niah and reasoning needles build plain-text prompts, the same
    instruction, document and question without the template's turn markers; the answers are unchanged."""
    from headkv.eval.cli import build_tasks, parser
    a = parser().parse_args(["run", "--tasks", "ruler,niah,reasoning-needles", "--out", str(tmp_path), "--no-chat",
                             "--ruler-subtasks", "niah_single", "--ruler-lengths", "1024", "--ruler-n", "1",
                             "--lengths", "1024", "--depths", "0.5", "--needles-per-cell", "1"])
    tasks = build_tasks(a.tasks, a)
    assert [t.chat for t in tasks] == [False, False, False]
    chat = RulerTask(["niah_single"], [1024], n=1).make(tok, "niah_single", 1024, 0)
    r = tasks[0].make(tok, "niah_single", 1024, 0)
    marker = "<|im_start|>"
    assert marker in tok.detokenize(chat["context"]).decode() and r["answers"] == chat["answers"]
    for t in tasks:
        ex = t.make(tok, "niah_single", 1024, 0) if t.name == "ruler" else t.examples(tok)[0]
        text = tok.detokenize(ex["prompt"] if "prompt" in ex else ex["context"] + ex["query"]).decode()
        assert marker not in text and "im_end" not in text, t.name
        assert len(ex["prompt"] if "prompt" in ex else ex["context"] + ex["query"]) <= 1024


# ---- end to end on SmolLM2 (CPU) ----
def test_ruler_end_to_end_both_modes(tmp_path, smollm2):
    """niah_single at 1024 tokens, seed 0, example 0 (a 4-digit value): the full cache answers it
    in both modes (checked before writing this test); snapkv@128 runs the agnostic mode with the
    question in its decode slots."""
    out = tmp_path / "out"
    p = subprocess.run([tool_path("headkv-eval"), "ruler", "--ruler-subtasks", "niah_single", "--ruler-lengths", "1024",
                        "--ruler-n", "1", "--methods", "full,snapkv", "--budgets", "128", "--seed", "0",
                        "-m", smollm2, "-c", "1024", "-t", "2", "--no-progress", "--no-plots", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    recs = read_jsonl(out / "results.jsonl")
    assert len(recs) == 4
    assert {(r["config"], r["mode"]) for r in recs} == {(c, m) for c in ("full", "snapkv@128")
                                                       for m in ("aware", "agnostic")}
    for r in recs:
        assert r["id"] == f"ruler/niah_single/1024/0/{r['mode']}" and r["subtask"] == "niah_single"
        assert r["metrics"] == RulerTask().score({"subtask": "niah_single", "answers": r["answers"]}, r["prediction"])
    full = [r for r in recs if r["config"] == "full"]
    assert all(r["metrics"]["score"] == 1.0 and r["answers"][0] in r["prediction"] for r in full), full
    kv = {(r["config"], r["mode"]): r["kv_bytes"] for r in recs}
    assert kv[("snapkv@128", "aware")] < kv[("snapkv@128", "agnostic")] < kv[("full", "agnostic")]
    s = json.loads((out / "summary.json").read_text())["ruler"]
    assert s["configs"]["full"]["ruler_aware"] == 1.0 and s["configs"]["full"]["ruler_agnostic"] == 1.0
    md = (out / "summary.md").read_text()
    assert "**RULER average (mean over subtasks)**, query-aware / query-agnostic" in md
    assert "| full | agnostic | 1.000 | 1.000 | 1.000 |" in md
