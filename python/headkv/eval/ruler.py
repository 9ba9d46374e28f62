"""RULER-style synthetic tasks (``ruler``) on the essay haystack, with query-aware and
query-agnostic prompts.

After RULER (Hsieh et al. 2024, NVIDIA/RULER), regenerated here from the Paul Graham essays
(``headkv.haystack``) and seeds, no downloads: every example is reproducible from
(seed, subtask, length, index). Subtasks (each example records ``subtask``):

* ``niah_single``: one needle "The special magic {kind} for {key} is: {value}." with values of
  several kinds and token lengths (``kind``): numbers of 4, 7, 10 and 12 digits (SmolLM2's
  tokenizer: one token per digit), codes of 8-4-4 hex digits (~17 tokens) and 1-3 word phrases.
  A 4-digit value fits a 7-token pooling window around an attention peak, a 10-digit one does
  not: a cache that keeps only the peak's neighbourhood loses the span's tail.
* ``niah_multikey``: the target needle plus 3 distractor needles with other keys of the same kind;
  the answer is the target's value only.
* ``niah_multivalue``: one key with 2-4 different values in separate needles; answer: all values.
* ``niah_multiquery``: 2-4 keys with one needle each, asked together; answer: all their values.
* ``vt`` (variable tracking): "VAR ABCDE = 12345." then 2-4 hops "VAR FGHIJ = VAR ABCDE."
  spread through the haystack in chain order, plus a distractor chain with another value; the
  question asks which variables are assigned the value; answer: every name of the chain.
* ``cwe`` (common words extraction): a numbered list ("1. word") of words from the essays'
  vocabulary; 10 common words fill half of the items together (each >= 6 times), every other
  word appears twice; answer: the 10 most common. No haystack, as in RULER.
* ``fwe`` (frequent words extraction): coded random 5-letter words with Zipf frequencies
  (exponent 2, the k-th most frequent ~ k^-2; the top 4 strictly ranked); answer: the 3 most
  frequent.

``length`` is the token count of prompt + the subtask's generation budget (RULER's rule and
``niah``'s), so prompt lengths sit just under it; needle depths are spread over the document by a
low-discrepancy sequence (the target needle) and seeded draws (the others).

Prompt = the chat template's user turn "{instruction}\\n\\n{document}\\n\\n{question}" and the start
of the reply (an answer prefix that restates the question, so a 135M model answers directly: niah
"The special magic number for quiet-harbor is", vt "... are: VAR", cwe "...:\\n1."). The
instruction names the task (and the needles' kind), never a key or value.
Each example stores it as two token lists tokenized separately: ``context`` (template head +
instruction + document; nothing of the question) and ``query`` (question + end of the user turn +
assistant header + answer prefix); ``prompt = context + query``, identical in both modes:

* ``aware`` (id suffix ``/aware``): ``eval(context + query)``, the question in the prefill (the
  compression's observation window sees it), as in ``niah``.
* ``agnostic`` (``/agnostic``): ``eval(context)`` then ``eval(query)``: a compressing cache
  compresses the document before the question exists; the question goes into the decode slots
  (``max_new`` reserves ``QUERY_ROOM`` of them for every example, so one model serves a config;
  ``ctx_need`` tells the runner the context actually needed). With the full cache both modes
  compute the same thing.

Scoring (RULER's ``string_match_all``, with whole-token matches): ``score`` = fraction of the
reference answers found in the reply, case-insensitively, each as a whole token (``1392`` is not
found in ``13927061``, so a 10-digit answer is not matched by its first digits); for the
single-answer subtasks (niah_single, niah_multikey) also ``exact``: 1 when the answer is found and
no other needle's value is (string_match_all gives multikey full marks for a reply that lists every
value; ``exact`` does not). The report gives the score per subtask, the RULER average
(mean over subtasks) and the NIAH average (mean over the four niah_* subtasks), aware and
agnostic side by side.
"""
from __future__ import annotations

import re
import zlib

import numpy as np

from .. import haystack as hs
from ..errors import InvalidArgumentError
from . import metrics as M
from .engine import greedy

SUBTASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
NIAH_SUBTASKS = SUBTASKS[:4]
MODES = ("aware", "agnostic")
VALUE_KINDS = ("number4", "number7", "number10", "number12", "uuid", "words")
# tokens generated per subtask (RULER: niah 128, vt 30, cwe 120, fwe 50; ours fit the answers)
MAX_GEN = {"niah_single": 32, "niah_multikey": 32, "niah_multivalue": 64, "niah_multiquery": 64, "vt": 40,
           "cwe": 96, "fwe": 32}
QUERY_ROOM = 128        # decode slots for the query in agnostic mode (every query is shorter)
N_DISTRACTORS = 3       # niah_multikey
CWE_COMMON, CWE_UNCOMMON_FREQ, CWE_SHARE = 10, 2, 0.5
FWE_TOP, FWE_ALPHA = 3, 2.0

KEY_ADJ = ["quiet", "amber", "brave", "dusty", "eager", "frozen", "gentle", "hollow", "icy", "jolly", "lucky",
           "misty", "noble", "olive", "proud", "rapid", "rusty", "silent", "tidy", "velvet", "wild", "young",
           "bright", "calm"]
KEY_NOUN = ["harbor", "falcon", "meadow", "lantern", "canyon", "orchard", "island", "garden", "tower", "river",
            "forest", "castle", "valley", "bridge", "comet", "desert", "glacier", "market", "temple", "village"]
PHRASE_WORDS = ["apple", "pencil", "copper", "violet", "thunder", "willow", "marble", "pepper", "saffron",
                "orchid", "cobalt", "sparrow", "tundra", "quartz", "juniper", "ember", "biscuit", "rocket",
                "walnut", "dolphin", "kettle", "tulip", "anchor", "blanket", "cactus", "ginger", "helmet",
                "jacket", "ladder", "mirror", "noodle", "parrot", "ribbon", "saddle", "tiger", "wagon"]
_NOUN = {"uuid": "code", "words": "phrase"}     # number kinds: "number"
_STOP = {"that", "this", "with", "have", "from", "they", "what", "there", "their", "about", "would", "which",
         "when", "more", "will", "were", "than", "them", "then", "been", "into", "some", "because", "could",
         "other", "only", "your", "just", "also", "these", "those", "make", "even", "most", "much", "many"}


VT_INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."


def value_noun(kind: str) -> str:
    return _NOUN.get(kind, "number")


def _rng(seed, subtask, length, index):
    return np.random.default_rng([int(seed), 23, zlib.crc32(subtask.encode()), int(length), int(index)])


def _value(rng, kind):
    if kind.startswith("number"):
        n = int(kind[6:])
        return str(int(rng.integers(10 ** (n - 1), 10 ** n)))
    if kind == "uuid":
        h = "0123456789abcdef"
        return "-".join("".join(h[int(i)] for i in rng.integers(16, size=k)) for k in (8, 4, 4))
    if kind == "words":
        k = int(rng.integers(1, 4))
        return " ".join(PHRASE_WORDS[int(i)] for i in rng.choice(len(PHRASE_WORDS), k, replace=False))
    raise InvalidArgumentError(f"unknown value kind {kind!r} (known: {', '.join(VALUE_KINDS)})")


def _distinct(make, k):
    """``k`` values of ``make()`` none of which contains another or shares a word with it."""
    out = []
    while len(out) < k:
        v = make()
        if not any(v in o or o in v or set(v.split()) & set(o.split()) for o in out):
            out.append(v)
    return out


def _keys(rng, k):
    return _distinct(lambda: f"{KEY_ADJ[int(rng.integers(len(KEY_ADJ)))]}-"
                                  f"{KEY_NOUN[int(rng.integers(len(KEY_NOUN)))]}", k)


def _names(rng, k):
    abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return _distinct(lambda: "".join(abc[int(i)] for i in rng.integers(26, size=5)), k)


def _and(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def needle_text(kind, key, value):
    return f"The special magic {value_noun(kind)} for {key} is: {value}."


def _golden(i, u0):
    """Depth of example i: a low-discrepancy sequence in [0.05, 0.95] (spread for any n)."""
    return round(0.05 + 0.9 * ((u0 + 0.6180339887 * i) % 1.0), 4)


# ---------------------------------------------------------------- prompts
def split_prompt(tok_model, instruction, document, question, prefix, chat=True):
    """(context ids, query ids) of the user turn "{instruction}\\n\\n{document}\\n\\n{question}" and
    the reply's start ``prefix``; the two parts are tokenized separately (see the module doc).
    ``chat`` False (or no template): the same text as plain completion-style prompt."""
    head, tail = instruction + "\n\n", "\n\n" + question
    user = head + document + tail
    if chat and tok_model._e.chat_template:
        full = tok_model.apply_chat_template([{"role": "user", "content": user}])
        i = full.index(user) + len(head) + len(document)
        return (tok_model.tokenize(full[:i], add_bos=False, special=True),
                tok_model.tokenize(full[i:] + prefix, add_bos=False, special=True))
    return tok_model.tokenize(head + document), tok_model.tokenize(tail + "\n" + prefix, add_bos=False)


class RulerTask:
    """The ruler suite; ``examples`` gives every (length, subtask, index) once per mode."""
    name = "ruler"
    metrics = ("score", "exact")
    chat = True  # False: completion-style prompts (base models), set by the CLI's --no-chat

    def __init__(self, subtasks=SUBTASKS, lengths=(2048, 4096, 8192), n=6, modes=MODES, seed=0,
                 haystack_dir=None, value_kinds=VALUE_KINDS):
        self.subtasks = list(subtasks)
        bad = [s for s in self.subtasks if s not in SUBTASKS]
        if bad or not self.subtasks:
            raise InvalidArgumentError(f"unknown ruler subtask(s) {bad} (known: {', '.join(SUBTASKS)})")
        self.modes = list(modes)
        if not self.modes or any(m not in MODES for m in self.modes):
            raise InvalidArgumentError(f"ruler modes must be among {MODES}, got {self.modes}")
        self.value_kinds = list(value_kinds)
        if not self.value_kinds or any(k not in VALUE_KINDS for k in self.value_kinds):
            raise InvalidArgumentError(f"value kinds must be among {VALUE_KINDS}, got {self.value_kinds}")
        self.lengths, self.n, self.seed = [int(x) for x in lengths], int(n), int(seed)
        if self.n < 1:
            raise InvalidArgumentError("ruler needs >= 1 example per subtask and length")
        self.haystack_dir = haystack_dir
        self._hay = self._vocab = None

    def hay(self):
        if self._hay is None:
            self._hay = hs.load_haystack(self.haystack_dir)
        return self._hay

    def vocab(self):
        """The essays' words of 4-9 letters (sorted, stop words out): cwe's word pool."""
        if self._vocab is None:
            words = set(re.findall(r"\b[a-z]{4,9}\b", "\n".join(self.hay())))
            self._vocab = sorted(words - _STOP)
        return self._vocab

    # ---- the task interface ----
    def max_new(self, ex) -> int:
        """Decode slots: the same for every example (one model per config), room for the query
        (agnostic mode) and the longest answer; ``ctx_need`` is what the context must hold."""
        return QUERY_ROOM + max(MAX_GEN.values())

    def ctx_need(self, ex) -> int:
        return len(ex["prompt"]) + ex["max_gen"]

    def examples(self, tok_model) -> list[dict]:
        out = []
        for L in self.lengths:
            for st in self.subtasks:
                for i in range(self.n):
                    ex = self.make(tok_model, st, L, i)
                    for mode in self.modes:
                        out.append(dict(ex, id=f"{ex['id']}/{mode}", mode=mode))
        return out

    def run(self, model, ex, cfg, n_ctx):
        pieces = [ex["prompt"]] if ex["mode"] == "aware" else [ex["context"], ex["query"]]
        _, text = greedy(model, pieces, ex["max_gen"])
        return {"prediction": text, "metrics": self.score(ex, text)}

    def score(self, ex, text):
        """``score``: fraction of the answers in the reply (whole tokens); single-answer niah also
        ``exact``: the answer is there and no other needle's value (multikey's distractors) is."""
        out = {"score": M.match_all(text, ex["answers"])}
        if ex["subtask"] in ("niah_single", "niah_multikey"):
            out["exact"] = float(out["score"] == 1.0 and M.match_all(text, ex.get("distractors", [])) == 0.0)
        return out

    # ---- generation ----
    def make(self, tok_model, subtask, length, index) -> dict:
        """One example (no mode yet), from (seed, subtask, length, index) alone."""
        rng = _rng(self.seed, subtask, length, index)
        gen = {"vt": self._vt, "cwe": self._cwe, "fwe": self._fwe}.get(subtask, self._niah)
        spec = gen(rng, subtask, length, index)
        max_gen = MAX_GEN[subtask]
        tok = lambda s: tok_model.tokenize(s, add_bos=False)  # noqa: E731
        frame = sum(len(p) for p in split_prompt(tok_model, spec["instruction"], "", spec["question"],
                                                 spec["prefix"], self.chat))
        budget = length - max_gen - frame
        for _ in range(6):      # shrink until prompt + generation fit `length`
            doc = spec["document"](tok, budget)
            ctx, qry = split_prompt(tok_model, spec["instruction"], doc, spec["question"], spec["prefix"], self.chat)
            over = len(ctx) + len(qry) + max_gen - length
            if over <= 0:
                break
            budget -= over
        else:
            raise InvalidArgumentError(f"ruler {subtask} at length {length}: the prompt does not fit")
        if len(qry) + max_gen > self.max_new(None):
            raise InvalidArgumentError(f"ruler {subtask}: a query of {len(qry)} tokens exceeds the decode room")
        ex = {"id": f"ruler/{subtask}/{length}/{index}", "subtask": subtask, "length": length, "index": index,
              "seed": self.seed, "question": spec["question"], "answers": spec["answers"], "max_gen": max_gen,
              "context": ctx, "query": qry, "prompt": ctx + qry}
        for k in ("kind", "depth", "depths", "needles", "distractors"):
            if spec.get(k) is not None:
                ex[k] = spec[k]
        return ex

    def _haystack_doc(self, rng, needles, depths):
        offset = int(rng.integers(len(self.hay())))
        return lambda tok, budget: hs.insert_needles(tok, self.hay(), budget, list(zip(needles, depths)),
                                                     offset=offset)

    def _niah(self, rng, subtask, length, index):
        kind = self.value_kinds[index % len(self.value_kinds)]
        noun = value_noun(kind)
        u0 = float(np.random.default_rng([self.seed, 29, zlib.crc32(subtask.encode()), length]).random())
        depth = _golden(index, u0)
        if subtask == "niah_single":
            keys, values = _keys(rng, 1), _distinct(lambda: _value(rng, kind), 1)
            pairs, asked = [(keys[0], values[0])], keys
        elif subtask == "niah_multikey":
            keys = _keys(rng, 1 + N_DISTRACTORS)
            values = _distinct(lambda: _value(rng, kind), len(keys))
            pairs, asked = list(zip(keys, values)), keys[:1]
        elif subtask == "niah_multivalue":
            k = int(rng.integers(2, 5))
            keys, values = _keys(rng, 1), _distinct(lambda: _value(rng, kind), k)
            pairs, asked = [(keys[0], v) for v in values], keys
        else:  # niah_multiquery
            k = int(rng.integers(2, 5))
            keys, values = _keys(rng, k), _distinct(lambda: _value(rng, kind), k)
            pairs, asked = list(zip(keys, values)), keys
        needles = [needle_text(kind, key, v) for key, v in pairs]
        # the first needle (the target / first value / first key) at the example's depth, the others drawn
        depths = [depth] + [round(float(d), 4) for d in rng.uniform(0.02, 0.98, len(needles) - 1)]
        answers = [v for key, v in pairs if key in asked]
        distractors = [v for key, v in pairs if key not in asked]
        if subtask in ("niah_single", "niah_multikey"):
            q = f"What is the special magic {noun} for {asked[0]} mentioned in the provided text?"
            prefix = f"The special magic {noun} for {asked[0]} is"
        else:
            q = f"What are all the special magic {noun}s for {_and(asked)} mentioned in the provided text?"
            prefix = f"The special magic {noun}s for {_and(asked)} are"
        return {"instruction": f"Some special magic {noun}s are hidden within the following text. Make sure to "
                               f"memorize them. I will quiz you about the {noun}s afterwards.",
                "document": self._haystack_doc(rng, needles, depths), "question": q, "prefix": prefix,
                "answers": answers, "distractors": distractors, "kind": kind, "depth": depth, "depths": depths,
                "needles": needles}

    def _vt(self, rng, subtask, length, index):
        hops = int(rng.integers(2, 5))
        names = _names(rng, 2 * (hops + 1))
        value, other = _distinct(lambda: str(int(rng.integers(10000, 100000))), 2)
        needles, depths = [], []
        for chain, val in ((names[:hops + 1], value), (names[hops + 1:], other)):
            needles.append(f"VAR {chain[0]} = {val}.")
            needles += [f"VAR {chain[j + 1]} = VAR {chain[j]}." for j in range(hops)]
            depths += sorted(round(float(d), 4) for d in rng.uniform(0.02, 0.98, hops + 1))
        n = hops + 1
        return {"instruction": VT_INSTRUCTION,
                "document": self._haystack_doc(rng, needles, depths),
                "question": f"Find all variables that are assigned the value {value} in the text above.",
                "prefix": f"The {n} variables assigned the value {value} are: VAR",
                "answers": names[:n], "depths": depths, "needles": needles}

    def _cwe(self, rng, subtask, length, index):
        vocab = self.vocab()
        order = rng.permutation(len(vocab))       # the common words first, then the uncommon ones
        common = [vocab[int(j)] for j in order[:CWE_COMMON]]
        shuffle_seed = int(rng.integers(2 ** 31))

        def text(n):
            """About ``n`` items: each common word f_c >= 3x as often as an uncommon one."""
            f_c = max(3 * CWE_UNCOMMON_FREQ, round(CWE_SHARE * n / CWE_COMMON))
            n_unc = max(1, (n - CWE_COMMON * f_c) // CWE_UNCOMMON_FREQ)
            if CWE_COMMON + n_unc > len(vocab):
                raise InvalidArgumentError(f"cwe at length {length}: the essays have too few distinct words")
            items = common * f_c + [vocab[int(j)] for j in order[CWE_COMMON:CWE_COMMON + n_unc]] * CWE_UNCOMMON_FREQ
            np.random.default_rng(shuffle_seed).shuffle(items)
            return "\n".join(f"{k + 1}. {w}" for k, w in enumerate(items))

        return {"instruction": "Below is a numbered list of words. In these words, some appear more often than "
                               "others. Memorize the ones that appear most often.",
                "document": lambda tok, budget: _largest(tok, budget, text, f"cwe at length {length}"),
                "question": f"What are the {CWE_COMMON} most common words in the above list?",
                "prefix": f"The top {CWE_COMMON} words that appear most often in the list are:\n1.",
                "answers": common}

    def _fwe(self, rng, subtask, length, index):
        abc = "abcdefghijklmnopqrstuvwxyz"
        shuffle_seed = int(rng.integers(2 ** 31))
        coded = []          # drawn on demand, always in the same order: the first FWE_TOP are the answer

        def text(n):
            """About ``n`` coded words, the k-th most frequent ~ n k^-alpha / H times (at least once)."""
            if n < 64:
                raise InvalidArgumentError(f"fwe at length {length}: too short for a frequency ranking")
            v = n // 6
            while len(coded) < v:
                coded.append(_coded(rng, abc, coded))
            w = np.arange(1, v + 1, dtype=np.float64) ** -FWE_ALPHA
            counts = np.maximum(1, np.floor(n * w / w.sum())).astype(int)
            assert all(counts[j] > counts[j + 1] for j in range(FWE_TOP))
            items = [c for c, k in zip(coded[:v], counts) for _ in range(int(k))]
            np.random.default_rng(shuffle_seed).shuffle(items)
            return " ".join(items)

        text(64)            # draws the first coded words, so the answer is known now
        return {"instruction": "Read the following coded text and track the frequency of each coded word. Find the "
                               "three most frequently appeared coded words.",
                "document": lambda tok, budget: _largest(tok, budget, text, f"fwe at length {length}", lo=64),
                "question": "What are the three most frequently appeared words in the above coded text?",
                "prefix": "The three most frequently appeared words in the coded text are:",
                "answers": coded[:FWE_TOP]}


def _coded(rng, abc, taken):
    while True:
        w = "".join(abc[int(i)] for i in rng.integers(26, size=5))
        if w not in taken:
            return w


def _largest(tok, budget, text, what, lo=16):
    """``text(n)`` for the largest n with at most ``budget`` tokens (binary search on n)."""
    if len(tok(text(lo))) > budget:
        raise InvalidArgumentError(f"{what}: {budget} tokens are too few for the word list")
    hi = max(lo, int(budget))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok(text(mid))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text(lo)
