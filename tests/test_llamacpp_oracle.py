"""llama.cpp as the outside oracle for the real models: tokenization and greedy continuations.

llama.cpp comes from the llama-cpp-python package built from its sdist (`pip install --no-deps
llama-cpp-python`, a C/C++ build); these tests skip where it is not installed (CI does not build it:
about 15 minutes on two cores). Both engines read the same GGUF file; llama.cpp runs on the CPU with
its default (f16) KV cache, as headkv does.

Greedy decoding compares two different numerical paths (llama.cpp quantizes activations to 8 bits for
its quantized matmuls, headkv computes them in fp32), so two logits that are nearly tied can swap: the
tests bound the logits' difference at every step the two share and require the same first token
(EVALUATION.md / the model-families notes give how many of the 32-token continuations are identical)."""
import numpy as np
import pytest

import headkv
from tokenizer_cases import CODE

llama_cpp = pytest.importorskip("llama_cpp")

N_GREEDY = 32

# Completion-style prompts (Gemma-3-270M is a base model; SmolLM2 continues text as well).
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are red,",
    "Photosynthesis is the process by which plants",
    "1, 1, 2, 3, 5, 8, 13,",
]


@pytest.fixture(scope="module", autouse=True)
def _no_extra_buffer_types():
    """llama.cpp's extra CPU buffer types (AMX, repacked weights) off: its AMX matmul crashes on machines
    whose CPU reports AMX but whose kernel does not grant it (this project's VM). The plain CPU path
    stays llama.cpp's own numerics."""
    import llama_cpp.llama as L
    orig = L.llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p
    L.llama_cpp.llama_model_default_params = params
    yield
    L.llama_cpp.llama_model_default_params = orig


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def pair(request, smollm2, gemma3, _no_extra_buffer_types):
    path = smollm2 if request.param == "smollm2" else gemma3
    ref = llama_cpp.Llama(path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, logits_all=False)
    ours = headkv.Model(path, n_ctx=1024, n_threads=2)
    return request.param, ours, ref


def _texts(essays):
    texts = [essays[0][:2000], essays[5][1000:2500], "naïve café — 東京 🤖 ¿qué? x² £5 €10",
             "12345678901 3.14159 0xDEADBEEF 2024-12-06T16:42:26Z", "   leading and trailing   ",
             "line one\n\n\nline four\r\n\ttabbed", "Don't, won't, y'all'd've; it's JSON: {\"a\": [1, 2]}"]
    return texts + CODE


def test_tokenization_matches_llama_cpp(pair, essays):
    """llama-cpp-python's add_bos=True is llama.cpp's add_special: the vocabulary's own BOS rule (SmolLM2's
    file says no BOS, Gemma's says BOS), which is headkv's add_bos=None."""
    name, ours, ref = pair
    for text in _texts(essays):
        for add_bos in (True, False):
            want = ref.tokenize(text.encode(), add_bos=add_bos, special=False)
            assert ours.tokenize(text, add_bos=None if add_bos else False) == want, (name, add_bos, text[:50])


def test_special_tokens_match_llama_cpp(pair):
    name, ours, ref = pair
    text = ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n" if name == "smollm2"
            else "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n")
    for special in (True, False):
        want = ref.tokenize(text.encode(), add_bos=True, special=special)
        assert ours.tokenize(text, special=special) == want, (name, special)


def _ref_logits(ref):
    """llama.cpp's logits of the last evaluated token (llama-cpp-python keeps ``scores`` only with
    logits_all, which would hold n_ctx x n_vocab floats)."""
    return np.ctypeslib.as_array(ref._ctx.get_logits(), shape=(ref.n_vocab(),))


def _ref_greedy(ref, toks, n):
    ref.reset()
    ref.eval(toks)
    out, logits = [], []
    for _ in range(n):
        lg = _ref_logits(ref).astype(np.float32)
        t = int(np.argmax(lg))
        out.append(t)
        logits.append(lg.copy())
        ref.eval([t])
    return out, logits


def _our_greedy(ours, toks, n):
    ours.reset()
    ours.eval(toks)
    out, logits = [], []
    for _ in range(n):
        lg = np.array(ours.logits(), dtype=np.float32)
        t = int(lg.argmax())
        out.append(t)
        logits.append(lg)
        ours.eval([t])
    return out, logits


# llama.cpp quantizes activations to 8 bits for its quantized matmuls; headkv computes them in fp32
# (it matches transformers to ~5e-5 of the logit range, tests/test_gemma3.py). Measured difference
# between the two engines, the largest over the vocabulary: 1.7-2.8 % of the logit range after the
# prompts, up to 5.1 % at some decode steps (a wrong layer or RoPE gives tens of percent).
LOGIT_BOUND = 0.06


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_greedy_tokens_and_logits_track_llama_cpp(pair, i):
    """Both engines decode greedily from the same tokens. While their tokens agree, every step's logits
    agree within LOGIT_BOUND of the range and the first token is always the same; where they part, the
    two candidates are within the engines' own difference of each other in both (a near-tie)."""
    name, ours, ref = pair
    toks = ref.tokenize(PROMPTS[i].encode(), add_bos=True, special=False)
    want, ref_logits = _ref_greedy(ref, toks, N_GREEDY)
    got, our_logits = _our_greedy(ours, toks, N_GREEDY)
    k = next((j for j in range(N_GREEDY) if got[j] != want[j]), N_GREEDY)
    assert k >= 1, (name, PROMPTS[i], got[0], want[0])
    for j in range(min(k + 1, N_GREEDY)):  # the steps with the same context, the parting one included
        a, b = our_logits[j], ref_logits[j]
        d = float(np.abs(a - b).max())
        assert d <= LOGIT_BOUND * float(a.max() - a.min()), (name, PROMPTS[i], j, d)
        if j == k:
            assert a[got[k]] - a[want[k]] <= 2 * d and b[want[k]] - b[got[k]] <= 2 * d


# Pre-tokenizer names headkv and llama.cpp both read. Not "default": headkv splits such files with
# GPT-2's pattern, llama.cpp with its own four-stage split (punctuation runs first, so "don't" becomes
# "don", "'", "t"); "gpt2" is headkv's alias that llama.cpp does not know.
PRE_TOKENIZERS = ["qwen2", "deepseek-r1-qwen", "llama-bpe", "llama3", "falcon3", "gpt-2", "phi-2"]


@pytest.mark.parametrize("pre", PRE_TOKENIZERS)
def test_pretokenizers_match_llama_cpp(pre, tmp_path, smollm2, essays, _no_extra_buffer_types):
    """The BPE pre-tokenizers of other families (Qwen2/2.5/3's regex: single digits, contractions in any
    case; Llama 3's: digits in threes; GPT-2's) on SmolLM2's byte-level vocabulary and merges, in a
    file both engines read: the same tokens for essays, code, digits, Unicode, whitespace runs and
    contractions. (No Qwen GGUF is installable offline; the split rule, not the vocabulary, is what
    differs between the families.)"""
    from gguf_factory import write_tiny_llama

    path = write_tiny_llama(tmp_path / f"pre_{pre}.gguf", smollm2, arch="qwen2", n_vocab=None, pre=pre)
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    ours = headkv.Model(str(path), n_ctx=64, n_threads=1)
    texts = _texts(essays) + ["I'M HERE, YOU'RE THERE, WE'LL SEE; they'D", "1234567 12 123 1,234,567.89",
                              "  \n\n  x\t\t\ty \u00a0\u2003z", "ﬁne naïve Ⅻ ½ ①②③ ١٢٣ १२३"]
    split = 0
    for text in texts:
        want = ref.tokenize(text.encode(), add_bos=False, special=False)
        got = ours.tokenize(text, add_bos=False)
        assert got == want, (pre, text[:60])
        split += len(got)
    assert split > 1000
