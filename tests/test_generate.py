"""Sampling and the OpenAI-style generation API."""
import numpy as np
import pytest

import headkv
from headkv import _core
from headkv.text import StopScanner, utf8_complete_prefix


def _freqs(sampler, logits, n=20000, history=()):
    counts = np.zeros(len(logits))
    for _ in range(n):
        counts[sampler.sample_logits(np.asarray(logits, np.float32), list(history))] += 1
    return counts / n


def test_temperature_sampling_follows_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    for temp in (1.0, 0.5):
        s = _core.Sampler(temperature=temp, top_k=0, top_p=1.0, min_p=0.0, seed=7)
        p = np.exp(logits / temp)
        p /= p.sum()
        np.testing.assert_allclose(_freqs(s, logits), p, atol=0.015)


def test_filters():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    s = _core.Sampler(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=1)
    f = _freqs(s, logits, 5000)
    assert f[2] == 0 and f[3] == 0 and abs(f[0] - 0.625) < 0.03
    s = _core.Sampler(temperature=1.0, top_k=0, top_p=0.75, min_p=0.0, seed=1)  # keeps 0.5+0.3
    f = _freqs(s, logits, 5000)
    assert f[2] == 0 and f[3] == 0
    s = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.25, seed=1)  # keeps p >= 0.125
    f = _freqs(s, logits, 5000)
    assert f[3] == 0 and f[2] > 0.1
    greedy = _core.Sampler(temperature=0.0)
    assert greedy.sample_logits(logits) == 0


def test_repetition_penalty():
    logits = np.array([3.0, 2.9, -1.0], np.float32)
    s = _core.Sampler(temperature=0.0, repeat_penalty=1.5, repeat_last_n=4)
    assert s.sample_logits(logits, [2, 0]) == 1  # 3.0/1.5 = 2.0 < 2.9
    assert s.sample_logits(logits, [2, 2, 2, 2]) == 0
    # only the last repeat_last_n tokens count
    assert s.sample_logits(logits, [0, 2, 2, 2, 2]) == 0


def test_invalid_sampler_params():
    for kw in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": float("nan")}, {"min_p": 2.0},
               {"repeat_penalty": 0.0}, {"top_k": -3}):
        with pytest.raises(headkv.InvalidArgumentError):
            _core.Sampler(**kw)


def test_seeded_sampling_is_reproducible(model):
    a = model.create_completion("Once upon a time", max_tokens=12, temperature=1.0, seed=42)
    b = model.create_completion("Once upon a time", max_tokens=12, temperature=1.0, seed=42)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    texts = {model.create_completion("Once upon a time", max_tokens=12, temperature=1.2, top_k=0, top_p=1.0,
                                     min_p=0.0, seed=s)["choices"][0]["text"] for s in range(4)}
    assert len(texts) > 1


def test_completion_dict_and_stream_agree(model):
    out = model.create_completion("List three fruits:", max_tokens=20, temperature=0)
    assert out["object"] == "text_completion" and out["choices"][0]["finish_reason"] in ("length", "stop")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    chunks = list(model.create_completion("List three fruits:", max_tokens=20, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == out["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    ids = model.tokenize("List three fruits:")
    greedy = list(model.generate(ids, temperature=0, max_tokens=20))
    assert model.detokenize(greedy).decode("utf-8", "replace") == out["choices"][0]["text"]


def test_stop_strings(model):
    full = model.create_completion("1, 2, 3, 4,", max_tokens=24, temperature=0)["choices"][0]["text"]
    assert "7" in full, full  # the model counts on
    cut = model.create_completion("1, 2, 3, 4,", max_tokens=24, temperature=0, stop=["7"])
    assert cut["choices"][0]["text"] == full[:full.index("7")]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["text"] for c in
                       model.create_completion("1, 2, 3, 4,", max_tokens=24, temperature=0, stop=["7"], stream=True))
    assert streamed == cut["choices"][0]["text"]


def test_stop_scanner_holds_back_prefixes():
    s = StopScanner(["</end>"])
    assert s.feed("abc</e") == "abc"
    assert s.feed("nx") == "</enx"
    assert s.feed("d</end>zz") == "d" and s.stopped
    assert utf8_complete_prefix("é".encode()[:1]) == 0
    assert utf8_complete_prefix("aé".encode()) == 3
    assert utf8_complete_prefix("a😀".encode()[:3]) == 1


def test_chat_completion(model):
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    prompt = model.apply_chat_template(msgs)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    out = model.create_chat_completion(msgs, max_tokens=16, temperature=0)
    msg = out["choices"][0]["message"]
    assert out["object"] == "chat.completion" and msg["role"] == "assistant"
    assert "Paris" in msg["content"]
    assert out["choices"][0]["finish_reason"] == "stop"  # ended on <|im_end|>
    chunks = list(model.create_chat_completion(msgs, max_tokens=16, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == msg["content"]
