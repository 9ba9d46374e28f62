"""LooGLE on a user's LooGLE-format JSONL (bigai-nlco/LooGLE ``LooGLE-testdata/*.jsonl``).

Each line is one long document: ``input`` (the text), ``title``, ``qa_pairs`` (a list of
``{"Q", "A", "S"}`` dicts, or its Python-literal text as LooGLE ships it, or ``"none"`` for
summarization) and ``output`` (the reference summary when there are no QA pairs). Every QA pair
becomes one example. The task (``shortdep_qa``, ``longdep_qa``, ``shortdep_cloze``,
``longdep_summarization``) comes from the file name or ``task=``; prompts and generation lengths
follow LooGLE's ``config/task2prompt.json`` / ``task2maxlen.json``.
Scores: ROUGE-L F and normalized exact match for every task, plus LooGLE's cloze exact/partial
mask match for ``shortdep_cloze``.
"""
from __future__ import annotations

import ast
import json
import os

from ..errors import FormatError, HeadkvIOError, InvalidArgumentError
from . import metrics as M
from .engine import fit_prompt, greedy

PROMPTS = {
    "shortdep_qa": "Please answer the question based on the long texts below. \n{input}\nQuestion: {Q}\nAnswer: ",
    "longdep_qa": "Please answer the question based on the long texts below. \n{input}\nQuestion: {Q}\nAnswer: ",
    "longdep_summarization": "Please generate a summary of the below paper. \n{input}\n Summarization: ",
    "shortdep_cloze": ("Please fill in the clozes based on the given long texts below. Each of the placeholder "
                       "'<mask-n>' in the question could be an entity of Person, Location or Organiocation. The same "
                       "masks represent the same entity. Output a json format answer, for example: {{'<mask-0>': "
                       "'Bob', '<mask-1>': 'Gorrosion Magazine','<mask-2>': 'Bethel Horizon'}}\n{input}\n "
                       "Question: {Q} What are the masked entities? \nAnswer:"),
}
MAX_NEW_TOKENS = {"shortdep_qa": 300, "longdep_qa": 500, "longdep_summarization": 500, "shortdep_cloze": 50}
TASKS = tuple(PROMPTS)


def task_from_path(path) -> str:
    stem = os.path.basename(os.fspath(path)).split(".")[0]
    for t in TASKS:
        if stem.startswith(t):
            return t
    raise InvalidArgumentError(f"cannot tell the LooGLE task from the file name {stem!r}: "
                               f"pass --loogle-task ({', '.join(TASKS)})")


def _pairs(v, where):
    if isinstance(v, str):
        if v.strip().lower() == "none":
            return None
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise FormatError(f"{where}: 'qa_pairs' is neither a list nor its literal text") from None
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(p, dict) and isinstance(p.get("Q"), str) and "A" in p
                                          for p in v):
        raise FormatError(f"{where}: 'qa_pairs' must be a list of {{'Q': str, 'A': ...}} objects")
    return v


def load(path, task=None, limit=None) -> list[dict]:
    path = os.fspath(path)
    task = task or task_from_path(path)
    if task not in PROMPTS:
        raise InvalidArgumentError(f"unknown LooGLE task {task!r} (known: {', '.join(TASKS)})")
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise HeadkvIOError(f"cannot read LooGLE file {path}: {e.strerror}") from e
    out = []
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("input"), str):
                raise FormatError(f"{where}: each line must be an object with a string 'input'")
            pairs = _pairs(doc.get("qa_pairs", "none"), where)
            title = str(doc.get("title", lineno))
            if pairs is None:
                if not isinstance(doc.get("output"), str):
                    raise FormatError(f"{where}: a document without qa_pairs needs a string 'output'")
                out.append({"id": f"{task}/{title}", "subtask": task, "input": doc["input"], "Q": "",
                            "answer": doc["output"]})
            else:
                for i, p in enumerate(pairs):
                    a = p["A"] if isinstance(p["A"], str) else repr(p["A"])
                    out.append({"id": f"{task}/{title}/{i}", "subtask": task, "input": doc["input"], "Q": p["Q"],
                                "answer": a})
            if limit is not None and len(out) >= limit:
                out = out[:limit]
                break
    if not out:
        raise FormatError(f"{path}: no examples")
    return out


def prompt_tokens(model, ex, n_ctx, max_gen, chat=True) -> list[int]:
    text = PROMPTS[ex["subtask"]].format(input=ex["input"], Q=ex["Q"])
    return fit_prompt(model, text, n_ctx, max_gen, chat=chat)


def max_new_tokens(ex, cap=None) -> int:
    n = MAX_NEW_TOKENS[ex["subtask"]]
    return min(n, cap) if cap else n


def score(ex, prediction: str) -> dict:
    pred = prediction.strip() or "None"  # LooGLE scores an empty output as "None"
    out = {"rouge_l": M.rouge_l(pred, ex["answer"]), "exact_match": M.exact_match(pred, ex["answer"])}
    if ex["subtask"] == "shortdep_cloze":
        out["cloze_exact"], out["cloze_partial"] = M.cloze_match(pred, ex["answer"])
    return out


class LooGLETask:
    """QA pairs (or summaries) of a LooGLE-format JSONL: ROUGE-L F and exact match (+ cloze match)."""
    name = "loogle"
    metrics = ("rouge_l", "exact_match")

    def __init__(self, path, task=None, limit=None, chat=True, max_gen=None, n_ctx=8192):
        self.path, self.task, self.limit, self.chat, self.cap, self.n_ctx = path, task, limit, chat, max_gen, n_ctx

    def max_new(self, ex) -> int:
        return max_new_tokens(ex, self.cap)

    def examples(self, tok_model) -> list[dict]:
        out = []
        for ex in load(self.path, self.task, self.limit):
            ex["prompt"] = prompt_tokens(tok_model, ex, self.n_ctx, self.max_new(ex), self.chat)
            out.append(ex)
        return out

    def run(self, model, ex, cfg, n_ctx):
        _, text = greedy(model, ex["prompt"], self.max_new(ex))
        return {"prediction": text, "metrics": score(ex, text)}
