"""GGUF reading: versions, metadata value types, alignment, and every supported weight type run
end to end against transformers loading the same file (gguf-py dequantization inside)."""
import shutil

import numpy as np
import pytest

import headkv
from gguf_factory import patch, write_tiny_llama

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
# K-quants need rows of 256. The first 2048 tokens of SmolLM2's vocabulary: transformers parses a
# 49k-token vocabulary in pure Python on every load, seconds each, and the weights checked here do
# not depend on the vocabulary's size.
SHAPE = dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_vocab=2048)


def _logits(path, ids):
    m = headkv.Model(str(path), n_ctx=128, n_threads=2, type_k="f32", type_v="f32")  # fp32 K/V as the oracle
    m.eval(ids, logits_all=True)
    return m.logits(all=True)


@pytest.fixture(scope="module")
def prompt_ids():
    """Token ids for the random-weight models: any ids below the small vocabulary serve."""
    return [int(t) for t in np.random.default_rng(3).integers(3, SHAPE["n_vocab"], 24)]


@pytest.mark.parametrize("wtype", TYPES)
def test_weight_type_matches_transformers(wtype, tmp_path, smollm2, prompt_ids):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    path = write_tiny_llama(tmp_path / f"tiny_{wtype}.gguf", smollm2, wtype=wtype, **SHAPE)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="eager")
    with torch.no_grad():
        ref = hf(torch.tensor([prompt_ids])).logits[0].numpy()
    ours = _logits(path, prompt_ids)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, scale), (wtype, np.abs(ours - ref).max(), scale)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_version_2_reads_like_version_3(tmp_path, smollm2, prompt_ids):
    v3 = write_tiny_llama(tmp_path / "v3.gguf", smollm2, wtype="Q8_0", n_vocab=SHAPE["n_vocab"])
    v2 = tmp_path / "v2.gguf"
    shutil.copyfile(v3, v2)
    patch(v2, 4, "<I", 2)  # v2 and v3 share the little-endian layout
    np.testing.assert_array_equal(_logits(v2, prompt_ids), _logits(v3, prompt_ids))


def test_custom_alignment(tmp_path, smollm2, prompt_ids):
    a32 = write_tiny_llama(tmp_path / "a32.gguf", smollm2, wtype="Q4_0", n_vocab=SHAPE["n_vocab"])
    a256 = write_tiny_llama(tmp_path / "a256.gguf", smollm2, wtype="Q4_0", alignment=256, n_vocab=SHAPE["n_vocab"])
    assert headkv.Model(str(a256), n_ctx=16).metadata["general.alignment"] == 256
    np.testing.assert_array_equal(_logits(a32, prompt_ids), _logits(a256, prompt_ids))
    bad = tmp_path / "bad_align.gguf"
    from gguf import GGUFValueType as V
    write_tiny_llama(bad, smollm2, wtype="Q4_0", extra={"general.alignment": (48, V.UINT32)})  # not a power of 2
    with pytest.raises(headkv.FormatError, match="power of two"):
        headkv.Model(str(bad))


def test_all_metadata_value_types(tmp_path, smollm2):
    from gguf import GGUFValueType as V
    extra = {
        "test.u8": (200, V.UINT8), "test.i8": (-100, V.INT8), "test.u16": (60000, V.UINT16),
        "test.i16": (-30000, V.INT16), "test.u32": (4000000000, V.UINT32), "test.i32": (-2000000000, V.INT32),
        "test.u64": (2**63 + 5, V.UINT64), "test.i64": (-(2**62), V.INT64), "test.f32": (1.5, V.FLOAT32),
        "test.f64": (2.0**-30, V.FLOAT64), "test.bool": (True, V.BOOL), "test.str": ("héllo ✓", V.STRING),
        "test.arr_i32": ([1, -2, 3], V.ARRAY), "test.arr_str": (["a", "bc"], V.ARRAY),
        "test.arr_f32": ([0.5, -0.25], V.ARRAY),
    }
    path = write_tiny_llama(tmp_path / "meta.gguf", smollm2, extra=extra)
    md = headkv.Model(str(path), n_ctx=16).metadata
    for k, (v, _) in extra.items():
        assert md[k] == v, k
    assert isinstance(md["test.bool"], bool)


ROPE_CASES = {
    "linear": ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
               {"rope_type": "linear", "factor": 4.0}),
    "llama3": ({"llama.rope.scaling.type": "llama3", "llama.rope.scaling.factor": 8.0,
                "llama.rope.scaling.low_freq_factor": 1.0, "llama.rope.scaling.high_freq_factor": 4.0,
                "llama.rope.scaling.original_context_length": 64},
               {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}),
}


@pytest.mark.parametrize("case", ["untied", "linear", "llama3"])
def test_output_head_and_rope_scaling_match_transformers(case, tmp_path, smollm2):
    """Untied output.weight, and RoPE scaling metadata (transformers' GGUF loader ignores the
    scaling keys, so the same rule is set on its config by hand)."""
    torch = pytest.importorskip("torch")
    from gguf import GGUFValueType as V
    from transformers import AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    kw = {"tied": False} if case == "untied" else {"extra": {
        k: (v, V.STRING if isinstance(v, str) else V.UINT32 if isinstance(v, int) else V.FLOAT32)
        for k, v in ROPE_CASES[case][0].items()}}
    path = write_tiny_llama(tmp_path / f"{case}.gguf", smollm2, wtype="F16", **SHAPE, **kw)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="eager")
    if case != "untied":
        hf.config.rope_parameters = dict(ROPE_CASES[case][1], rope_theta=10000.0)
        hf.model.rotary_emb = LlamaRotaryEmbedding(config=hf.config)
    else:
        assert not hf.config.tie_word_embeddings
    ids = list(range(1000, 1120))  # positions beyond original_context_length exercise the scaling
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    ours = _logits(path, ids)
    assert np.abs(ours - ref).max() < 1e-4
