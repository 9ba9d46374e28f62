"""Needle tasks on the real-text haystack (``headkv.haystack``).

* ``niah``: one fact needle ("The secret number of the blue gate is 4729.") per prompt over a grid
  of context lengths x depths, several distinct needles per cell; scored 1/0 by whether the
  number appears in the answer as a whole word (a 10-digit answer's first 4 digits do not count).
  ``digits`` (``--niah-digits``, default 4,7,10) varies the number's length, cycled over a cell's
  needles: SmolLM2 spends one token per digit, so a 10-digit value is a span wider than the
  7-token pooling kernel around an attention peak, a 4-digit one is not.
* ``reasoning-needles``: the R2 needles of ``headkv.needles`` (the generator the head-score tool
  uses), drawn from its ``eval`` split so no evaluation needle shares names/cities/words with the
  needles that produced the scores; scored by the paper's answer F1 and by whether the whole
  answer phrase appears. R2 family: ``life-stage`` by default, ``comparison`` (the first design,
  used for EVALUATION.md's rows) with ``family=`` / ``--reasoning-family comparison``.
"""
from __future__ import annotations

import numpy as np

from .. import haystack as hs
from .. import needles as nd
from ..errors import InvalidArgumentError
from . import metrics as M
from .engine import chat_prompt, greedy

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "golden",
          "brown", "pink"]
OBJECTS = ["door", "box", "gate", "chest", "locker", "safe", "cabinet", "drawer", "window", "bridge"]


def fact_needles(k: int, seed: int, length: int, depth: float, digits=(4,)) -> list[dict]:
    """``k`` distinct (colour, object, number) needles for one (length, depth) cell, reproducible
    from (seed, length, depth) alone, so a cell's needles do not depend on the grid. Needle j's
    number has ``digits[j % len(digits)]`` digits; 4-digit needles are the ones of digits=(4,)."""
    if k > len(COLORS) * len(OBJECTS):
        raise InvalidArgumentError(f"at most {len(COLORS) * len(OBJECTS)} distinct needles per cell")
    digits = [int(d) for d in digits]
    if not digits or not all(1 <= d <= 18 for d in digits):
        raise InvalidArgumentError(f"needle numbers need 1 to 18 digits, got {digits}")
    rng = np.random.default_rng([int(seed), 8, int(length), int(round(float(depth) * 1000))])
    pairs = rng.permutation(len(COLORS) * len(OBJECTS))[:k]
    numbers = 1000 + rng.permutation(9000)[:k]      # the 4-digit numbers (drawn as before digits existed)
    out = []
    for j, (p, num) in enumerate(zip(pairs, numbers)):
        n = digits[j % len(digits)]
        if n != 4:      # from a generator of their own, so the 4-digit needles stay what they were
            num = int(np.random.default_rng([int(seed), 8, int(length), int(round(float(depth) * 1000)), j, n])
                      .integers(10 ** (n - 1), 10 ** n))
        c, o = COLORS[int(p) // len(OBJECTS)], OBJECTS[int(p) % len(OBJECTS)]
        out.append({"needle": f"The secret number of the {c} {o} is {int(num)}.",
                    "question": f"What is the secret number of the {c} {o}?", "answer": str(int(num)),
                    "answer_prefix": f"The secret number of the {c} {o} is", "digits": n})
    return out

class _NeedleTask:
    max_gen = 24

    chat = True  # False: completion-style prompts (base models), set by the CLI's --no-chat

    def __init__(self, seed: int = 0, haystack_dir=None):
        self.seed = int(seed)
        self.haystack_dir = haystack_dir
        self._hay = None

    def hay(self):
        if self._hay is None:
            self._hay = hs.load_haystack(self.haystack_dir)
        return self._hay

    def max_new(self, ex) -> int:
        return self.max_gen

    def _prompt(self, tok_model, needle, question, prefix, length, depth, offset) -> list[int]:
        """Chat prompt of about ``length`` tokens in all (template + haystack + needle + question +
        the reply's start ``prefix``, which restates the question so the model answers directly)."""
        tok = lambda s: tok_model.tokenize(s, add_bos=False)  # noqa: E731
        frame = len(chat_prompt(tok_model, nd.prompt_text("", question), prefix, self.chat))
        ctx = hs.build_context(tok, self.hay(), length - frame - self.max_gen, depth, needle, offset=offset)
        return chat_prompt(tok_model, nd.prompt_text(ctx, question), prefix, self.chat)

    def run(self, model, ex, cfg, n_ctx):
        toks, text = greedy(model, ex["prompt"], self.max_gen)
        return {"prediction": text, "metrics": self.score(ex, text)}


class NiahTask(_NeedleTask):
    name = "niah"
    metrics = ("accuracy",)
    max_gen = 16

    def __init__(self, lengths=(1024, 2048, 4096, 8192), depths=(0.1, 0.5, 0.9), needles_per_cell=2,
                 seed=0, haystack_dir=None, digits=(4, 7, 10)):
        super().__init__(seed, haystack_dir)
        self.lengths, self.depths, self.k = [int(x) for x in lengths], [float(d) for d in depths], int(needles_per_cell)
        if self.k < 1:
            raise InvalidArgumentError("needles per cell must be >= 1")
        self.digits = [int(d) for d in digits]
        self.max_gen = max(16, max(self.digits, default=4) + 6)    # the number, a space and a period fit

    def examples(self, tok_model) -> list[dict]:
        out = []
        for L in self.lengths:
            for d in self.depths:
                for j, f in enumerate(fact_needles(self.k, self.seed, L, d, self.digits)):
                    off = (L // 512 + int(d * 10) + 3 * j) % len(self.hay())
                    # 4-digit ids as before; other lengths (and a longer generation, which shortens
                    # every prompt) get their own ids, so a resumed run never reuses another prompt's result
                    tag = ("" if f["digits"] == 4 else f"/d{f['digits']}") + ("" if self.max_gen == 16 else
                                                                             f"/g{self.max_gen}")
                    out.append({"id": f"niah/{L}/{d:g}/{j}{tag}", "length": L, "depth": d, "needle": f["needle"],
                                "kind": f"{f['digits']}-digit",
                                "question": f["question"], "answer": f["answer"], "seed": self.seed,
                                "prompt": self._prompt(tok_model, f["needle"], f["question"], f["answer_prefix"],
                                                       L, d, off)})
        return out

    def score(self, ex, text):
        return {"accuracy": M.contains_answer(text, ex["answer"])}


class ReasoningTask(_NeedleTask):
    name = "reasoning-needles"
    metrics = ("f1", "contains", "distractor")
    max_gen = 24

    def __init__(self, n=20, kinds=("R2",), lengths=(1024,), depths=(0.1, 0.3, 0.5, 0.7, 0.9), seed=0,
                 haystack_dir=None, family=None):
        super().__init__(seed, haystack_dir)
        self.n, self.kinds = int(n), list(kinds)
        self.family = family  # R2 needle family (headkv.needles.R2_FAMILIES; None: the default)
        self.lengths, self.depths = [int(x) for x in lengths], [float(d) for d in depths]

    def examples(self, tok_model) -> list[dict]:
        out = []
        for kind in self.kinds:
            fam = self.family if kind == "R2" else None
            for i, nx in enumerate(nd.generate(kind, self.n, seed=self.seed, split="eval", family=fam)):
                L = self.lengths[i % len(self.lengths)]
                d = self.depths[i % len(self.depths)]
                tag = f"/{nx['family']}" if nx.get("family") else ""   # families' needles never share an id
                ex = {"id": f"{nx['id']}{tag}/{L}/{d:g}", "kind": kind, "length": L, "depth": d, "needle": nx["needle"],
                      "question": nx["question"], "answer": nx["answer"], "seed": self.seed,
                      "prompt": self._prompt(tok_model, nx["needle"], nx["question"], nx.get("answer_prefix", ""),
                                             L, d, 7 + i)}
                if nx.get("distractor"):
                    ex["distractor"] = nx["distractor"]
                out.append(ex)
        out.sort(key=lambda e: e["length"])
        return out

    def score(self, ex, text):
        """Answer F1 (the paper's), whole answer present, and (R2) the other person's attribute
        given instead: retrieval without the comparison."""
        out = {"f1": nd.f1_score(text, ex["answer"]), "contains": M.contains_answer(text, ex["answer"])}
        if ex.get("distractor"):
            out["distractor"] = M.contains_answer(text, ex["distractor"]) * (1.0 - out["contains"])
        return out
