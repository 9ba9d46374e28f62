"""The OpenAI-compatible HTTP layer (FastAPI): endpoints, validation, errors, SSE streaming.

Everything model-side goes through a :class:`headkv.SequencePool` (tokens for choosing a sequence,
``stream`` to run a request on it), so a batched core can replace the pool without changing this
file. Responses have llama-cpp-python's / OpenAI's shapes, plus llama-server's ``id_slot`` (the
sequence that served the request) and ``timings`` (``cache_n``: prompt tokens taken from the
sequence's cache; ``prompt_n``: prompt tokens evaluated; ``predicted_n``: tokens generated)."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
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

    @app.middleware("http")
    async def count_and_auth(request: Request, call_next):
        http["requests"] += 1
        if api_key is not None and request.url.path != "/health":
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
                resp = APIError(401, "invalid or missing API key (Authorization: Bearer ...)",
                                code="invalid_api_key").response()
            else:
                resp = await call_next(request)
        else:
            resp = await call_next(request)
        http["by_status"][resp.status_code] = http["by_status"].get(resp.status_code, 0) + 1
        if resp.status_code >= 400:
            http["errors"] += 1
        return resp

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

    async def respond(req, tokens: list, run):
        """Runs ``run(model, stream)`` on a sequence; a JSON response or an SSE stream."""
        n_prompt = len(tokens)
        if not req.stream:
            def whole(m):
                out = run(m, False)
                out.update(_extras(pool, m, n_prompt))
                yield out
            try:  # to the end: the sequence is released (and counted) before the answer goes out
                return JSONResponse([out async for out in pool.stream(tokens, whole)][0])
            except Exception as e:
                raise api_error(e) from None

        def streamed(m):
            yield from run(m, True)
            yield _Done(m, n_prompt)
            yield _extras(pool, m, n_prompt)

        items = pool.stream(tokens, streamed)
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
        return await respond(req, tokens, lambda m, stream: m.create_completion(tokens, stream=stream, **kw))

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
        return await respond(req, tokens, lambda m, stream: m.create_chat_completion(messages, stream=stream, **kw))

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
