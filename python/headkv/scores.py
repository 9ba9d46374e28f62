"""Head score files: read (official HeadKV JSON or headkv's own format) and write headkv's format.

headkv's format is documented in docs/score_format.md; writes are atomic (temp file + rename), so a
reader never sees a half-written file.
"""
import json
import math
import os
import tempfile

import numpy as np

from . import _core

FORMAT = "headkv-scores"
VERSION = 1
METHODS = ("R", "R2")


def model_fingerprint(gguf_path):
    """16-hex-digit hash of a GGUF's architecture, hparams and tensor names/shapes/types."""
    return _core.model_fingerprint(os.fspath(gguf_path))


def model_info(gguf_path):
    """{"architecture", "n_layer", "n_head", "n_head_kv", "fingerprint", "local_layers"} of a GGUF
    (local_layers: the sliding-window layers, which keep their window; budgets go to the others)."""
    return _core.model_info(os.fspath(gguf_path))


def load_scores(path, model_path=None):
    """(scores [n_layer, n_head] float64, method "R"/"R2" or None for official files).

    With model_path the file must match that model (headkv.InvalidArgumentError otherwise)."""
    return _core.load_scores(os.fspath(path), None if model_path is None else os.fspath(model_path))


def build_document(scores, model, method, settings=None):
    """The headkv-scores JSON object. `model` is a GGUF path or a model_info() dict."""
    if not isinstance(model, dict):
        model = model_info(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    s = np.asarray(scores, dtype=np.float64)
    L, H, Hkv = int(model["n_layer"]), int(model["n_head"]), int(model["n_head_kv"])
    if s.shape != (L, H):
        raise ValueError(f"scores have shape {s.shape}, the model needs ({L}, {H}) (layers, query heads)")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("head scores must be finite and non-negative")
    info = {"architecture": str(model["architecture"]), "n_layer": L, "n_head": H, "n_head_kv": Hkv,
            "fingerprint": str(model["fingerprint"])}
    if model.get("local_layers"):
        info["local_layers"] = [int(i) for i in model["local_layers"]]
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": info,
        "method": method,
        "settings": dict(settings or {}),
        "scores": [[float(v) for v in row] for row in s],
    }


def write_json_atomic(path, obj):
    """json.dump to a temp file in the target's directory, fsync, then rename over `path`."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, allow_nan=False, indent=None, separators=(",", ":"))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_scores(path, scores, model, method, settings=None):
    """Writes headkv's score format atomically; `model` is a GGUF path or a model_info() dict."""
    write_json_atomic(path, build_document(scores, model, method, settings))


def data_dir():
    """Folder of the score files shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def shipped_scores(model_path, method="R2"):
    """Path of the shipped headkv-scores file for this model (matched by fingerprint) and method;
    headkv.InvalidArgumentError when none matches."""
    from .errors import InvalidArgumentError
    fp = model_fingerprint(model_path)
    found = []
    d = data_dir()
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, name), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if doc.get("format") == FORMAT and doc.get("model", {}).get("fingerprint") == fp:
            found.append(doc.get("method"))
            if doc.get("method") == method:
                return os.path.join(d, name)
    have = f" (shipped for it: {', '.join(map(str, found))})" if found else ""
    raise InvalidArgumentError(
        f"no shipped {method} head-score file matches this model (fingerprint {fp}){have}: compute one with "
        f"`headkv-scores -m {os.path.basename(os.fspath(model_path))} --method {method} -o scores.json` and pass "
        f"KVConfig(scores='scores.json')")


def write_official(path, per_example):
    """Writes the official HeadKV layout {"l-h": [scores...]} from a dict {(l, h): [scores]} or an
    array [L, H, n_examples] (mainly for tests and interchange)."""
    if isinstance(per_example, dict):
        obj = {f"{l}-{h}": [float(x) for x in v] for (l, h), v in per_example.items()}
    else:
        a = np.asarray(per_example, dtype=np.float64)
        obj = {f"{l}-{h}": [float(x) for x in a[l, h]] for l in range(a.shape[0]) for h in range(a.shape[1])}
    for v in obj.values():
        if any(not math.isfinite(x) for x in v):
            raise ValueError("head scores must be finite")
    write_json_atomic(path, obj)


if __name__ == "__main__":  # python -m headkv.scores: the headkv-scores tool
    import sys

    from .scoring.cli import main
    sys.exit(main())
