"""Model families of the architecture table (cpp/src/model/arch.h) against transformers loading the
same GGUF: random-weight files of each architecture (Q/K/V biases for qwen2; per-head q/k norms and
a head size other than n_embd / n_head, given as key_length, for qwen3; NeoX RoPE for all; gemma2:
embedding scale, GeGLU, post-norms, attention and final soft-capping, every other layer sliding
over 8 positions; gemma3: q/k norms and 5 sliding-window layers with their own RoPE base to each
global one; phi3: fused Q/K/V and gate/up tensors). The 24-token prompt is longer than the windows."""
import numpy as np
import pytest

import headkv
from gguf_factory import write_tiny_llama

SHAPE = dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_vocab=2048)
# transformers reads no key_length for qwen3 / gemma GGUFs and uses its config defaults (128; 256,
# also the gemmas' query_pre_attn_scalar).
ARCHS = {"qwen2": {}, "qwen3": {"head_dim": 128}, "phi3": {}, "gemma2": {"head_dim": 256, "sliding_window": 8},
         "gemma3": {"head_dim": 256, "sliding_window": 8, "n_layer": 6}}
# Measured: 3.1e-6 (qwen2), 3.6e-6 (qwen3, phi3), 2.6e-6 (gemma2), 4.7e-6 (gemma3) on logits of magnitude
# 3.5-6.3; the weight-type test's bound.
REL_BOUND = 1e-4


@pytest.fixture(scope="module")
def ids():
    return [int(t) for t in np.random.default_rng(3).integers(3, SHAPE["n_vocab"], 24)]


def _files(tmp_path, smollm2, arch, wtype="F32"):
    return write_tiny_llama(tmp_path / f"tiny_{arch}_{wtype}.gguf", smollm2, arch=arch, wtype=wtype,
                            **{**SHAPE, **ARCHS[arch]})


@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_match_transformers(arch, wtype, tmp_path, smollm2, ids):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    path = _files(tmp_path, smollm2, arch, wtype)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="eager")
    assert type(hf).__name__.lower().startswith(arch)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    m = headkv.Model(str(path), n_ctx=128, n_threads=2, type_k="f32", type_v="f32")
    assert m.metadata["general.architecture"] == arch
    m.eval(ids, logits_all=True)
    ours = m.logits(all=True)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= REL_BOUND * max(1.0, scale), (arch, np.abs(ours - ref).max())
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_compressing_methods_run(arch, tmp_path, smollm2, essays):
    """Compression on the new families: kept positions per head within the budget, and decoding from
    the arena agrees with the full cache on the first greedy token of a short prompt kept whole."""
    path = _files(tmp_path, smollm2, arch)
    f32 = dict(type_k="f32", type_v="f32")  # the compressed prefill attends over fp32 K/V; so does this full cache
    full = headkv.Model(str(path), n_ctx=512, n_threads=2, **f32)
    ids = full.tokenize(essays[0][:600])[:100]
    ids = [t for t in ids if t < SHAPE["n_vocab"]][:80]
    full.eval(ids)
    snap = headkv.Model(str(path), n_ctx=512, n_threads=2, kv_method="snapkv", kv_budget=128, **f32)
    snap.eval(ids)  # budget above the prompt: every token kept, same logits up to summation order
    np.testing.assert_allclose(snap.logits(), full.logits(), atol=1e-4)
    small = headkv.Model(str(path), n_ctx=512, n_threads=2, kv_method="snapkv", kv_budget=32)
    small.eval(ids)
    assert all(len(p) <= 32 for layer in small.kv_positions() for p in layer)
    with pytest.raises(headkv.InvalidArgumentError, match="score"):
        headkv.Model(str(path), n_ctx=512, kv_method="headkv", kv_budget=64).eval(ids)


def test_longrope_is_refused(tmp_path, smollm2):
    """Phi-3 128k files carry LongRoPE factor tensors, which headkv does not apply: a typed error, not
    silently wrong positions."""
    hd = SHAPE["n_embd"] // SHAPE["n_head"]
    path = write_tiny_llama(tmp_path / "phi3_long.gguf", smollm2, arch="phi3", **SHAPE,
                            extra_tensors={"rope_factors_long.weight": np.ones(hd // 2)})
    with pytest.raises(headkv.UnsupportedError, match="LongRoPE"):
        headkv.Model(str(path))


def test_unknown_architecture_is_refused(tmp_path, smollm2):
    path = write_tiny_llama(tmp_path / "gemma.gguf", smollm2, arch="falcon", n_vocab=256)
    with pytest.raises(headkv.UnsupportedError, match="architecture 'falcon'.*qwen3"):
        headkv.Model(str(path))


def test_mistral_style_sliding_window_matches_transformers(tmp_path, smollm2, ids):
    """A llama file with attention.sliding_window slides in every layer (Mistral 7B v0.1): against
    transformers' Mistral with the same weights (those of the Llama it loads from the GGUF). Chunks of
    5 tokens make the rings (8 + 5 rows) wrap; a compressing method keeps each layer's window."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM
    path = write_tiny_llama(tmp_path / "mistral.gguf", smollm2, sliding_window=8, **SHAPE)
    llama = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    cfg = {k: v for k, v in llama.config.to_dict().items() if k in MistralConfig().to_dict() and k != "model_type"}
    mistral = MistralForCausalLM(MistralConfig(**{**cfg, "sliding_window": 8})).eval()
    mistral.config._attn_implementation = "eager"
    mistral.load_state_dict(llama.state_dict())
    with torch.no_grad():
        ref = mistral(torch.tensor([ids])).logits[0].numpy()
        plain = llama(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ref - plain).max() > 1e-2  # the window matters over 24 tokens
    m = headkv.Model(str(path), n_ctx=128, n_batch=5, n_threads=2, type_k="f32", type_v="f32")
    m.eval(ids, logits_all=True)
    ours = m.logits(all=True)
    assert np.abs(ours - ref).max() <= REL_BOUND * np.abs(ref).max(), np.abs(ours - ref).max()
    comp = headkv.Model(str(path), n_ctx=128, n_threads=2, kv_method="snapkv", kv_budget=16, type_k="f32", type_v="f32")
    comp.eval(ids[:-1])
    # the last max(window - 1, observation window 8) = 8 positions (attention masks the oldest)
    assert all(list(p) == list(range(len(ids) - 9, len(ids) - 1)) for layer in comp.kv_positions() for p in layer)
    comp.eval(ids[-1:])
    np.testing.assert_allclose(comp.logits(), ours[-1], atol=1e-4)
