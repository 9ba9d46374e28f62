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


def _longrope_file(tmp_path, smollm2, orig, name="phi3_long.gguf", **drop):
    """A phi3 file with LongRoPE factors (long 1.5-4, short 1-1.4 per pair), trained context 512 over an
    original `orig`, and the converter's attention factor sqrt(1 + ln(512/orig) / ln(orig))."""
    import gguf
    hd = SHAPE["n_embd"] // SHAPE["n_head"]
    rng = np.random.default_rng(11)
    long_f, short_f = rng.uniform(1.5, 4.0, hd // 2), rng.uniform(1.0, 1.4, hd // 2)
    attn_factor = float(np.sqrt(1 + np.log(512 / orig) / np.log(orig)))
    tensors = {"rope_factors_long.weight": long_f, "rope_factors_short.weight": short_f}
    for k in drop:
        tensors.pop(k + ".weight")
    path = write_tiny_llama(tmp_path / name, smollm2, arch="phi3", **SHAPE, extra_tensors=tensors, extra={
        "phi3.rope.scaling.original_context_length": (orig, gguf.GGUFValueType.UINT32),
        "phi3.rope.scaling.attn_factor": (attn_factor, gguf.GGUFValueType.FLOAT32)})
    return path, long_f, short_f


@pytest.mark.parametrize("orig,n_ctx,which", [(16, 128, "long"), (256, 128, "short")])
def test_longrope_matches_transformers(orig, n_ctx, which, tmp_path, smollm2, ids):
    """Phi-3 128k-style LongRoPE against transformers' Phi3 with rope_type longrope and the same
    weights: a context longer than the original training length rotates with the long factors (24
    prompt tokens > 16 in transformers, n_ctx 128 > 16 here, llama.cpp's rule), a shorter one with the
    short factors; cos and sin carry the attention factor in both."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM
    path, long_f, short_f = _longrope_file(tmp_path, smollm2, orig)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    cfg = plain.config.to_dict()
    cfg.update(max_position_embeddings=512, original_max_position_embeddings=orig, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "long_factor": long_f.tolist(),
        "short_factor": short_f.tolist(), "original_max_position_embeddings": orig})
    cfg = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "architectures")}
    hf = Phi3ForCausalLM(Phi3Config(**cfg)).eval()
    hf.config._attn_implementation = "eager"
    hf.load_state_dict(plain.state_dict())
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
        base = plain(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ref - base).max() > 1e-2  # the factors matter
    m = headkv.Model(str(path), n_ctx=n_ctx, n_threads=2, type_k="f32", type_v="f32")
    m.eval(ids, logits_all=True)
    ours = m.logits(all=True)
    assert np.abs(ours - ref).max() <= REL_BOUND * max(1.0, np.abs(ref).max()), (which, np.abs(ours - ref).max())
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    # decode steps continue the same rotation
    m2 = headkv.Model(str(path), n_ctx=n_ctx, n_threads=2, type_k="f32", type_v="f32")
    m2.eval(ids[:20])
    for t in ids[20:]:
        m2.eval([t])
    assert np.abs(m2.logits() - ref[-1]).max() <= REL_BOUND * max(1.0, np.abs(ref).max())


def test_longrope_needs_both_factor_sets(tmp_path, smollm2):
    path, _, _ = _longrope_file(tmp_path, smollm2, 16, rope_factors_short=True)
    with pytest.raises(headkv.FormatError, match="rope_factors_long and rope_factors_short"):
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
