"""LongBench on a user's LongBench-format JSONL: prompts, truncation, generation length and metric
per dataset, following THUDM/LongBench (``config/dataset2prompt.json``, ``dataset2maxlen.json``,
``eval.py``).

Each JSONL line needs ``input``, ``context``, ``answers`` (list of strings), ``dataset``;
``all_classes`` (list or null), ``length`` and ``_id`` are optional.
"""
from __future__ import annotations

import json
import os

from ..errors import FormatError, HeadkvIOError
from . import metrics as M
from .engine import fit_prompt, greedy

PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501 (verbatim, typo included)
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",  # noqa: E501
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",  # noqa: E501
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",  # noqa: E501
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",  # noqa: E501
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",  # noqa: E501
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",  # noqa: E501
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",  # noqa: E501
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}
PROMPTS["2wikimqa"] = PROMPTS["musique"] = PROMPTS["hotpotqa"]

MAX_NEW_TOKENS = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
}

METRICS = {
    "narrativeqa": M.qa_f1_score, "qasper": M.qa_f1_score, "multifieldqa_en": M.qa_f1_score,
    "multifieldqa_zh": M.qa_f1_zh_score, "hotpotqa": M.qa_f1_score, "2wikimqa": M.qa_f1_score,
    "musique": M.qa_f1_score, "dureader": M.rouge_l_zh, "gov_report": M.rouge_l, "qmsum": M.rouge_l,
    "multi_news": M.rouge_l, "vcsum": M.rouge_l_zh, "trec": M.classification_score, "triviaqa": M.qa_f1_score,
    "samsum": M.rouge_l, "lsht": M.classification_score, "passage_retrieval_en": M.retrieval_score,
    "passage_count": M.count_score, "passage_retrieval_zh": M.retrieval_zh_score, "lcc": M.code_sim_score,
    "repobench-p": M.code_sim_score,
}
METRIC_NAMES = {
    M.qa_f1_score: "qa_f1", M.qa_f1_zh_score: "qa_f1_zh", M.rouge_l: "rouge_l", M.rouge_l_zh: "rouge_l_zh",
    M.classification_score: "classification", M.retrieval_score: "retrieval", M.retrieval_zh_score: "retrieval_zh",
    M.count_score: "count", M.code_sim_score: "code_sim",
}
# Few-shot / completion datasets: LongBench feeds them without the chat template, and scores only
# the first line of the prediction for the first four.
NO_CHAT = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
FIRST_LINE = {"trec", "triviaqa", "samsum", "lsht"}
DATASETS = tuple(sorted(PROMPTS))

_REQUIRED = {"input": str, "context": str, "answers": list, "dataset": str}


def load(path, limit=None) -> list[dict]:
    """Reads and validates a LongBench-format JSONL; returns the examples with an ``id``."""
    path = os.fspath(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise HeadkvIOError(f"cannot read LongBench file {path}: {e.strerror}") from e
    out = []
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(ex, dict):
                raise FormatError(f"{path}:{lineno}: each line must be a JSON object")
            for k, t in _REQUIRED.items():
                if not isinstance(ex.get(k), t):
                    raise FormatError(f"{path}:{lineno}: field {k!r} must be a {t.__name__}")
            if not ex["answers"] or not all(isinstance(a, str) for a in ex["answers"]):
                raise FormatError(f"{path}:{lineno}: 'answers' must be a non-empty list of strings")
            ac = ex.get("all_classes")
            if ac is not None and not (isinstance(ac, list) and all(isinstance(c, str) for c in ac)):
                raise FormatError(f"{path}:{lineno}: 'all_classes' must be a list of strings or null")
            ds = ex["dataset"]
            if ds.endswith("_e"):  # LongBench-E names its files/datasets with an _e suffix
                ds = ds[:-2]
            if ds not in PROMPTS:
                raise FormatError(f"{path}:{lineno}: unknown LongBench dataset {ex['dataset']!r} "
                                  f"(known: {', '.join(DATASETS)})")
            if ds in ("trec", "lsht") and not ac:
                raise FormatError(f"{path}:{lineno}: dataset {ds!r} needs 'all_classes'")
            out.append({"id": f"{ds}/{ex.get('_id', lineno)}", "dataset": ds, "input": ex["input"],
                        "context": ex["context"], "answers": list(ex["answers"]), "all_classes": ac,
                        "length": ex.get("length")})
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise FormatError(f"{path}: no examples")
    return out


def max_new_tokens(ex: dict, cap=None) -> int:
    n = MAX_NEW_TOKENS[ex["dataset"]]
    return min(n, cap) if cap else n


def prompt_tokens(model, ex: dict, n_ctx: int, max_gen: int, chat: bool = True) -> list[int]:
    """Token ids of the example's prompt, truncated in the middle so prompt + generation fit n_ctx
    (chat template for the chat datasets, as LongBench does for chat models)."""
    text = PROMPTS[ex["dataset"]].format(context=ex["context"], input=ex["input"])
    return fit_prompt(model, text, n_ctx, max_gen, chat=chat and ex["dataset"] not in NO_CHAT)


def score(ex: dict, prediction: str) -> float:
    """The dataset's official metric, max over the reference answers."""
    ds = ex["dataset"]
    if ds in FIRST_LINE:
        prediction = prediction.lstrip("\n").split("\n")[0]
    fn = METRICS[ds]
    return max(fn(prediction, a, all_classes=ex.get("all_classes") or []) for a in ex["answers"])


def metric_name(dataset: str) -> str:
    return METRIC_NAMES[METRICS[dataset]]


class LongBenchTask:
    """Examples of a LongBench-format JSONL, scored with each dataset's metric (``score``, 0-1)."""
    name = "longbench"
    metrics = ("score",)

    def __init__(self, path, limit=None, chat=True, max_gen=None, n_ctx=8192):
        self.path, self.limit, self.chat, self.cap, self.n_ctx = path, limit, chat, max_gen, n_ctx

    def max_new(self, ex) -> int:
        return max_new_tokens(ex, self.cap)

    def examples(self, tok_model) -> list[dict]:
        out = []
        for ex in load(self.path, self.limit):
            ex["prompt"] = prompt_tokens(tok_model, ex, self.n_ctx, self.max_new(ex), self.chat)
            ex["metric"] = metric_name(ex["dataset"])
            out.append(ex)
        return out

    def run(self, model, ex, cfg, n_ctx):
        _, text = greedy(model, ex["prompt"], self.max_new(ex), stop_at_newline=ex["dataset"] == "samsum")
        return {"prediction": text, "metrics": {"score": score(ex, text)}}
