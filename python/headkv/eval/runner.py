"""Tasks x KV configs over one GGUF, one JSONL line per (task, example, config), resumable.

``OUT/results.jsonl`` gets a line as soon as an example finishes under a config; a later run with
the same OUT skips every (task, example id, config, seed) already there, so an interrupted run
continues where it stopped and a finished one recomputes nothing. ``OUT/run.json`` records the
settings that change numbers (model fingerprint, n_ctx, KV options, score-file hash); a rerun with
different ones is refused rather than mixed into the same results.
Examples run in the task's order with every config inside, so a partial run covers all configs
for the examples it reached.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

from ..errors import ContextFullError, InvalidArgumentError
from ..io import write_text_atomic
from .engine import Config, EngineOptions, make_model

RESULTS = "results.jsonl"
MANIFEST = "run.json"
# example fields copied into each record (the prompt's token ids are not)
RECORD_FIELDS = ("length", "depth", "dataset", "kind", "metric", "needle", "question", "answer", "distractor",
                 "answers", "essay", "subtask", "Q", "mode")


def record_key(r: dict) -> tuple:
    """What makes a result reusable: task, example, config, seed, and the score file's hash for headkv."""
    return (r["task"], r["id"], r["config"], r.get("seed"), r.get("scores"))


def read_results(out_dir) -> list[dict]:
    """Records of every ``results*.jsonl`` in ``out_dir`` (one file per shard)."""
    out = []
    for p in sorted(Path(out_dir).glob("results*.jsonl")):
        out.extend(read_jsonl(p))
    return out


def read_jsonl(path) -> list[dict]:
    """Records of a results JSONL. A last line cut short by a crash is dropped from the file."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    good = data[:data.rfind(b"\n") + 1]
    if len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    out = []
    for line in good.decode("utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()[:16]


def manifest(opts: EngineOptions) -> dict:
    from .. import __version__
    from ..scores import model_fingerprint
    return {"model": os.path.basename(opts.model_path), "fingerprint": model_fingerprint(opts.model_path),
            "n_ctx": opts.n_ctx, "device": opts.device, "window": opts.window, "beta": opts.beta,
            "pooling": opts.pooling, "kernel": opts.kernel, "span": _span(opts), "reach": _reach(opts), "probe": opts.probe,
            "adaptive": opts.adaptive, "value_fit": opts.value_fit,
            # only when set, so that folders written before the option resume
            **({"cap_ceiling": opts.cap_ceiling} if opts.cap_ceiling else {}),
            "headkv": __version__,
            "decoding": "greedy"}


def scores_identity(opts: EngineOptions) -> str:
    """``name:sha256[:16]`` of the head-score file the headkv method uses (given or shipped)."""
    p = opts.scores or shipped_scores(opts.model_path)
    if not p:
        return "builtin"
    return f"{os.path.basename(p)}:{_sha256(p)}"


def shipped_scores(model_path):
    """The R2 score file headkv ships for this model (matched by fingerprint), or None."""
    from ..errors import InvalidArgumentError
    from ..scores import shipped_scores as lookup
    try:
        return lookup(model_path, "R2")
    except (InvalidArgumentError, OSError):
        return None


_NUMERIC = ("fingerprint", "n_ctx", "window", "beta", "pooling", "kernel", "span", "reach", "probe", "adaptive", "value_fit",
            "cap_ceiling", "decoding")


def _span(opts: EngineOptions) -> int:
    """The span the models get (KVConfig's rule when not given)."""
    from ..kv import KVConfig
    return KVConfig(pooling=opts.pooling, kernel=opts.kernel, span=opts.span).resolved_span()


def _reach(opts: EngineOptions) -> int:
    """The forward reach the models get (KVConfig's rule when not given)."""
    from ..kv import KVConfig
    return KVConfig(pooling=opts.pooling, kernel=opts.kernel, span=opts.span, reach=opts.reach).resolved_reach()


def check_manifest(out_dir: Path, m: dict) -> None:
    p = out_dir / MANIFEST
    if p.exists():
        old = json.loads(p.read_text())
        diff = [k for k in _NUMERIC if old.get(k) != m.get(k)]
        if diff:
            raise InvalidArgumentError(f"{out_dir} holds results made with other settings ({', '.join(diff)}: "
                                       f"{[old.get(k) for k in diff]} vs {[m.get(k) for k in diff]}); "
                                       f"use another --out")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(p, json.dumps(m, indent=1) + "\n")


class Runner:
    def __init__(self, opts: EngineOptions, tasks, configs: list[Config], out_dir, progress=True, log=None,
                 shard=(0, 1)):
        """``shard=(i, n)``: run only configs i, i+n, i+2n, ... (separate processes, one file each)."""
        i, n = shard
        if not (0 <= i < n):
            raise InvalidArgumentError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
        configs = list(configs)[i::n]
        if not configs:
            raise InvalidArgumentError("no KV configs to run")
        self.opts, self.tasks, self.configs = opts, list(tasks), configs
        self.results_name = RESULTS if n == 1 else f"results.shard{i}of{n}.jsonl"
        self.scores_id = None
        self.out = Path(out_dir)
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._models: OrderedDict = OrderedDict()

    def _model(self, cfg: Config, max_new: int, probe=None):
        key = (cfg, max_new, probe)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        m = make_model(self.opts, cfg, max_new, probe)
        self._models[key] = m
        while len(self._models) > 2 * len(self.configs) + 1:
            self._models.popitem(last=False)
        return m

    def run(self) -> dict:
        """Runs what is missing; returns {"computed": n, "skipped": n}."""
        import headkv
        tok_model = headkv.Model(self.opts.model_path, n_ctx=256, n_threads=1)
        # every task's examples first: bad input fails here, before the output folder is touched
        examples = [task.examples(tok_model) for task in self.tasks]
        if any(c.method == "headkv" for c in self.configs):
            self.scores_id = scores_identity(self.opts)
        check_manifest(self.out, manifest(self.opts))
        path = self.out / self.results_name
        done = {record_key(r) for r in read_results(self.out)}
        computed = skipped = 0
        for task, exs in zip(self.tasks, examples):
            todo = []
            for ex in exs:
                # tokens the context must hold; a task whose decode slots exceed what it generates
                # (ruler: room for an appended query) says so with ctx_need
                need = task.ctx_need(ex) if hasattr(task, "ctx_need") else len(ex["prompt"]) + task.max_new(ex)
                if need > self.opts.n_ctx:
                    raise ContextFullError(f"{task.name} example {ex['id']}: prompt of {len(ex['prompt'])} tokens + "
                                           f"{need - len(ex['prompt'])} new ones exceed n_ctx={self.opts.n_ctx}")
                for cfg in self.configs:
                    sc = self.scores_id if cfg.method == "headkv" else None
                    if (task.name, ex["id"], cfg.name, ex.get("seed"), sc) in done:
                        skipped += 1
                    else:
                        todo.append((ex, cfg))
            self.log(f"[headkv-eval] {task.name}: {len(exs)} examples x {len(self.configs)} configs, "
                     f"{len(todo)} to run")
            bar = _bar(len(todo), task.name, self.progress)
            with open(path, "a", encoding="utf-8") as f:
                for ex, cfg in todo:
                    bar.set_postfix_str(f"{cfg.name} {ex['id']}", refresh=False)
                    rec = self._one(task, ex, cfg)
                    f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
                    f.flush()
                    computed += 1
                    bar.update(1)
            bar.close()
        return {"computed": computed, "skipped": skipped}

    def _one(self, task, ex, cfg: Config) -> dict:
        # the observation probe selects only where the question comes after the compression
        probe = self.opts.probe if ex.get("mode") == "agnostic" and cfg.method != "full" else None
        model = self._model(cfg, task.max_new(ex), probe)
        kw = {}
        if task.name == "fidelity" and cfg.method != "full":
            kw["full_model"] = self._model(Config("full", None), task.max_new(ex))
        t0 = time.perf_counter()
        res = task.run(model, ex, cfg, self.opts.n_ctx, **kw)
        dt = time.perf_counter() - t0
        st = model.kv_stats()
        if "bytes_used" in st:  # compressed: entries held (prompt kept + decoded)
            kv = int(st["bytes_used"])
        else:  # full cache: the tokens in it
            kv = int(st["bytes_held"]) // self.opts.n_ctx * model.n_past
        rec = {"task": task.name, "id": ex["id"], "config": cfg.name, "method": cfg.method, "budget": cfg.budget,
               "kv_type": cfg.kv_type, "seed": ex.get("seed")}
        if cfg.method == "headkv":
            rec["scores"] = self.scores_id
        rec.update({k: ex[k] for k in RECORD_FIELDS if k in ex})
        rec.update({"n_prompt": len(ex["prompt"]), "prediction": res["prediction"], "metrics": res["metrics"],
                    "kv_bytes": kv, "time_s": round(dt, 3)})
        return rec


class _NoBar:
    def set_postfix_str(self, *a, **k):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total, desc, on):
    if not on:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="ex", dynamic_ncols=True, file=sys.stderr)
