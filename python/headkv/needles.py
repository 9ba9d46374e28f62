"""Needle generators for head scoring (R: retrieval, R2: retrieval-reasoning) and the answer F1.

    from headkv.needles import generate, prompt_text, f1_score
    exs = generate("R2", 50, seed=0, split="score")   # list of dicts, reproducible from the seed
    old = generate("R2", 50, seed=0, family="comparison")   # the earlier R2 family, by name

Every example is a dict:

    {"id": "R2-score-0-00003", "kind": "R2", "split": "score", "seed": 0, "index": 3,
     "family": "life-stage", "template": "stage-reverse",
     "needle":   "As an adult Mary's favourite activity became painting old boats. As a child Mary's
                  favourite activity was baking rye bread.",           # text inserted in the haystack
     "span":     "painting old boats",      # where the answer sits inside the needle (verbatim)
     "question": "What is Mary's favourite activity today?",
     "answer":   "painting old boats",
     "answer_prefix": "Today Mary's favourite activity is",
     "distractor": "baking rye bread"}      # R2 only: the answer without the reasoning step

``answer_prefix`` restates the question as the start of the reply; the scorer appends it after
the chat template's assistant header, so a small instruct model answers with the value itself
(SmolLM2-135M otherwise restates the whole question first). It never decides the reasoning step
(no winner named; no wording shared with only the right sentence).

* R needles state one fact whose value is copied back (``span == answer``).
* R2 needles come in two families (``generate(..., family=...)``):
  - ``"life-stage"`` (default): one person, two favourite activities, one as a child and one as an
    adult ("As a child Mary's favourite activity was X. As an adult Mary changed, and Mary's
    favourite activity became Y."); the question asks for the activity *today*, which neither
    sentence names, so the answer needs the inference today -> adulthood (the later state) before
    the copy. Half the needles state the adult activity first (templates ``stage-chrono`` /
    ``stage-reverse``), so neither the first nor the last fact answers; the prefix
    "Today Mary's favourite activity is" matches neither sentence's wording (was / became).
    The ``distractor`` is the childhood activity.
  - ``"comparison"`` (the first design): two people, one activity each, and one comparable
    number each (age, height); the question asks for the activity of the older/younger/taller/
    shorter one. The two numbers differ by at least 3; the distractor is the other person's
    activity. SmolLM2-135M-Instruct answers these at chance (44 % right, 42 % the other person's),
    so the default changed to life-stage (69 % right, 12 % the childhood activity);
    see README "Head scores".
* Splits: ``"score"`` (head scoring) and ``"eval"`` (evaluation) draw names, cities and items
  from disjoint halves of the pools, so no evaluation needle shares a name/city with a scoring
  needle, whatever the seeds; the generator's RNG is seeded by (seed, split, kind).
* ``prompt_text(context, question)`` is the user message the scorer sends (through the model's
  chat template); ``f1_score(prediction, reference)`` is the token F1 of the paper's code
  (lower-case, punctuation and articles removed).
"""
from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

KINDS = ("R", "R2")
SPLITS = ("score", "eval")

NAMES = ["Mary", "John", "Alice", "Peter", "Sarah", "David", "Emma", "James", "Olivia", "Thomas",
         "Sophia", "Daniel", "Laura", "Henry", "Grace", "Oliver", "Chloe", "Samuel", "Lucy", "Jacob",
         "Hannah", "Lucas", "Emily", "Noah", "Anna", "Ethan", "Julia", "Adam", "Clara", "Victor",
         "Rachel", "Simon", "Nina", "Oscar", "Helen", "Felix", "Paula", "Martin", "Irene", "George",
         "Diana", "Robert", "Alice", "Kevin", "Monica", "Brian", "Teresa", "Frank", "Linda", "Walter",
         "Naomi", "Arthur", "Vera", "Hugo", "Elena", "Louis", "Karen", "Edgar", "Rita", "Leon"]
NAMES = list(dict.fromkeys(NAMES))  # unique, order kept

CITIES = ["Beijing", "Paris", "Lisbon", "Cairo", "Toronto", "Madrid", "Vienna", "Oslo", "Dublin",
          "Prague", "Seoul", "Lima", "Nairobi", "Athens", "Berlin", "Sydney", "Rome", "Boston",
          "Chicago", "Istanbul", "Helsinki", "Warsaw", "Budapest", "Havana", "Santiago", "Montreal",
          "Kyoto", "Manila", "Denver", "Geneva", "Seattle", "Florence"]

ACTIVITIES = ["painting old boats", "playing chess in the park", "baking rye bread", "fishing at dawn",
              "reading science fiction", "riding a red bicycle", "growing tomatoes", "watching old films",
              "building model trains", "swimming in the lake", "playing the violin", "collecting stamps",
              "hiking in the mountains", "writing short poems", "knitting warm scarves",
              "feeding the ducks", "repairing old clocks", "dancing the tango", "flying paper kites",
              "climbing tall trees", "sailing small boats", "drawing city maps", "singing in a choir",
              "running along the river", "cooking spicy noodles", "playing basketball at the gym",
              "taking photos of birds", "learning old languages", "carving wooden spoons",
              "watching the stars", "making clay pots", "playing the drums"]

FOODS = ["lemon cake", "mushroom soup", "grilled salmon", "apple pie", "fried rice", "tomato pasta",
         "chicken curry", "cheese omelette", "banana bread", "vegetable stew", "shrimp tacos",
         "pumpkin soup", "chocolate muffins", "beef noodles", "garlic bread", "pear tart"]

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "golden"]
OBJECTS = ["door", "box", "gate", "chest", "locker", "safe", "cabinet", "drawer"]
WORDS = ["falcon", "meadow", "harbor", "lantern", "pepper", "marble", "violet", "thunder", "willow",
         "copper", "saffron", "glacier", "orchid", "canyon", "ember", "juniper", "quartz", "tundra",
         "cobalt", "sparrow"]

_KIND_ID = {"R": 1, "R2": 2}
_SPLIT_ID = {"score": 0, "eval": 1}


def _half(pool, split):
    """Disjoint halves of a pool: even indices for scoring, odd ones for evaluation."""
    return pool[_SPLIT_ID[split]::2]


def _rng(kind, seed, split):
    return np.random.default_rng([int(seed), _SPLIT_ID[split], _KIND_ID[kind]])


def _pick(rng, pool, k=1):
    idx = rng.choice(len(pool), size=k, replace=False)
    return [pool[int(i)] for i in idx]


# ---- R: one fact to copy back ----

def _r_city(rng, split):
    city, = _pick(rng, _half(CITIES, split))
    act, = _pick(rng, ACTIVITIES)
    return ("city-best", f"The best thing to do in {city} is {act}.",
            f"What is the best thing to do in {city}?", act, f"The best thing to do in {city} is")


def _r_food(rng, split):
    name, = _pick(rng, _half(NAMES, split))
    food, = _pick(rng, FOODS)
    return ("favourite-food", f"{name}'s favourite food is {food}.", f"What is {name}'s favourite food?", food,
            f"{name}'s favourite food is")


def _r_password(rng, split):
    color, = _pick(rng, COLORS)
    obj, = _pick(rng, OBJECTS)
    w1, w2 = _pick(rng, _half(WORDS, split), 2)
    ans = f"{w1} {w2}"
    return ("password", f"The password of the {color} {obj} is {ans}.",
            f"What is the password of the {color} {obj}?", ans, f"The password of the {color} {obj} is")


# ---- R2 "comparison" (the first design): a comparison over two people, then the copy ----

_COMPARISONS = [
    # template, sentence, value range, (question word, pick larger?)
    ("age", "{name} is {v} years old.", (18, 80), [("older", True), ("younger", False)]),
    ("height", "{name} is {v} centimetres tall.", (150, 200), [("taller", True), ("shorter", False)]),
]


def _r2(rng, split):
    a, b = _pick(rng, _half(NAMES, split), 2)
    ta, tb = _pick(rng, ACTIVITIES, 2)
    tmpl, sent, (lo, hi), words = _COMPARISONS[int(rng.integers(len(_COMPARISONS)))]
    while True:
        va, vb = (int(x) for x in rng.integers(lo, hi + 1, size=2))
        if abs(va - vb) >= 3:
            break
    word, larger = words[int(rng.integers(len(words)))]
    a_wins = (va > vb) == larger
    facts = [f"{a}'s favourite activity is {ta}.", f"{b}'s favourite activity is {tb}."]
    nums = [sent.format(name=a, v=va), sent.format(name=b, v=vb)]
    if rng.integers(2):
        facts.reverse()
    if rng.integers(2):
        nums.reverse()
    first, second = (a, b) if rng.integers(2) else (b, a)
    needle = " ".join(facts + nums)
    ans = ta if a_wins else tb
    q = f"What is the favourite activity of the {word} one of {first} and {second}?"
    return (f"{tmpl}-{word}", needle, q, ans, f"The favourite activity of the {word} one of {first} and {second} is",
            tb if a_wins else ta)


# ---- R2 "life-stage": which of two stated states holds today ----

_STAGES = {
    # template: sentence with {n} (name), {old} (childhood activity), {new} (adult activity)
    "stage-chrono": "As a child {n}'s favourite activity was {old}. As an adult {n} changed, and {n}'s "
                    "favourite activity became {new}.",
    "stage-reverse": "As an adult {n}'s favourite activity became {new}. As a child {n}'s favourite activity "
                     "was {old}.",
}


def _r2_stage(rng, split):
    name, = _pick(rng, _half(NAMES, split))
    new, old = _pick(rng, ACTIVITIES, 2)
    tmpl = "stage-reverse" if rng.integers(2) else "stage-chrono"
    needle = _STAGES[tmpl].format(n=name, old=old, new=new)
    return (tmpl, needle, f"What is {name}'s favourite activity today?", new, f"Today {name}'s favourite activity is",
            old)


R2_FAMILIES = ("life-stage", "comparison")
_GENERATORS = {("R", None): (_r_city, _r_food, _r_password), ("R2", "life-stage"): (_r2_stage,),
               ("R2", "comparison"): (_r2,)}


def generate(kind: str, n: int, seed: int = 0, split: str = "score", family: str | None = None) -> list[dict]:
    """``n`` needle examples of ``kind`` ("R" or "R2"), reproducible from (seed, split).
    ``family`` (R2 only): "life-stage" (default) or "comparison" (the first R2 design)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError("n must be >= 0")
    if family is not None and (kind != "R2" or family not in R2_FAMILIES):
        raise ValueError(f"family is for R2 only, one of {R2_FAMILIES}; got kind={kind!r}, family={family!r}")
    if kind == "R2":
        family = family or R2_FAMILIES[0]
    rng = _rng(kind, seed, split)
    gens = _GENERATORS[(kind, family)]
    out = []
    for i in range(int(n)):
        tmpl, needle, q, ans, prefix, *other = gens[i % len(gens)](rng, split)
        assert ans in needle
        ex = {"id": f"{kind}-{split}-{seed}-{i:05d}", "kind": kind, "split": split, "seed": int(seed),
              "index": i, "template": tmpl, "needle": needle, "span": ans, "question": q, "answer": ans,
              "answer_prefix": prefix}
        if family:
            ex["family"] = family
        if other:
            ex["distractor"] = other[0]  # R2: the answer a model gives without the reasoning step
        out.append(ex)
    return out


def prompt_text(context: str, question: str) -> str:
    """The user message for a needle test: the document, then the question."""
    return (f"{context}\n\nAnswer the question using the text above. Reply with the answer only, "
            f"a few words.\nQuestion: {question}")


# ---- answer F1 (as the paper's metrics.qa_f1_score) ----

def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, reference: str) -> float:
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(r)
    return 2 * prec * rec / (prec + rec)
