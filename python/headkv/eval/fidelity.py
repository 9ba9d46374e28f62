"""Fidelity of a compressed cache to the full one on real text (no task, no answer key).

For each essay excerpt (a prompt of ``prompt_tokens`` tokens followed by ``cont_tokens`` held-out
tokens of the same text):

* the full cache generates ``gen_tokens`` greedy tokens (the reference); the compressed cache is
  then fed the same tokens (teacher forcing), which gives, per position, its own greedy choice
  and its next-token distribution:
  - ``greedy_prefix``: fraction of the reference tokens the compressed cache reproduces before
    its first different greedy token (= how long free-running greedy outputs stay identical),
  - ``top1_agree``: fraction of positions where both caches pick the same greedy token,
  - ``kl``: mean KL(p_full || p_compressed) over the positions, in nats;
* ``nll``: mean negative log-likelihood (nats/token) of the held-out continuation given the
  compressed prompt, and ``nll_delta`` = nll - nll of the full cache.
"""
from __future__ import annotations

import numpy as np

from .. import haystack as hs
from ..errors import InvalidArgumentError
from . import metrics as M


class FidelityTask:
    name = "fidelity"
    metrics = ("greedy_prefix", "top1_agree", "kl", "nll", "nll_delta")

    def __init__(self, n_essays=3, prompt_tokens=1024, gen_tokens=32, cont_tokens=64, seed=0, haystack_dir=None):
        self.n, self.P, self.G, self.C = int(n_essays), int(prompt_tokens), int(gen_tokens), int(cont_tokens)
        if min(self.n, self.P, self.G, self.C) < 1:
            raise InvalidArgumentError("fidelity needs >= 1 essay and positive prompt/gen/continuation lengths")
        self.seed = int(seed)
        self.haystack_dir = haystack_dir
        self._ref = {}

    def max_new(self, ex) -> int:
        return max(self.G, self.C) + 1

    def examples(self, tok_model) -> list[dict]:
        hay = hs.load_haystack(self.haystack_dir)
        rng = np.random.default_rng([self.seed, 9])
        order = rng.permutation(len(hay))
        out = []
        for k in range(min(self.n, len(hay))):
            i = int(order[k])
            text = "\n\n".join(hay[(i + j) % len(hay)] for j in range(8))  # long enough for any prompt
            ids = tok_model.tokenize(text)
            need = self.P + self.C
            if len(ids) < need:
                raise InvalidArgumentError(f"essays {i}.. have {len(ids)} tokens, fewer than {need}")
            out.append({"id": f"fidelity/{i}/p{self.P}g{self.G}c{self.C}", "essay": i, "seed": self.seed, "length": self.P,
                        "prompt": ids[:self.P], "continuation": ids[self.P:need]})
        return out

    # ---- passes ----
    def _teacher_forced(self, model, prompt, forced):
        """Logits before each forced token: rows predict forced[0..]. Free-runs when forced is None."""
        model.reset()
        model.eval(prompt)
        rows, toks = [], []
        for i in range(self.G):
            lg = np.array(model.logits(), dtype=np.float32)
            rows.append(lg)
            t = int(lg.argmax()) if forced is None else int(forced[i])
            toks.append(t)
            if i + 1 < self.G:
                model.eval([t])
        return np.stack(rows), toks

    def _nll(self, model, prompt, cont):
        """Mean -log p(cont | prompt), the continuation fed one token at a time (the decode path;
        a multi-token logits_all eval after a prompt breaks later decodes on the CUDA backend)."""
        model.reset()
        model.eval(prompt)
        rows = []
        for i, t in enumerate(cont):
            rows.append(np.array(model.logits(), dtype=np.float32))
            if i + 1 < len(cont):
                model.eval([int(t)])
        return float(M.token_nll(np.stack(rows), cont).mean())

    def reference(self, full_model, ex):
        if ex["id"] not in self._ref:
            logits, toks = self._teacher_forced(full_model, ex["prompt"], None)
            self._ref[ex["id"]] = {"logits": logits, "tokens": toks,
                                   "nll": self._nll(full_model, ex["prompt"], ex["continuation"])}
        return self._ref[ex["id"]]

    def run(self, model, ex, cfg, n_ctx, full_model=None):
        ref = self.reference(full_model if full_model is not None else model, ex)
        if cfg.method == "full":
            logits, nll = ref["logits"], ref["nll"]
        else:
            logits, _ = self._teacher_forced(model, ex["prompt"], ref["tokens"])
            nll = self._nll(model, ex["prompt"], ex["continuation"])
        # the full cache's greedy text; for a compressed cache, its own greedy pick at each position
        text = model.detokenize([int(t) for t in logits.argmax(-1)]).decode("utf-8", errors="replace")
        agree = logits.argmax(-1) == np.asarray(ref["tokens"])
        prefix = int(np.argmin(agree)) if not agree.all() else len(agree)
        kl = M.kl_divergence(ref["logits"], logits)
        return {"prediction": text,
                "metrics": {"greedy_prefix": prefix / len(agree), "top1_agree": float(agree.mean()),
                            "kl": float(kl.mean()), "nll": nll, "nll_delta": nll - ref["nll"]}}
