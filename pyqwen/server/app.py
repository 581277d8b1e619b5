"""FastAPI application: OpenAI-compatible endpoints over one Engine.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /health, GET /metrics (Prometheus text), and the chat page at `/` (pyqwen.server.webchat). With an API
key, /v1/* and /metrics need `Authorization: Bearer KEY` (401 otherwise); /health and the page stay open.

Sessions: a request's session key is the `X-Session-Id` header, else the `session_id` field, else the
`user` field. Requests with the same key share one cached state (see pyqwen.session); requests without
one go to a small pool of anonymous sessions matched by prompt prefix.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .agent_apis import register_agent_apis
from .engine import Engine, Job, new_id
from .logprobs import chat_logprobs, completion_logprobs
from .protocol import APIError, parse_chat, parse_completion, parse_json_body
from .webchat import mount_webchat

MAX_BODY = 32 * 2 ** 20
POLL_SECONDS = 0.25


def create_app(engine: Engine, *, api_key: str | None = None, max_body: int = MAX_BODY) -> FastAPI:
    app = FastAPI(title="pyqwen", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    def error_response(e: APIError, endpoint: str | None = None) -> JSONResponse:
        if endpoint:
            engine.metrics.count(endpoint, e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return error_response(APIError(e.status_code, str(e.detail), kind), None)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        return error_response(APIError(500, f"internal error: {type(e).__name__}", "server_error"), request.url.path)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        h = request.headers.get("authorization", "")
        scheme, _, token = h.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           "authentication_error", None, "invalid_api_key")

    async def read_body(request: Request) -> dict:
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > max_body:
            raise APIError(413, f"the request body is larger than {max_body} bytes", "invalid_request_error",
                           None, "request_too_large")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > max_body:
                raise APIError(413, f"the request body is larger than {max_body} bytes",
                               "invalid_request_error", None, "request_too_large")
        return bytes(raw)

    async def next_event(job: Job, request: Request) -> tuple[str, Any] | None:
        """The job's next event; None (and the job cancelled) if the client went away first."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return None

    mount_webchat(app)

    # ---- info endpoints ------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        ok = engine.alive
        engine.metrics.count("/health", 200 if ok else 503)
        body = {"status": "ok" if ok else "error", "queue_depth": engine.queue_depth,
                "processing": engine.processing}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request):
        check_auth(request)
        engine.metrics.count("/metrics", 200)
        return PlainTextResponse(engine.prometheus(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        engine.metrics.count("/v1/models", 200)
        m = engine.model
        return {"object": "list", "data": [{
            "id": engine.model_name, "object": "model", "created": engine.created, "owned_by": "pyqwen",
            "meta": {"n_ctx": m.n_ctx, "n_vocab": m.n_vocab, "kv_type": m.kv_type},
        }]}

    # ---- generation endpoints ------------------------------------------------------------------

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def start(request: Request, kind: str) -> tuple[Job, Any]:
        check_auth(request)
        raw = await read_body(request)
        header_key = request.headers.get("x-session-id")
        if header_key is not None and not (0 < len(header_key) <= 256):
            raise APIError(400, "X-Session-Id must be 1-256 characters", "invalid_request_error", "X-Session-Id")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def prepare():
            # JSON parsing, validation, the size check, template rendering and tokenizing all take time
            # proportional to the body: none of it runs on the event loop, so /health keeps answering.
            body = parse_json_body(raw)
            if kind == "chat":
                req = parse_chat(body, engine.model.n_ctx, header_key)
                return engine.prepare_chat(req, loop, events), req
            req = parse_completion(body, engine.model.n_ctx, engine.model.n_vocab, header_key)
            return engine.prepare_completion(req, loop, events), req

        job, req = await run_in_threadpool(prepare)
        engine.submit(job)
        return job, req

    def relay_sse(job: Job, request: Request, chunks: "ChunkBuilder", include_usage: bool) -> StreamingResponse:
        """The job's events as server-sent events; the job is cancelled if the stream ends early."""

        async def stream() -> AsyncIterator[str]:
            done = False
            try:
                for c in chunks.head():
                    yield sse(c)
                while True:
                    ev = await next_event(job, request)
                    if ev is None:
                        return
                    kind, payload = ev
                    if kind == "delta":
                        yield sse(chunks.delta(payload))
                    elif kind == "done":
                        done = True
                        yield sse(chunks.finish(payload["finish_reason"], payload.get("logprobs_unsent")))
                        if include_usage:
                            yield sse(chunks.usage(payload["usage"], payload["timings"]))
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        done = True
                        yield sse(payload.body())
                        yield "data: [DONE]\n\n"
                        return
            finally:
                if not done:
                    job.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def wait_done(job: Job, request: Request, path: str) -> dict | Response:
        """The job's 'done' payload, or the response to send instead (its error; 499 if the client left)."""
        ev = None
        try:
            while True:
                ev = await next_event(job, request)
                if ev is None:
                    return Response(status_code=499)
                kind, payload = ev
                if kind == "done":
                    return payload
                if kind == "error":
                    return error_response(payload, path)
        finally:
            if ev is None or ev[0] != "done":
                job.cancel()

    async def generation_endpoint(request: Request, kind: str, path: str, chunks_cls) -> Any:
        job, req = await start(request, kind)
        chunks = chunks_cls(engine.model_name, engine.model.tokenizer)
        if req.stream:
            engine.metrics.count(path, 200)
            return relay_sse(job, request, chunks, req.include_usage)
        payload = await wait_done(job, request, path)
        if isinstance(payload, Response):
            return payload
        engine.metrics.count(path, 200)
        return chunks.whole(payload)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generation_endpoint(request, "chat", "/v1/chat/completions", ChatChunks)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generation_endpoint(request, "completion", "/v1/completions", CompletionChunks)

    # Anthropic Messages, OpenAI Responses and ollama's API: the same engine, queue and session cache.
    register_agent_apis(app, engine, api_key=api_key, read_body=read_body, next_event=next_event)
    return app


# ---- response bodies, one builder per endpoint ---------------------------------------------------------

class ChunkBuilder:
    """The JSON objects of one response: streamed chunks (head, delta, finish, usage) or the whole body."""

    prefix = ""
    object = ""

    def __init__(self, model: str, tokenizer=None):
        self.id, self.created, self.model = new_id(self.prefix), int(time.time()), model
        self.tokenizer = tokenizer

    def _base(self, obj: str, choices: list) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def head(self) -> list[dict]:
        return []

    def usage(self, usage: dict, timings: dict | None = None) -> dict:
        c = self._base(self.object, [])
        c["usage"] = usage
        if timings is not None:
            c["timings"] = timings      # as llama-server does (the non-streamed body has it too): the page's tok/s
        return c


class ChatChunks(ChunkBuilder):
    prefix, object = "chatcmpl", "chat.completion.chunk"

    def _chunk(self, delta: dict, finish=None, records=None) -> dict:
        lp = chat_logprobs(self.tokenizer, records) if records else None
        return self._base(self.object, [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}])

    def head(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def delta(self, payload: dict) -> dict:
        payload = dict(payload)
        records = payload.pop("_logprobs", None)
        return self._chunk(payload, None, records)

    def finish(self, reason: str, records=None) -> dict:
        return self._chunk({}, reason, records)

    def whole(self, payload: dict) -> dict:
        msg: dict[str, Any] = {"role": "assistant",
                               "content": payload["content"] if payload["content"] or not payload["tool_calls"]
                               else None}
        if payload["reasoning_content"]:
            msg["reasoning_content"] = payload["reasoning_content"]
        if payload["tool_calls"]:
            msg["tool_calls"] = [c.to_openai() for c in payload["tool_calls"]]
        lp = payload.get("logprobs")
        body = self._base("chat.completion", [{"index": 0, "message": msg, "finish_reason": payload["finish_reason"],
                                               "logprobs": None if lp is None else chat_logprobs(self.tokenizer, lp)}])
        body["usage"], body["timings"] = payload["usage"], payload["timings"]
        return body


class CompletionChunks(ChunkBuilder):
    prefix, object = "cmpl", "text_completion"

    offset = 0      # characters streamed so far (text_offset of the next token)

    def _chunk(self, text: str, finish=None, records=None) -> dict:
        lp = None
        if records:
            lp = completion_logprobs(self.tokenizer, records, self.offset)
        self.offset += len(text)
        return self._base(self.object, [{"index": 0, "text": text, "finish_reason": finish, "logprobs": lp}])

    def delta(self, payload: dict) -> dict:
        return self._chunk(payload["text"], None, payload.get("_logprobs"))

    def finish(self, reason: str, records=None) -> dict:
        return self._chunk("", reason, records)

    def whole(self, payload: dict) -> dict:
        lp = payload.get("logprobs")
        body = self._base(self.object, [{"index": 0, "text": payload["text"], "finish_reason": payload["finish_reason"],
                                         "logprobs": None if lp is None else completion_logprobs(self.tokenizer, lp)}])
        body["usage"], body["timings"] = payload["usage"], payload["timings"]
        return body
