"""What the agent-facing APIs (Anthropic Messages, OpenAI Responses, ollama) share with the OpenAI path.

Each of those APIs translates its request into an OpenAI chat body and runs it through the same parser
(protocol.parse_chat: one set of field checks), the same Engine.prepare_chat (template, tokenizing, size
checks) and the same queue and session cache as /v1/chat/completions. Only the wire format differs: an
API module turns the engine's events (("delta", {reasoning_content|content|tool_calls}), ("done", result),
("error", APIError)) into its own JSON or stream.

`Gateway` holds what create_app already has (the body reader, the disconnect-aware event wait) so the
API modules reuse it instead of copying it; `agent_apis.register_agent_apis` is the one call create_app makes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from .engine import Engine, Job
from .protocol import APIError, ChatRequest, bad, parse_chat, parse_completion, parse_json_body

MAX_SESSION_KEY = 256


@dataclass
class Gateway:
    engine: Engine
    api_key: str | None
    read_body: Callable[[Request], Awaitable[bytes]]
    next_event: Callable[[Job, Request], Awaitable[tuple[str, Any] | None]]

    def check_key(self, request: Request, hint: str) -> None:
        """The server's key from `x-api-key` (Anthropic's header) or `Authorization: Bearer` (the others),
        compared in constant time; 401 otherwise."""
        if self.api_key is None:
            return
        token = request.headers.get("x-api-key")
        if token is None:
            scheme, _, rest = request.headers.get("authorization", "").partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(401, f"invalid or missing API key (send {hint})", "authentication_error", None,
                           "invalid_api_key")

    async def start(self, request: Request, to_openai: Callable[[dict], tuple[dict | None, dict]],
                    session_field: Callable[[dict], str | None] | None = None, submit: bool = True,
                    names: dict[str, str] | None = None) -> tuple[Job | None, ChatRequest | None, dict]:
        """Read the body, translate it (`to_openai(body) -> (openai_body, extra)`), parse and tokenize it
        off the event loop (as create_app does: /health keeps answering under any body), queue the job
        (unless `submit` is false: a token count). Returns (job, the parsed request, extra).

        extra["kind"] == "completion" says the translation is an OpenAI completions body; an openai_body
        of None means there is nothing to generate (the job and request are None). `names` maps OpenAI
        field names to the API's own, so an error from the shared parser names the field the client sent."""
        raw = await self.read_body(request)
        header_key = request.headers.get("x-session-id")
        if header_key is not None and not (0 < len(header_key) <= MAX_SESSION_KEY):
            raise APIError(400, "X-Session-Id must be 1-256 characters", "invalid_request_error", "X-Session-Id")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        engine = self.engine

        def prepare():
            body = parse_json_body(raw)
            oa_body, extra = to_openai(body)
            if oa_body is None:
                return None, None, extra
            key = header_key
            if key is None and session_field is not None:
                key = session_field(body)
            if extra.get("kind") == "completion":
                req = parse_completion(oa_body, engine.model.n_ctx, engine.model.n_vocab, key)
                return engine.prepare_completion(req, loop, events), req, extra
            req = parse_chat(oa_body, engine.model.n_ctx, key)
            return engine.prepare_chat(req, loop, events), req, extra

        try:
            job, req, extra = await run_in_threadpool(prepare)
        except APIError as e:
            raise rename_fields(e, names or {}) from None
        if submit and job is not None:
            engine.submit(job)
        return job, req, extra

    async def events(self, job: Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
        """The job's events up to and including its last one ("done" or "error"). The job is cancelled
        if the client goes away or the consumer stops early."""
        finished = False
        try:
            while True:
                ev = await self.next_event(job, request)
                if ev is None:
                    return
                yield ev
                if ev[0] != "delta":
                    finished = True
                    return
        finally:
            if not finished:
                job.cancel()


def rename_fields(e: APIError, names: dict[str, str]) -> APIError:
    """The shared parser's error with an OpenAI chat field's name replaced by the API's own (scalar
    fields such as max_tokens; errors inside messages name the translated chat messages)."""
    if e.param is None:
        return e
    head = e.param.split(".", 1)[0].split("[", 1)[0]
    if head in names:
        e.param = names[head] + e.param[len(head):]
        e.message = e.message.replace(f"'{head}", f"'{names[head]}")
    return e


def session_string(value: Any) -> str | None:
    """A session key taken from a body field: a non-empty string of at most 256 characters, else None."""
    return value if isinstance(value, str) and 0 < len(value) <= MAX_SESSION_KEY else None


bad_field = bad     # the agent APIs' name for protocol.bad: a 400 invalid_request_error naming the field


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
