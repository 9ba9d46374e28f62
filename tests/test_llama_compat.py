"""headkv.Llama as a llama-cpp-python script uses it (only the import differs), each output
checked against an oracle: greedy tokens, log-softmax, penalties, bias and typical sampling
recomputed with numpy from the engine's own logits; JSON validated with jsonschema; embeddings
against transformers' final-norm hidden states of the same GGUF."""
import json
import math
import os
import warnings

import jsonschema
import numpy as np
import pytest

from headkv import InvalidArgumentError, Llama, LlamaGrammar, UnsupportedError, _core

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def llm(smollm2):
    return Llama(model_path=smollm2, n_ctx=1024, n_threads=2, n_gpu_layers=0, seed=1234, logits_all=False,
                 use_mmap=True, use_mlock=False, embedding=True, chat_format=None, verbose=False,
                 type_k="f32", type_v="f32")  # fp32 K/V: logprobs are replayed below in other batch shapes


def _logits_after(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return llm.logits().astype(np.float64)


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - x.max() - math.log(np.exp(x - x.max()).sum())


def _piece(llm, tok):
    return llm._e.token_to_piece(int(tok)).decode("utf-8", errors="ignore")


def _greedy(llm, tokens, n):
    """n greedy tokens by hand: eval, argmax of the logits, append."""
    out = []
    lg = _logits_after(llm, tokens)
    for _ in range(n):
        t = int(np.argmax(lg))
        if llm.is_eog(t):
            break
        out.append(t)
        llm.eval([t])
        lg = llm.logits().astype(np.float64)
    return out


def test_constructor_keywords(smollm2, llm):
    assert llm.device == "cpu"
    assert llm.n_ctx() == llm.n_ctx == 1024 and llm.n_vocab() == 49152 and llm.n_embd() == 576
    with pytest.raises(InvalidArgumentError, match="lora_path"):
        Llama(smollm2, lora_path="adapter.gguf", verbose=False)
    with pytest.raises(InvalidArgumentError, match="rope_freq_base"):
        Llama(smollm2, rope_freq_base=10000.0, verbose=False)
    with pytest.raises(UnsupportedError, match="chat_format"):
        Llama(smollm2, chat_format="vicuna", verbose=False)
    with pytest.raises(InvalidArgumentError, match="unknown argument"):
        Llama(smollm2, not_a_keyword=1, verbose=False)
    if not (_core.cuda_built() and _core.cuda_device_count() > 0):
        with pytest.warns(RuntimeWarning, match="running on the CPU"):
            m = Llama(smollm2, n_gpu_layers=-1, n_ctx=64, verbose=False)
        assert m.device == "cpu"
    m = Llama(smollm2, n_ctx=0, verbose=False, kv_method="snapkv", kv_budget=64)  # headkv's options pass through
    assert m.n_ctx() == m._e.n_ctx_train and m.kv.method == "snapkv"
    with pytest.raises(InvalidArgumentError, match="full KV cache"):
        m.embed("compressed contexts do not embed")


def test_completion_greedy_matches_argmax_and_stream(llm):
    expected = _greedy(llm, llm.tokenize(PROMPT), 12)
    out = llm(PROMPT, max_tokens=12, temperature=0.0)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and isinstance(out["created"], int)
    c = out["choices"][0]
    assert set(c) == {"text", "index", "logprobs", "finish_reason"} and c["index"] == 0 and c["logprobs"] is None
    assert c["text"] == llm.detokenize(expected).decode("utf-8")
    assert c["finish_reason"] == ("length" if len(expected) == 12 else "stop")
    n_prompt = len(llm.tokenize(PROMPT))
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": len(expected),
                            "total_tokens": n_prompt + len(expected)}
    chunks = list(llm.create_completion(PROMPT, max_tokens=12, temperature=0.0, stream=True))
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
    assert len({ch["id"] for ch in chunks}) == 1 and all(ch["object"] == "text_completion" for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == c["finish_reason"]
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
    # a stop string cuts the text before it
    first_word = c["text"].split()[0]
    stopped = llm(PROMPT, max_tokens=12, temperature=0.0, stop=[first_word])
    assert stopped["choices"][0]["text"] == c["text"][:c["text"].index(first_word)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_logprobs_are_log_softmax_of_the_logits(llm):
    out = llm(PROMPT, max_tokens=6, temperature=0.0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    toks = _greedy(llm, llm.tokenize(PROMPT), 6)
    assert lp["tokens"] == [_piece(llm, t) for t in toks]
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    offsets = [len(PROMPT)]
    for s in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(s))
    assert lp["text_offset"] == offsets
    ctx = llm.tokenize(PROMPT)
    for i, t in enumerate(toks):  # replay each step's logits
        ref = _log_softmax(_logits_after(llm, ctx + toks[:i]))
        assert lp["token_logprobs"][i] == pytest.approx(ref[t], abs=1e-4)
        top3 = np.argsort(-ref)[:3]
        assert lp["top_logprobs"][i] == pytest.approx({_piece(llm, j): ref[j] for j in top3}, abs=1e-4)
    # streaming carries the same values, chunk by chunk
    streamed = [v for ch in llm(PROMPT, max_tokens=6, temperature=0.0, logprobs=3, stream=True)
                if ch["choices"][0]["logprobs"] for v in ch["choices"][0]["logprobs"]["token_logprobs"]]
    assert streamed == pytest.approx(lp["token_logprobs"], abs=1e-6)


def test_logit_bias_and_penalties_change_the_greedy_token_as_computed(llm):
    prompt = "apple apple apple apple apple apple"
    ids = llm.tokenize(prompt)
    lg = _logits_after(llm, ids)
    order = np.argsort(-lg)
    g, runner_up = int(order[0]), int(order[1])
    one = lambda **kw: llm(prompt, max_tokens=1, temperature=0.0, logprobs=0, **kw)["choices"][0]  # noqa: E731
    assert one()["logprobs"]["tokens"] == [_piece(llm, g)]
    assert one(logit_bias={g: -math.inf})["logprobs"]["tokens"] == [_piece(llm, runner_up)]
    low = int(order[-1])
    assert one(logit_bias={str(low): 100.0})["logprobs"]["tokens"] == [_piece(llm, low)]  # JSON-style keys
    counts = {t: ids.count(t) for t in set(ids)}
    for kw in (dict(presence_penalty=1.5), dict(frequency_penalty=0.4), dict(repeat_penalty=1.3),
               dict(presence_penalty=0.5, frequency_penalty=0.2, repeat_penalty=1.1)):
        adj = lg.copy()  # llama.cpp's penalties over the last 64 tokens
        rp = kw.get("repeat_penalty", 1.0)
        for t, c in counts.items():
            adj[t] = adj[t] / rp if adj[t] > 0 else adj[t] * rp
            adj[t] -= c * kw.get("frequency_penalty", 0.0) + kw.get("presence_penalty", 0.0)
        assert one(**kw)["logprobs"]["tokens"] == [_piece(llm, int(np.argmax(adj)))], kw


def test_typical_p_keeps_the_token_closest_to_the_entropy(llm):
    ids = llm.tokenize("My favourite hobby is")
    p = np.exp(_log_softmax(_logits_after(llm, ids)))
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    with np.errstate(divide="ignore"):
        typical = int(np.argmin(np.abs(-np.log(p) - entropy)))
    out = llm("My favourite hobby is", max_tokens=1, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
              typical_p=1e-9, logprobs=0, seed=3)
    assert out["choices"][0]["logprobs"]["tokens"] == [_piece(llm, typical)]


def test_seed_reproduces_sampled_text(llm):
    a = llm("Once upon a time", max_tokens=10, temperature=1.0, seed=42)["choices"][0]["text"]
    b = llm("Once upon a time", max_tokens=10, temperature=1.0, seed=42)["choices"][0]["text"]
    assert a == b


def test_chat_content_parts_stream_and_logprobs(llm):
    parts = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": [{"type": "text", "text": "Name a colour."},
                                          {"type": "text", "text": "One word."}]}]
    plain = [parts[0], {"role": "user", "content": "Name a colour.\nOne word."}]
    res = llm.create_chat_completion(messages=parts, max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=2)
    ref = llm.create_chat_completion(messages=plain, max_tokens=8, temperature=0.0)
    assert res["object"] == "chat.completion" and res["id"].startswith("chatcmpl-")
    msg = res["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"] == ref["choices"][0]["message"]["content"]
    tokens = llm.tokenize(llm.apply_chat_template(plain), special=True)
    assert msg["content"] == llm.detokenize(_greedy(llm, tokens, 8)).decode("utf-8")
    content = res["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == msg["content"]
    for e in content:  # greedy: the chosen token is the most likely of the two alternatives
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"]
        assert e["logprob"] == e["top_logprobs"][0]["logprob"] <= 0
    chunks = list(llm.create_chat_completion(messages=parts, max_tokens=8, temperature=0.0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == msg["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == res["choices"][0]["finish_reason"]
    with pytest.raises(UnsupportedError, match="image_url"):
        llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])


SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
          "required": ["name", "age", "languages"], "additionalProperties": False}


def test_json_schema_and_grammar_output(llm):
    msgs = [{"role": "user", "content": "Describe a software developer as JSON."}]
    res = llm.create_chat_completion(messages=msgs, max_tokens=80, temperature=0.7, seed=7,
                                     response_format={"type": "json_object", "schema": SCHEMA})
    assert res["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(res["choices"][0]["message"]["content"]), SCHEMA)
    msgs = [{"role": "user", "content": 'Give the capital of France as a JSON object with the key "capital".'}]
    res = llm.create_chat_completion(messages=msgs, max_tokens=60, temperature=0.0,
                                     response_format={"type": "json_object"})
    assert res["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(res["choices"][0]["message"]["content"]), dict)
    gbnf = 'root ::= answer "."\nanswer ::= "yes" | "no"'
    for g in (gbnf, LlamaGrammar.from_string(gbnf)):
        out = llm("Is Paris in France? Answer:", max_tokens=8, temperature=0.0, grammar=g)
        assert out["choices"][0]["text"] in ("yes.", "no.") and out["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(InvalidArgumentError):
        LlamaGrammar.from_string("root ::= (")


def test_embeddings_match_transformers(llm, smollm2):
    import torch
    from transformers import AutoModelForCausalLM
    texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors of numbers."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2),
                                                  dtype=torch.float32).eval()
    res = llm.create_embedding(texts)
    assert res["object"] == "list" and [d["index"] for d in res["data"]] == [0, 1]
    ids = [llm.tokenize(t) for t in texts]
    assert res["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}
    for tok, d in zip(ids, res["data"]):
        with torch.no_grad():
            h = hf.model(torch.tensor([tok])).last_hidden_state[0].double().numpy()  # after the final norm
        ours, ref = np.asarray(d["embedding"]), h.mean(axis=0)
        assert ours.shape == (576,)
        assert ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref) > 0.99999
        assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    unit = llm.embed(texts[0], normalize=True)
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-9)
    assert np.asarray(unit) == pytest.approx(np.asarray(res["data"][0]["embedding"]) /
                                             np.linalg.norm(res["data"][0]["embedding"]), abs=1e-9)


def test_native_sampler_mask_bias_and_penalties_by_hand():
    logits = np.array([3.0, 2.0, 1.0, 0.5], dtype=np.float32)
    greedy = lambda **kw: _core.Sampler(temperature=0.0, **kw)  # noqa: E731
    assert greedy().sample_logits(logits) == 0
    assert greedy().sample_logits(logits, mask=np.array([0b1010], dtype=np.int32)) == 1  # tokens 1 and 3 allowed
    assert greedy(logit_bias={3: 2.6}).sample_logits(logits) == 3  # 0.5 + 2.6 > 3
    # history [0, 0, 1]: token 0 seen twice, token 1 once
    assert greedy(frequency_penalty=1.2).sample_logits(logits, [0, 0, 1]) == 2  # 0.6, 0.8, 1.0, 0.5
    assert greedy(presence_penalty=1.2).sample_logits(logits, [0, 0, 1]) == 0   # 1.8, 0.8, 1.0, 0.5
    assert greedy(repeat_penalty=2.0).sample_logits(logits, [0, 0, 1]) == 0     # 1.5, 1.0, 1.0, 0.5
    assert greedy(repeat_penalty=4.0).sample_logits(logits, [0, 0, 1]) == 2     # 0.75, 0.5, 1.0, 0.5


@pytest.mark.parametrize("call", [
    lambda m: m("hi", max_tokens=2, logit_bias={10**6: 1.0}),
    lambda m: m("hi", max_tokens=2, logit_bias={1: float("nan")}),
    lambda m: m("hi", max_tokens=2, logprobs=-1),
    lambda m: m("hi", max_tokens=2, logit_bias={i: -math.inf for i in range(m.n_vocab())}),
    lambda m: m.create_chat_completion([{"role": "user", "content": "hi"}], response_format={"type": "xml"}),
    lambda m: m.create_chat_completion([{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object", "schema": {"type": "foo"}}),
    lambda m: m.create_chat_completion([{"role": "user", "content": 5}]),
    lambda m: m.create_chat_completion([{"role": "user", "content": [{"type": "text"}]}]),
    lambda m: m.embed(""),
])
def test_bad_arguments_raise_invalid_argument(llm, call):
    with pytest.raises(InvalidArgumentError):
        call(llm)


@pytest.mark.parametrize("call", [
    lambda m: m("hi", suffix="!"),
    lambda m: m("hi", mirostat_mode=2),
    lambda m: m.create_chat_completion([{"role": "user", "content": "hi"}], tools=[{"type": "function"}]),
])
def test_unsupported_features_raise_unsupported(llm, call):
    with pytest.raises(UnsupportedError):
        call(llm)
