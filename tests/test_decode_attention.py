"""The decode step's attention over long caches: one query token over more than 512 keys is split
into runs of keys, one job per (KV head, run), merged afterwards (Context::attention_split). Checked
against the unsplit attention of a prefill over the same tokens and against transformers, including
sliding-window rings and quantized rows; the cut does not depend on the thread count."""
import numpy as np
import pytest

import headkv
from gguf_factory import write_tiny_llama


def _decoded(m, ids, n_prompt):
    """Logits of ids[n_prompt:] evaluated one token at a time after a prompt of n_prompt tokens."""
    m.reset()
    m.eval(ids[:n_prompt])
    out = [m.logits().copy()]
    for t in ids[n_prompt:-1]:
        m.eval([t])
        out.append(m.logits().copy())
    return np.array(out)


@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
def test_split_decode_matches_prefill(smollm2, essays, kv):
    """SmolLM2 (3 KV heads), 1300 prompt tokens then 6 single-token steps (1300-1306 keys: three runs
    per head): each step's logits against the same rows of one prefill's logits (the unsplit path),
    within 1e-4 of the logit range for f32 rows (measured 1e-6) and 2e-3 for f16 / q8_0 rows (the
    prefill attends over its chunk's own rows before they are stored; measured 2e-5 / 5e-4)."""
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2, type_k=kv, type_v=kv)
    ids = m.tokenize(essays[1])[:1307]
    assert len(ids) == 1307
    m.eval(ids, logits_all=True)
    ref = m.logits(all=True)[1299:1306]
    got = _decoded(m, ids, 1300)
    bound = (1e-4 if kv == "f32" else 2e-3) * float(ref.max() - ref.min())
    assert np.abs(got - ref).max() <= bound, np.abs(got - ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    one = headkv.Model(smollm2, n_ctx=2048, n_threads=1, type_k=kv, type_v=kv)
    assert np.array_equal(_decoded(one, ids, 1300), got)  # the same cut with one thread


def test_split_decode_with_rings_matches_transformers(tmp_path, smollm2):
    """A tiny gemma3 (one KV head, sliding-window layers of 300 positions kept as rings, one global
    layer) decoding past 600 keys: every step's logits against transformers over the whole sequence."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    path = write_tiny_llama(tmp_path / "g3.gguf", smollm2, arch="gemma3", n_embd=256, n_layer=6, n_head=4,
                            n_head_kv=1, n_ff=512, n_vocab=2048, head_dim=256, sliding_window=300)
    ids = [int(t) for t in np.random.default_rng(5).integers(3, 2048, 700)]
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="eager")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()[639:699]
    m = headkv.Model(str(path), n_ctx=1024, n_batch=64, n_threads=2, type_k="f32", type_v="f32")
    got = _decoded(m, ids, 640)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), np.abs(got - ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).all()
