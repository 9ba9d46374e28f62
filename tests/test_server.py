"""headkv-server (FastAPI app over headkv.SequencePool) and the batch API.

Oracle: the same request run alone through headkv.Model (greedy, so the tokens are determined).
In-process requests go through httpx's ASGI transport / FastAPI's TestClient; one test runs
uvicorn on a free localhost port for the openai client and a real client disconnect."""
import asyncio
import json
import runpy
import socket
import threading
import time
from pathlib import Path

import pytest

import headkv

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("sse_starlette")
from fastapi.testclient import TestClient  # noqa: E402

from headkv.server import create_app  # noqa: E402
from headkv.server.cli import build_pool, parse_args  # noqa: E402

N_CTX = 512
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
CHATS = [[{"role": "user", "content": "Name a planet."}],
         [{"role": "user", "content": "What is 2 + 2?"}],
         [{"role": "user", "content": "Say hello in French."}]]
GREEDY = {"temperature": 0.0, "max_tokens": 10}


def _long(i):  # ~130 tokens: longer than the headkv budget below, so the prompt is compressed
    return f"Note {i}. " + " ".join(f"Item {k} of list {i} is the word {w}." for k, w in
                                    enumerate(["apple", "river", "stone", "cloud", "ember", "violet", "north"]))


@pytest.fixture(scope="module")
def pool(smollm2):
    p = headkv.SequencePool(smollm2, 3, n_ctx=N_CTX, n_threads=1)
    yield p
    p.close()


@pytest.fixture(scope="module")
def client(pool):
    with TestClient(create_app(pool)) as c:
        yield c


@pytest.fixture(scope="module")
def alone(smollm2):
    """One Model per KV method, for the requests run alone."""
    models = {}

    def get(kv_method="full", **kw):
        if kv_method not in models:
            models[kv_method] = headkv.Model(smollm2, n_ctx=N_CTX, n_threads=1, kv_method=kv_method, **kw)
        return models[kv_method]
    return get


def _concurrently(app, requests):
    """Sends (path, body) requests at once from one event loop; their JSON answers in order."""
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            rs = await asyncio.gather(*(c.post(path, json=body) for path, body in requests))
        return [(r.status_code, r.json()) for r in rs]
    return asyncio.run(run())


def _events(text):
    """SSE body -> list of data payloads; checks the framing (each event one 'data:' line + blank)."""
    assert text.endswith("\n\n")
    out = []
    for block in text.strip("\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if not ln.startswith(":")]  # ':' lines are pings
        if not lines:
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        out.append(lines[0][len("data: "):])
    return out


@pytest.mark.parametrize("kv", [{}, {"kv_method": "headkv", "kv_budget": 32}], ids=["full", "headkv32"])
def test_concurrent_requests_equal_alone(smollm2, alone, kv):
    p = headkv.SequencePool(smollm2, 3, n_ctx=N_CTX, n_threads=1, **kv)
    try:
        app = create_app(p)
        prompts = [_long(i) for i in range(3)] if kv else PROMPTS
        reqs = [("/v1/completions", dict(GREEDY, prompt=s)) for s in prompts]
        reqs += [("/v1/chat/completions", dict(GREEDY, messages=m)) for m in CHATS[:2]]
        got = _concurrently(app, reqs)
        ref = alone(**kv)
        for (path, body), (status, out) in zip(reqs, got):
            assert status == 200, out
            if "prompt" in body:
                want = ref.create_completion(body["prompt"], **GREEDY)
                assert out["choices"][0]["text"] == want["choices"][0]["text"]
            else:
                want = ref.create_chat_completion(body["messages"], **GREEDY)
                assert out["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
            assert out["usage"] == want["usage"]
        st = p.stats()
        assert st["requests"] == 5 and st["busy"] == 0
        assert st["tokens_generated"] == sum(o["usage"]["completion_tokens"] for _, o in got)
        if kv:  # the prompts were compressed: each sequence holds less KV than a full cache would
            assert all(s["kv_bytes"] < s["kv_bytes_full"] for s in st["sequences"])
    finally:
        p.close()


def test_load_no_lost_or_mixed_answers(smollm2, alone):
    """24 requests at once on 2 sequences (queue): streamed and not, good and bad, in a mix; every good
    answer is its own prompt's, every bad one a 400, and the pool is idle afterwards."""
    p = headkv.SequencePool(smollm2, 2, n_ctx=N_CTX, n_threads=1)
    try:
        app = create_app(p)
        prompts = [f"Fact number {i}: the" for i in range(8)]
        reqs = []
        for i in range(24):
            if i % 6 == 5:
                reqs.append(("/v1/completions", {"prompt": prompts[i % 8], "max_tokens": -1}))
            else:
                reqs.append(("/v1/completions", {"prompt": prompts[i % 8], "max_tokens": 4, "temperature": 0,
                                                 "stream": i % 2 == 1}))

        async def run():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300) as c:
                return await asyncio.gather(*(c.post(path, json=body) for path, body in reqs))
        rs = asyncio.run(run())
        ref = alone()
        want = {s: ref.create_completion(s, temperature=0, max_tokens=4)["choices"][0]["text"] for s in prompts}
        n_gen = 0
        for (path, body), r in zip(reqs, rs):
            if body["max_tokens"] < 0:
                assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
                continue
            assert r.status_code == 200
            if body["stream"]:
                chunks = [json.loads(d) for d in _events(r.text)[:-1]]
                text = "".join(c["choices"][0]["text"] for c in chunks)
                n_gen += chunks[-1]["timings"]["predicted_n"]
            else:
                text = r.json()["choices"][0]["text"]
                n_gen += r.json()["usage"]["completion_tokens"]
            assert text == want[body["prompt"]]
        st = p.stats()
        assert (st["busy"], st["waiting"], st["requests"], st["refused"]) == (0, 0, 20, 0)
        assert st["tokens_generated"] == n_gen == 80
        assert st["kv_bytes_total"] == sum(s.model.kv_stats()["bytes_held"] for s in p.sequences)
    finally:
        p.close()


def test_stream_equals_nonstream_and_sse_framing(client):
    body = dict(GREEDY, messages=CHATS[0])
    whole = client.post("/v1/chat/completions", json=body).json()
    r = client.post("/v1/chat/completions", json=dict(body, stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = _events(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"] and text
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == whole["choices"][0]["finish_reason"] and not any(finishes[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]

    body = dict(GREEDY, prompt=PROMPTS[1])
    whole = client.post("/v1/completions", json=body).json()
    data = _events(client.post("/v1/completions", json=dict(body, stream=True)).text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["timings"]["predicted_n"] == whole["usage"]["completion_tokens"]


def test_logprobs_equal_llama_alone(client, smollm2):
    ref = headkv.Llama(smollm2, n_ctx=N_CTX, n_threads=1, verbose=False)
    got = client.post("/v1/completions", json=dict(GREEDY, prompt="Logprobs: one, two,", logprobs=3)).json()
    want = ref.create_completion("Logprobs: one, two,", logprobs=3, **GREEDY)
    assert got["usage"] == want["usage"]
    g, w = got["choices"][0], want["choices"][0]
    assert (g["text"], g["finish_reason"]) == (w["text"], w["finish_reason"])
    assert g["logprobs"]["tokens"] == w["logprobs"]["tokens"] and g["logprobs"]["text_offset"] == w["logprobs"]["text_offset"]
    assert g["logprobs"]["token_logprobs"] == pytest.approx(w["logprobs"]["token_logprobs"], abs=0.02)
    assert [sorted(d) for d in g["logprobs"]["top_logprobs"]] == [sorted(d) for d in w["logprobs"]["top_logprobs"]]
    got = client.post("/v1/chat/completions", json=dict(GREEDY, messages=CHATS[1], logprobs=True, top_logprobs=2)).json()
    want = ref.create_chat_completion(CHATS[1], logprobs=True, top_logprobs=2, **GREEDY)
    g, w = got["choices"][0], want["choices"][0]
    assert g["message"] == w["message"] and g["finish_reason"] == w["finish_reason"]
    assert [t["token"] for t in g["logprobs"]["content"]] == [t["token"] for t in w["logprobs"]["content"]]
    assert [t["logprob"] for t in g["logprobs"]["content"]] == \
        pytest.approx([t["logprob"] for t in w["logprobs"]["content"]], abs=0.02)


def test_followup_turn_reuses_prefix(client, pool, alone):
    turn1 = [{"role": "user", "content": "My name is Ada. Remember it."}]
    r1 = client.post("/v1/chat/completions", json=dict(GREEDY, messages=turn1)).json()
    slot = r1["id_slot"]
    # An unrelated completion in between takes another (least recently used) sequence.
    other = client.post("/v1/completions", json=dict(GREEDY, prompt="Water boils at")).json()
    assert other["id_slot"] != slot
    turn2 = turn1 + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                     {"role": "user", "content": "What is my name?"}]
    r2 = client.post("/v1/chat/completions", json=dict(GREEDY, messages=turn2)).json()
    assert r2["id_slot"] == slot  # the sequence holding the conversation
    n_turn1 = r1["usage"]["prompt_tokens"]
    assert r2["timings"]["cache_n"] >= n_turn1 and pool.sequences[slot].model.n_reused == r2["timings"]["cache_n"]
    assert r2["timings"]["cache_n"] + r2["timings"]["prompt_n"] == r2["usage"]["prompt_tokens"]
    fresh = alone()
    fresh.reset()
    want = fresh.create_chat_completion(turn2, **GREEDY)
    assert fresh.n_reused == 0
    assert r2["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]


BAD = [
    ("/v1/completions", b"{not json", 400, "invalid_json"),
    ("/v1/completions", b"", 400, "invalid_json"),
    ("/v1/completions", b'["a list"]', 400, "invalid_value"),
    ("/v1/completions", {"prompt": 5}, 400, "invalid_value"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "invalid_value"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "4"}, 400, "invalid_value"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "invalid_value"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "invalid_value"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "invalid_value"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, None),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ("/v1/completions", {"prompt": "word " * 600}, 400, "context_length_exceeded"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, 400, "unsupported"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999999": 1.0}}, 400, None),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999999": 1.0}, "stream": True}, 400, None),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 600}]}, 400,
     "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "unsupported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "unsupported"),
]


@pytest.mark.parametrize("path,body,status,code", BAD, ids=range(len(BAD)))
def test_bad_requests_get_json_errors(client, path, body, status, code):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(path, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["code"] == code
    assert err["type"] == "invalid_request_error"
    ok = client.post("/v1/completions", json=dict(GREEDY, prompt=PROMPTS[0], max_tokens=2))  # still answering
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_api_key(pool):
    with TestClient(create_app(pool, model_id="smol", api_key="sekret")) as c:
        assert c.get("/health").status_code == 200  # open, for load balancers
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.post("/v1/completions", json={"prompt": "x"}, headers=headers).status_code == 401
        ok = {"Authorization": "Bearer sekret"}
        assert c.get("/v1/models", headers=ok).json()["data"][0]["id"] == "smol"
        r = c.post("/v1/completions", json=dict(GREEDY, prompt="x", max_tokens=1, model="smol"), headers=ok)
        assert r.status_code == 200 and r.json()["model"] == "smol"


def test_metrics_match_requests(smollm2):
    p = headkv.SequencePool(smollm2, 2, n_ctx=256, n_threads=1)
    try:
        with TestClient(create_app(p)) as c:
            m0 = c.get("/metrics").json()
            assert m0["requests"] == 0 and m0["tokens_generated"] == 0 and m0["tokens_per_second"] == 0
            outs = [c.post("/v1/completions", json=dict(GREEDY, prompt=s, max_tokens=k)).json()
                    for s, k in zip(PROMPTS, (3, 5, 4))]
            outs.append(c.post("/v1/completions", json={"prompt": "x", "max_tokens": -3}).json())  # refused: 400
            m = c.get("/metrics").json()
        n_gen = sum(o["usage"]["completion_tokens"] for o in outs[:3])
        assert n_gen == 12 and m["tokens_generated"] == n_gen and m["requests"] == 3
        assert m["http_by_status"]["200"] >= 4 and m["http_by_status"]["400"] == 1
        assert m["tokens_per_second"] == pytest.approx(n_gen / m["busy_seconds"])
        assert [s["requests"] for s in m["sequences"]] == [2, 1]
        for s, seq in zip(m["sequences"], p.sequences):
            assert s["n_tokens"] == len(seq.model.tokens()) and s["kv_bytes"] == seq.model.kv_stats()["bytes_held"]
        assert m["kv_bytes_total"] == sum(s["kv_bytes"] for s in m["sequences"]) > 0
    finally:
        p.close()


def test_queue_full_and_timeout_get_503(smollm2):
    p = headkv.SequencePool(smollm2, 1, n_ctx=256, n_threads=1, max_queue=0)
    try:
        with TestClient(create_app(p)) as c:
            held = p.acquire([])
            r = c.post("/v1/completions", json=dict(GREEDY, prompt="x", max_tokens=1))
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
            p.max_queue, p.queue_timeout = 1, 0.05  # now it may wait, but not long enough
            r = c.post("/v1/completions", json=dict(GREEDY, prompt="x", max_tokens=1))
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
            p.release(held)
            assert c.post("/v1/completions", json=dict(GREEDY, prompt="x", max_tokens=1)).status_code == 200
            assert p.stats()["refused"] == 2 and p.stats()["waiting"] == 0
    finally:
        p.close()


def test_pool_prefers_longest_prefix_then_least_recent(pool):
    toks = pool.prompt_tokens("A prefix shared by two requests, then more")
    s0 = pool.acquire(toks)
    s0.model.reset()
    s0.model.eval(toks)  # what a request would leave in the context
    pool.release(s0)
    assert s0.tokens == toks
    s1 = pool.acquire([9, 9, 9])  # nothing shared: the least recently used, not s0
    assert s1 is not s0
    s2 = pool.acquire(toks[:-2] + [7, 7])  # shares all but the last two tokens with what s0 holds
    assert s2 is s0
    for s in (s1, s2):
        pool.release(s)


def test_batch_api_equals_one_by_one(pool, alone):
    ref = alone()
    want = ref.create_completions(PROMPTS, **GREEDY)
    got = pool.create_completions(PROMPTS, **GREEDY)
    assert [g["choices"][0]["text"] for g in got] == [w["choices"][0]["text"] for w in want]
    assert [g["usage"] for g in got] == [w["usage"] for w in want]
    chats = pool.create_chat_completions(CHATS[:2], **GREEDY)
    for msgs, out in zip(CHATS, chats):
        assert out["choices"][0]["message"]["content"] == \
            ref.create_chat_completion(msgs, **GREEDY)["choices"][0]["message"]["content"]
    with pytest.raises(headkv.InvalidArgumentError):
        pool.create_completions(PROMPTS, stream=True)


def test_cli_flags_build_the_pool(smollm2):
    args = parse_args(["-m", smollm2, "-np", "2", "-c", "128", "-t", "1", "-ctk", "f32", "-ctv", "f32",
                       "--kv-method", "snapkv", "--kv-budget", "16", "--api-key", "k", "--port", "0"])
    assert (args.parallel, args.ctx_size, args.threads, args.api_key) == (2, 128, 1, "k")
    p = build_pool(args)
    try:
        m = p.model
        assert len(p.sequences) == 2 and m.n_ctx == 128 and m.kv.method == "snapkv" and m.kv.budget == 16
        assert (m.kv.type_k, m.kv.type_v) == ("f32", "f32")
        assert p.decoder.prefill_chunk == 64  # the CPU default
    finally:
        p.close()
    p = build_pool(parse_args(["-m", smollm2, "-np", "2", "-c", "128", "-t", "1", "--prefill-chunk", "16", "-ctk", "q8_0"]))
    try:
        assert p.decoder.prefill_chunk == 16 and p.model.kv.type_k == "q8_0"
    finally:
        p.close()
    with pytest.raises(headkv.InvalidArgumentError, match="prefill_chunk"):
        build_pool(parse_args(["-m", smollm2, "-c", "128", "-t", "1", "--prefill-chunk", "-1"]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uvicorn_openai_client_and_disconnect(smollm2, alone):
    uvicorn = pytest.importorskip("uvicorn")
    p = headkv.SequencePool(smollm2, 1, n_ctx=N_CTX, n_threads=1)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(p, api_key="k"), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and th.is_alive()
            time.sleep(0.05)
        openai = pytest.importorskip("openai")
        oc = openai.OpenAI(base_url=base + "/v1", api_key="k")
        model_id = oc.models.list().data[0].id
        out = oc.chat.completions.create(model=model_id, messages=CHATS[0], **GREEDY)
        want = alone().create_chat_completion(CHATS[0], **GREEDY)["choices"][0]["message"]["content"]
        assert out.choices[0].message.content == want
        text = "".join(ch.choices[0].delta.content or "" for ch in
                       oc.chat.completions.create(model=model_id, messages=CHATS[0], stream=True, **GREEDY)
                       if ch.choices)
        assert text == want
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="bad").models.list()
        example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "server_client.py"))
        answers = example["main"](["--base-url", base + "/v1", "--api-key", "k", "--max-tokens", "6"])
        questions = ["Say hello in Spanish.", "What is 3 + 4?", "Name a color.", "What do bees make?"]
        assert answers == [alone().create_chat_completion([{"role": "user", "content": q}], temperature=0, max_tokens=6)
                           ["choices"][0]["message"]["content"] for q in questions]

        # A client that leaves mid-stream: its generation stops and the sequence is freed.
        eos = p.model.token_eos()
        body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 400, "temperature": 0, "stream": True,
                "logit_bias": {str(eos): -100}}
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer k"}, timeout=60) as hc:
            with hc.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                first = next(ln for ln in r.iter_lines() if ln.startswith("data: "))
                assert json.loads(first[len("data: "):])["object"] == "text_completion"
            deadline = time.monotonic() + 60
            while p.sequences[0].busy:
                assert time.monotonic() < deadline, "the sequence was not freed after the client left"
                time.sleep(0.05)
            n_done = p.stats()["tokens_generated"]
            assert p.sequences[0].model.n_generated < 400  # stopped, not run to max_tokens
            r = hc.post("/v1/completions", json=dict(GREEDY, prompt=PROMPTS[0]))
            assert r.status_code == 200 and r.json()["id_slot"] == 0
            assert p.stats()["tokens_generated"] == n_done + r.json()["usage"]["completion_tokens"]
            # The same for a non-streamed request whose client gives up waiting.
            with pytest.raises(httpx.ReadTimeout):
                hc.post("/v1/completions", json=dict(body, stream=False), timeout=1.0)
            deadline = time.monotonic() + 60
            while p.sequences[0].busy or p.stats()["requests"] < 6:
                assert time.monotonic() < deadline, "the sequence was not freed after the client left"
                time.sleep(0.05)
            assert p.sequences[0].model.n_generated < 400
            assert hc.post("/v1/completions", json=dict(GREEDY, prompt=PROMPTS[0])).status_code == 200
    finally:
        server.should_exit = True
        th.join(30)
        p.close()
    assert not th.is_alive()  # graceful shutdown
