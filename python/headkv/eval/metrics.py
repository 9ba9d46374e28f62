"""Answer metrics: LongBench's per-dataset scores, LooGLE's matches, needle matches (niah's, and
RULER's string match of all answers), and the distribution metrics of the fidelity task.

The LongBench functions follow THUDM/LongBench ``metrics.py`` (rules re-implemented here):
QA F1 over normalized tokens (lowercase, punctuation removed, articles a/an/the removed,
whitespace collapsed), the Chinese variant over jieba words, ROUGE-L F, classification,
passage retrieval, passage count and code edit similarity. Two deliberate differences:
ROUGE-L comes from the maintained ``rouge-score`` package (LongBench used ``rouge``), and
``classification_score`` drops *every* matched class that is a strict substring of the answer
(LongBench's loop removes items from the list it iterates and can skip one).
"""
from __future__ import annotations

import ast
import math
import re
import string
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

_PUNCT = set(string.punctuation)
_ZH_PUNCT = set(string.punctuation + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
                                     "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ---------------------------------------------------------------- normalization
def normalize_answer(s: str) -> str:
    """SQuAD/LongBench normalization: lowercase, drop punctuation, drop a/an/the, collapse spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def normalize_zh_answer(s: str) -> str:
    """LongBench's Chinese normalization: lowercase, drop ASCII + CJK punctuation, drop all whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _ZH_PUNCT)
    return "".join(s.split())


def _jieba_words(text: str) -> list[str]:
    try:
        import jieba
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Chinese LongBench metrics need jieba: pip install 'headkv[eval]'") from e
    jieba.setLogLevel(60)
    return list(jieba.cut(text, cut_all=False))


# ---------------------------------------------------------------- token F1
def f1_tokens(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """Bag-of-tokens F1 (multiset overlap)."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    p, r = same / len(prediction), same / len(ground_truth)
    return 2 * p * r / (p + r)


def qa_f1_score(prediction: str, ground_truth: str, **_) -> float:
    return f1_tokens(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **_) -> float:
    pred = [w for w in (normalize_zh_answer(t) for t in _jieba_words(prediction)) if w]
    gt = [w for w in (normalize_zh_answer(t) for t in _jieba_words(ground_truth)) if w]
    return f1_tokens(pred, gt)


def exact_match(prediction: str, ground_truth: str, **_) -> float:
    """1.0 when the normalized strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


# ---------------------------------------------------------------- ROUGE-L
class _WhitespaceTokenizer:
    """rouge-score tokenizer for pre-segmented text (Chinese words from jieba): split on spaces."""

    def tokenize(self, text):
        return text.lower().split()


_SCORERS = {}


def _rouge_scorer(kind: str):
    if kind not in _SCORERS:
        try:
            from rouge_score import rouge_scorer
        except ImportError as e:  # pragma: no cover
            raise ImportError("ROUGE needs rouge-score: pip install 'headkv[eval]'") from e
        tok = _WhitespaceTokenizer() if kind == "ws" else None
        _SCORERS[kind] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tok)
    return _SCORERS[kind]


def rouge_l(prediction: str, ground_truth: str, **_) -> float:
    """ROUGE-L F-measure (rouge-score's default tokenizer: lowercase, [a-z0-9]+ tokens)."""
    if not prediction.strip() or not ground_truth.strip():
        return 0.0
    return float(_rouge_scorer("default").score(ground_truth, prediction)["rougeL"].fmeasure)


def rouge_l_zh(prediction: str, ground_truth: str, **_) -> float:
    """ROUGE-L F over jieba words (LongBench's rouge_zh_score)."""
    p = " ".join(w for w in _jieba_words(prediction) if w.strip())
    g = " ".join(w for w in _jieba_words(ground_truth) if w.strip())
    if not p or not g:
        return 0.0
    return float(_rouge_scorer("ws").score(g, p)["rougeL"].fmeasure)


# ---------------------------------------------------------------- classification, retrieval, count, code
def classification_score(prediction: str, ground_truth: str, all_classes: Iterable[str] = (), **_) -> float:
    """1/k when the answer is among the k class names found in the prediction, after dropping found
    names that are strict substrings of the answer (so "location" does not compete with "other location")."""
    found = [c for c in (all_classes or []) if c in prediction]
    found = [c for c in found if not (c in ground_truth and c != ground_truth)]
    return 1.0 / len(found) if ground_truth in found else 0.0


def _fraction_equal(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(n == target for n in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, **_) -> float:
    """Fraction of the numbers in the prediction equal to N of the answer's "Paragraph N"."""
    m = re.findall(r"Paragraph (\d+)", ground_truth)
    return _fraction_equal(prediction, m[0]) if m else 0.0


def retrieval_zh_score(prediction: str, ground_truth: str, **_) -> float:
    m = re.findall(r"段落(\d+)", ground_truth)
    return _fraction_equal(prediction, m[0]) if m else 0.0


def count_score(prediction: str, ground_truth: str, **_) -> float:
    """Fraction of the numbers in the prediction equal to the answer."""
    return _fraction_equal(prediction, str(ground_truth))


def edit_similarity(a: str, b: str) -> float:
    """Indel-normalized similarity 2*LCS/(len a + len b) in [0, 1] (fuzzywuzzy/Levenshtein ratio)."""
    if not a and not b:
        return 1.0
    from rapidfuzz import fuzz
    return fuzz.ratio(a, b) / 100.0


def code_sim_score(prediction: str, ground_truth: str, **_) -> float:
    """Edit similarity of the first generated line that is not a comment or a code fence."""
    line = ""
    for cand in prediction.lstrip("\n").split("\n"):
        if "`" not in cand and "#" not in cand and "//" not in cand:
            line = cand
            break
    return edit_similarity(line, ground_truth)


# ---------------------------------------------------------------- LooGLE cloze
def _as_dict(x):
    if isinstance(x, dict):
        return x
    try:
        v = ast.literal_eval(x.strip())
    except (ValueError, SyntaxError, AttributeError, TypeError, MemoryError, RecursionError):
        return None
    return v if isinstance(v, dict) else None


def cloze_match(prediction, reference) -> tuple[float, float]:
    """LooGLE cloze (exact, partial): fraction of the reference masks whose predicted entity is
    identical / shares a word. The prediction is a dict or its literal text ({'<mask-0>': 'Bob'})."""
    ref = _as_dict(reference) or {}
    if not ref:
        return 0.0, 0.0
    hyp = _as_dict(prediction) or {}
    exact = sum(1 for k, v in ref.items() if k in hyp and hyp[k] == v)
    part = sum(1 for k, v in ref.items() if k in hyp and set(str(v).split()) & set(str(hyp[k]).split()))
    return exact / len(ref), part / len(ref)


# ---------------------------------------------------------------- needles
def contains_answer(prediction: str, answer: str) -> float:
    """1.0 when the normalized answer occurs in the normalized prediction as whole words."""
    a, p = normalize_answer(answer), normalize_answer(prediction)
    if not a:
        return 0.0
    return float(re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", p) is not None)


def _ws(s: str) -> str:
    return " ".join(s.lower().split())


def match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_all`` with whole-token matches: the fraction of ``references`` that
    occur in the prediction, case-insensitively (whitespace runs collapsed), each not inside a
    longer run of letters/digits: "1392" is not found in "13927061" nor in "x1392"."""
    if not references:
        return 0.0
    p = _ws(prediction)
    hit = sum(1 for r in references
              if _ws(r) and re.search(r"(?<!\w)" + re.escape(_ws(r)) + r"(?!\w)", p) is not None)
    return hit / len(references)


# ---------------------------------------------------------------- distributions
def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(p_ref || p) in nats for each row of two logit arrays (float64)."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def token_nll(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """-log p(target) per row: row i of ``logits`` predicts ``targets[i]``."""
    lp = log_softmax(logits)
    t = np.asarray(targets, dtype=np.int64)
    return -lp[np.arange(len(t)), t]


def mean(xs) -> float:
    xs = [float(x) for x in xs]
    return math.fsum(xs) / len(xs) if xs else float("nan")
