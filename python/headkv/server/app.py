"""The OpenAI-compatible HTTP layer (FastAPI): endpoints, validation, errors, SSE streaming.

Everything model-side goes through a :class:`headkv.SequencePool` (tokens for choosing a sequence,
``stream`` to run a request on it), so a batched core can replace the pool without changing this
file. Responses have llama-cpp-python's / OpenAI's shapes, plus llama-server's ``id_slot`` (the
sequence that served the request) and ``timings`` (``cache_n``: prompt tokens taken from the
sequence's cache; ``prompt_n``: prompt tokens evaluated; ``predicted_n``: tokens generated)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse

from ..errors import (ContextFullError, Error, FormatError, HeadkvIOError, InvalidArgumentError, OutOfMemoryError,
                      UnsupportedError)
from ..pool import PoolFullError, SequencePool
from .schemas import ChatCompletionRequest, CompletionRequest


class APIError(Exception):
    """An error answered as OpenAI's JSON error object with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def api_error(e: BaseException) -> APIError:
    """The HTTP answer for an engine or pool error."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextFullError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, (InvalidArgumentError, UnsupportedError)):
        return APIError(400, str(e), code="unsupported" if isinstance(e, UnsupportedError) else None)
    if isinstance(e, PoolFullError):
        return APIError(503, str(e), type="server_error", code="server_busy")
    if isinstance(e, OutOfMemoryError):
        return APIError(503, str(e), type="server_error", code="out_of_memory")
    if isinstance(e, (Error, FormatError, HeadkvIOError)):
        return APIError(500, str(e), type="server_error")
    return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")


def _validation_error(e: ValidationError) -> APIError:
    err = e.errors()[0]
    if err["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {err['msg']}", code="invalid_json")
    param = ".".join(str(p) for p in err["loc"]) or None
    return APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param, code="invalid_value")


class _Done:
    """The last item a worker yields after a streamed completion: what only the model knows then."""

    def __init__(self, model, n_prompt: int):
        self.n_generated, self.n_reused, self.n_prompt = model.n_generated, model.n_reused, n_prompt


def _extras(pool: SequencePool, model, n_prompt: int) -> dict:
    idx = next(s.index for s in pool.sequences if s.model is model)
    return {"id_slot": idx, "timings": {"cache_n": model.n_reused, "prompt_n": n_prompt - model.n_reused,
                                        "predicted_n": model.n_generated}}


def _assemble(chunks: list, done: "_Done") -> dict:
    """The non-streamed answer from a completion's or chat completion's stream chunks (the same text,
    finish reason and logprobs that ``stream=False`` gives)."""
    first = chunks[0]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    finish = next((c["finish_reason"] for c in reversed(choices) if c["finish_reason"]), None)
    lps = [c["logprobs"] for c in choices if c["logprobs"]]
    usage = {"prompt_tokens": done.n_prompt, "completion_tokens": done.n_generated,
             "total_tokens": done.n_prompt + done.n_generated}
    head = {"id": first["id"], "created": first["created"], "model": first["model"]}
    if first["object"] == "chat.completion.chunk":
        text = "".join(c["delta"].get("content") or "" for c in choices)
        logprobs = {"content": [t for lp in lps for t in lp["content"]], "refusal": None} if lps else None
        return {**head, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": logprobs, "finish_reason": finish}]}
    keys = ("tokens", "text_offset", "token_logprobs", "top_logprobs")
    logprobs = {k: [v for lp in lps for v in lp[k]] for k in keys} if lps else None
    return {**head, "object": "text_completion", "usage": usage,
            "choices": [{"text": "".join(c["text"] for c in choices), "index": 0, "logprobs": logprobs,
                         "finish_reason": finish}]}


class _Gate:
    """ASGI middleware: the API key check (every path but /health) and the answer counters. Plain
    ASGI rather than Starlette's BaseHTTPMiddleware, so that the endpoints see the client's
    disconnect as it happens."""

    def __init__(self, app, api_key: Optional[str], counts: dict):
        self.app, self.api_key, self.counts = app, api_key, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        counts = self.counts
        counts["requests"] += 1

        async def counted(msg):
            if msg["type"] == "http.response.start":
                st = msg["status"]
                counts["by_status"][st] = counts["by_status"].get(st, 0) + 1
                counts["errors"] += st >= 400
            await send(msg)

        if self.api_key is not None and scope["path"] != "/health":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
                resp = APIError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")
                return await resp.response()(scope, receive, counted)
        await self.app(scope, receive, counted)


def create_app(pool: SequencePool, model_id: Optional[str] = None, api_key: Optional[str] = None) -> FastAPI:
    """The FastAPI app serving ``pool``. ``model_id``: the name clients use (default: the GGUF's file
    name; its path is accepted too); ``api_key``: when set, every endpoint but /health needs
    ``Authorization: Bearer <api_key>``."""
    model_id = model_id or os.path.basename(pool.model_path)
    names = {model_id, pool.model_path, os.path.basename(pool.model_path)}
    created = int(time.time())
    app = FastAPI(title="headkv", summary="OpenAI-compatible server over headkv")
    app.state.pool = pool
    http = {"requests": 0, "errors": 0, "by_status": {}}
    app.state.http = http

    app.add_middleware(_Gate, api_key=api_key, counts=http)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(Exception)
    async def _any_error(request, e: Exception):
        return api_error(e).response()

    async def parse(request: Request, cls):
        body = await request.body()
        try:
            req = cls.model_validate_json(body)
        except ValidationError as e:
            raise _validation_error(e) from None
        if req.model is not None and req.model not in names:
            raise APIError(404, f"the model {req.model!r} does not exist (this server serves {model_id!r})",
                           param="model", code="model_not_found")
        return req

    def check_fits(tokens: list):
        m = pool.model
        if not m._e.compressing and len(tokens) > m.n_ctx:
            raise ContextFullError(f"the prompt has {len(tokens)} tokens but the context holds {int(m.n_ctx)} "
                                   f"(-c/--ctx-size, per sequence)")

    async def whole(request: Request, items):
        """A non-streamed answer, assembled from the streamed chunks; a client that leaves before it
        is ready stops the generation (as a streamed one does)."""
        async def collect():
            try:
                return [x async for x in items]
            finally:
                await items.aclose()

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        got, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not got.done():  # the client left: stop the generation, free the sequence
            got.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await got
            return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
        try:
            out = got.result()
        except Exception as e:
            raise api_error(e) from None
        i = next(k for k, x in enumerate(out) if isinstance(x, _Done))
        return JSONResponse(dict(_assemble(out[:i], out[i]), **out[i + 1]))

    async def respond(request: Request, req, tokens: list, run):
        """Runs ``run(model, stream)`` on a sequence; a JSON response or an SSE stream."""
        n_prompt = len(tokens)

        def streamed(m):
            yield from run(m, True)
            yield _Done(m, n_prompt)
            yield _extras(pool, m, n_prompt)

        items = pool.stream(tokens, streamed)
        if not req.stream:
            return await whole(request, items)
        try:  # the first chunk before the response starts: errors are still JSON with a status
            first = await items.__anext__()
        except Exception as e:
            await items.aclose()
            raise api_error(e) from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            pending, done = first, None
            try:
                async for item in items:
                    if isinstance(item, _Done):
                        done = item
                    elif done is not None:  # llama-server's id_slot and timings on the last chunk
                        pending.update(item)
                    else:
                        yield json.dumps(pending)
                        pending = item
                yield json.dumps(pending)
                if include_usage and done is not None:
                    yield json.dumps({"id": pending["id"], "object": pending["object"], "created": pending["created"],
                                      "model": pending["model"], "choices": [],
                                      "usage": {"prompt_tokens": done.n_prompt, "completion_tokens": done.n_generated,
                                                "total_tokens": done.n_prompt + done.n_generated}})
            except Exception as e:  # after the stream started: an error event, then [DONE]
                err = api_error(e)
                yield json.dumps({"error": {"message": err.message, "type": err.type, "param": err.param,
                                            "code": err.code}})
            finally:
                await items.aclose()  # a disconnected client: stops the generation, frees the sequence
            yield "[DONE]"

        return EventSourceResponse(events(), sep="\n", ping=15)

    @app.get("/health")
    async def health():
        st = pool.stats()
        return {"status": "ok", "sequences": st["n_seq"], "busy": st["busy"], "waiting": st["waiting"]}

    @app.get("/v1/models")
    async def models():
        m = pool.model
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "headkv",
                                            "meta": {"path": pool.model_path, "n_ctx": int(m.n_ctx),
                                                     "n_seq": len(pool.sequences), "kv_method": m.kv.method,
                                                     "device": m.device}}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request (send several requests for several prompts)",
                               param="prompt")
            prompt = prompt[0]
        try:
            tokens = await asyncio.to_thread(pool.prompt_tokens, prompt)
            check_fits(tokens)
        except Exception as e:
            raise api_error(e) from None
        kw = dict(req.sampling(), echo=req.echo, logprobs=req.logprobs, suffix=req.suffix, model=model_id)
        return await respond(request, req, tokens, lambda m, stream: m.create_completion(tokens, stream=stream, **kw))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, ChatCompletionRequest)
        messages = req.message_dicts()
        try:
            tokens = await asyncio.to_thread(pool.chat_tokens, messages)
            check_fits(tokens)
        except Exception as e:
            raise api_error(e) from None
        kw = req.sampling()
        if req.max_completion_tokens is not None:
            kw["max_tokens"] = req.max_completion_tokens
        kw.update(response_format=req.response_format, tools=req.tools, tool_choice=req.tool_choice,
                  logprobs=req.logprobs, top_logprobs=req.top_logprobs, model=model_id)
        return await respond(request, req, tokens, lambda m, stream: m.create_chat_completion(messages, stream=stream, **kw))

    @app.get("/metrics")
    async def metrics():
        st = pool.stats()
        return {"http_requests": http["requests"], "http_errors": http["errors"],
                "http_by_status": {str(k): v for k, v in sorted(http["by_status"].items())},
                "requests": st["requests"], "requests_refused": st["refused"],
                "tokens_generated": st["tokens_generated"], "busy_seconds": st["busy_seconds"],
                "tokens_per_second": st["tokens_per_second"], "sequences_busy": st["busy"],
                "requests_waiting": st["waiting"], "kv_bytes_total": st["kv_bytes_total"],
                "sequences": st["sequences"]}

    return app
