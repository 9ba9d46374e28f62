"""headkv.eval metrics against hand-computed cases (LongBench's rules, LooGLE's cloze match,
needle matching, KL/NLL), and the data loaders' errors. No model needed."""
import json
import math

import numpy as np
import pytest

import headkv
from headkv.eval import longbench as lb
from headkv.eval import loogle as lg
from headkv.eval import metrics as M


# ---- QA F1 and LongBench's normalization ----
@pytest.mark.parametrize("text,want", [
    ("The Cat, sat on a mat!", "cat sat on mat"),      # lowercase, punctuation, articles
    ("U.S.A.", "usa"),                                   # punctuation removed, not split
    ("  hello \n\t world ", "hello world"),              # whitespace collapsed
    ("theater and ant", "theater and ant"),             # articles only as whole words
    ("An apple, THE pear.", "apple pear"),
])
def test_normalize_answer(text, want):
    assert M.normalize_answer(text) == want


def test_qa_f1_hand_cases():
    # pred {cat, sat} vs truth {cat, sat, down}: P = 1, R = 2/3 -> F1 = 0.8
    assert M.qa_f1_score("The cat sat", "a cat sat down") == pytest.approx(0.8)
    # multiset overlap: x x y vs x y y -> 2 shared, P = R = 2/3
    assert M.qa_f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert M.qa_f1_score("Paris!", "paris") == 1.0
    assert M.qa_f1_score("London", "Paris") == 0.0
    assert M.qa_f1_score("the", "a") == 0.0  # both normalize to nothing


def test_chinese_normalization_and_f1():
    assert M.normalize_zh_answer("你好，世界！ Hello") == "你好世界hello"
    assert M.qa_f1_zh_score("北京。", "北京") == 1.0
    # jieba words 我/爱/北京 vs 北京: P = 1/3, R = 1 -> 0.5 (characters would give 2/3)
    assert M.qa_f1_zh_score("我爱北京", "北京") == pytest.approx(0.5)


def test_rouge_l():
    # LCS "the cat on the mat" = 5 of 6 tokens each way
    assert M.rouge_l("the cat was on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert M.rouge_l("", "anything") == 0.0
    # Chinese over jieba words: 我/爱/北京 vs 我/爱/上海 -> LCS 2 of 3
    assert M.rouge_l_zh("我爱北京", "我爱上海") == pytest.approx(2 / 3)


def test_classification_retrieval_count_code():
    classes = ["location", "other location", "person"]
    # "location" is dropped: a strict substring of the answer
    assert M.classification_score("other location", "other location", all_classes=classes) == 1.0
    assert M.classification_score("person or location", "location", all_classes=classes) == 0.5
    assert M.classification_score("no idea", "person", all_classes=classes) == 0.0
    assert M.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert M.retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 3") == 0.5
    assert M.retrieval_score("none", "Paragraph 3") == 0.0
    assert M.retrieval_zh_score("段落5", "段落5") == 1.0
    assert M.count_score("There are 7 unique, not 8", "7") == 0.5
    assert M.count_score("seven", "7") == 0.0
    # first line without a fence/comment: "x = foo(1)" vs "x = foo(2)": LCS 9 of 10+10 -> 0.9
    assert M.code_sim_score("```python\n# set x\nx = foo(1)\n", "x = foo(2)") == pytest.approx(0.9)
    assert M.edit_similarity("abc", "abc") == 1.0


def test_longbench_score_rules():
    ex = {"dataset": "triviaqa", "answers": ["Paris", "City of Light"], "all_classes": None}
    assert lb.score(ex, "Paris\nLondon is big") == 1.0          # first line only for triviaqa
    ex = {"dataset": "hotpotqa", "answers": ["foo bar", "baz"], "all_classes": None}
    assert lb.score(ex, "baz") == 1.0                            # max over the answers
    assert lb.metric_name("lcc") == "code_sim" and lb.metric_name("dureader") == "rouge_l_zh"
    assert set(lb.METRICS) == set(lb.PROMPTS) == set(lb.MAX_NEW_TOKENS)
    assert len(lb.DATASETS) == 21


def test_loogle_cloze_and_needles():
    ref = {"<mask-0>": "Bob Smith", "<mask-1>": "London", "<mask-2>": "Acme"}
    pred = "{'<mask-0>': 'Bob Smith', '<mask-1>': 'Greater London'}"
    exact, partial = M.cloze_match(pred, ref)
    assert exact == pytest.approx(1 / 3) and partial == pytest.approx(2 / 3)
    assert M.cloze_match("not a dict", ref) == (0.0, 0.0)
    assert M.contains_answer("The number is 4729.", "4729") == 1.0
    assert M.contains_answer("The number is 47290.", "4729") == 0.0
    assert M.contains_answer("It is 472", "4729") == 0.0


def test_kl_and_nll():
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(4/3)
    kl = M.kl_divergence(np.array([[0.0, 0.0]]), np.array([[math.log(3), 0.0]]))
    assert kl[0] == pytest.approx(0.5 * math.log(4 / 3))
    assert M.kl_divergence(np.array([[1.0, 2.0, 3.0]]), np.array([[11.0, 12.0, 13.0]]))[0] == pytest.approx(0, abs=1e-12)
    assert M.token_nll(np.array([[0.0, math.log(3)]]), [1])[0] == pytest.approx(-math.log(0.75))


def test_loaders_reject_bad_input(tmp_path):
    p = tmp_path / "lb.jsonl"
    p.write_text('{"input": "q", "context": "c", "answers": ["a"], "dataset": "nosuch"}\n')
    with pytest.raises(headkv.FormatError, match="unknown LongBench dataset"):
        lb.load(p)
    p.write_text('{"input": "q", "context": "c", "dataset": "qasper"}\n')
    with pytest.raises(headkv.FormatError, match="answers"):
        lb.load(p)
    p.write_text('{"input": "q", "context": "c", "answers": ["a"], "dataset": "trec"}\n')
    with pytest.raises(headkv.FormatError, match="all_classes"):
        lb.load(p)
    p.write_text("{not json\n")
    with pytest.raises(headkv.FormatError, match="not JSON"):
        lb.load(p)
    with pytest.raises(headkv.HeadkvIOError):
        lb.load(tmp_path / "missing.jsonl")
    # LongBench-E names are accepted
    p.write_text(json.dumps({"input": "q", "context": "c", "answers": ["a"], "dataset": "qasper_e",
                             "_id": "x1"}) + "\n")
    assert lb.load(p)[0]["id"] == "qasper/x1"


def test_loogle_loader(tmp_path):
    p = tmp_path / "shortdep_qa.jsonl"
    pairs = [{"S": "s", "Q": "Who?", "A": "Bob"}, {"S": "s", "Q": "Where?", "A": "Paris"}]
    p.write_text(json.dumps({"input": "doc", "title": "T", "qa_pairs": repr(pairs), "output": "none"}) + "\n")
    exs = lg.load(p)
    assert [e["id"] for e in exs] == ["shortdep_qa/T/0", "shortdep_qa/T/1"]
    assert exs[1]["Q"] == "Where?" and exs[1]["answer"] == "Paris"
    s = tmp_path / "longdep_summarization.jsonl"
    s.write_text(json.dumps({"input": "doc", "title": "T", "qa_pairs": "none", "output": "a summary"}) + "\n")
    assert lg.load(s)[0]["answer"] == "a summary"
    assert lg.score(exs[1], "Paris.") == {"rouge_l": 1.0, "exact_match": 1.0}
    bad = tmp_path / "x.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(headkv.InvalidArgumentError, match="loogle-task"):
        lg.load(bad)
    with pytest.raises(headkv.FormatError):
        lg.load(bad, task="shortdep_qa")
