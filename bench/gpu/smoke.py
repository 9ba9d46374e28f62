"""Quick CPU-vs-GPU check on any small GGUF (a device session's first look before the real tests)."""
import sys
import time

import numpy as np

import headkv

path = sys.argv[1]
rng = np.random.default_rng(0)
c = headkv.Model(path, n_ctx=1024, n_threads=8)
ids = [int(x) for x in rng.integers(0, c.n_vocab, 300)]
c.eval(ids)
ref = c.logits().copy()
for dev in ("cuda-fp32", "cuda"):
    t0 = time.time()
    g = headkv.Model(path, n_ctx=1024, device=dev)
    g.eval(ids)
    d0 = np.abs(g.logits() - ref).max()
    c.reset(); c.eval(ids)
    ds = []
    for t in (5, 6, 7, 8):
        c.eval([t]); g.eval([t])
        ds.append(float(np.abs(g.logits() - c.logits()).max()))
    print(f"{dev}: prompt max|dlogit| {d0:.3g} (|logit| max {np.abs(ref).max():.3g}), decode {ds}, {time.time()-t0:.1f}s")
for method in ("snapkv", "adakv", "streaming"):
    kw = dict(kv_method=method, kv_budget=64, max_new_tokens=16)
    cc = headkv.Model(path, n_ctx=1024, n_threads=8, **kw)
    gg = headkv.Model(path, n_ctx=1024, device="cuda-fp32", **kw)
    cc.eval(ids); gg.eval(ids)
    pc, pg = cc.kv_positions(), gg.kv_positions()
    same = sum(np.array_equal(a, b) for la, lb in zip(pc, pg) for a, b in zip(la, lb))
    total = sum(len(la) for la in pc)
    print(f"{method}: identical kept positions in {same}/{total} heads, "
          f"prompt max|dlogit| {np.abs(gg.logits() - cc.logits()).max():.3g}")
    cc.eval([9]); gg.eval([9])
    print(f"  decode max|dlogit| {np.abs(gg.logits() - cc.logits()).max():.3g}")
