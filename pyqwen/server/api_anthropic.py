"""Anthropic Messages API (`POST /v1/messages`) on the server's engine and session cache.

Request: the Messages body (system, messages of text / thinking / tool_use / tool_result blocks, tools
with `input_schema`, tool_choice auto/any/tool/none, max_tokens, stop_sequences, temperature, top_p,
top_k, thinking, metadata.user_id, stream) becomes an OpenAI chat body for protocol.parse_chat:
tool_result blocks become the template's tool messages, an assistant turn's thinking its
reasoning_content, tool_use blocks its tool_calls. `thinking: {"type": "enabled", "budget_tokens": N}`
(or "adaptive") turns the template's enable_thinking on, anything else off (the API's default is no
thinking); budget_tokens is checked but not enforced: the reasoning counts against max_tokens.

Reply: a Message with thinking / text / tool_use blocks, stop_reason end_turn / max_tokens /
stop_sequence / tool_use, and usage with the session cache's reuse as cache_read_input_tokens (Anthropic
counts input_tokens without the cached ones). Streaming sends the API's named SSE events: message_start,
content_block_start / content_block_delta (thinking_delta, text_delta, input_json_delta) /
content_block_stop per block, message_delta (stop_reason, usage), message_stop; an error after the
stream began is an `error` event. Errors are {"type": "error", "error": {"type", "message"}}.

Auth: the server's key in `x-api-key` (what the SDK sends) or `Authorization: Bearer`.
The session key: the X-Session-Id header, else metadata.user_id; else prompt-prefix matching.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .api_common import Gateway, bad_field, dumps, session_string
from .engine import new_id
from .protocol import APIError, each_object

PATH = "/v1/messages"
# The shared parser's field names -> this API's (for its errors).
NAMES = {"stop": "stop_sequences", "chat_template_kwargs": "thinking", "response_format": "output_config.format"}

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 529: "overloaded_error"}


def error_body(e: APIError) -> dict:
    kind = _ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": e.message}}


# ---- request -> OpenAI chat body -------------------------------------------------------------------------

def _text_of(blocks: Any, param: str) -> str:
    """A string, or a list of text blocks joined (system prompts, tool results)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad_field(f"'{param}' must be a string or an array of text blocks", param)
    parts = []
    for j, b in enumerate(blocks):
        p = f"{param}[{j}]"
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            kind = b.get("type") if isinstance(b, dict) else None
            raise bad_field(f"'{p}' must be a text block (blocks of type {kind!r} are not supported here)", p)
        parts.append(b["text"])
    return "\n\n".join(parts) if param == "system" else "".join(parts)


def _message(m: dict, p: str) -> list[dict]:
    """One Anthropic message (at path `p`) -> one or more OpenAI chat messages."""
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise bad_field(f"'{p}.role' must be 'user' or 'assistant', got {role!r}", f"{p}.role")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_field(f"'{p}.content' must be a string or an array of content blocks", f"{p}.content")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict] = []
    results: list[dict] = []
    for q, b in each_object(content, f"{p}.content"):
        kind = b.get("type")
        if kind == "text":
            if not isinstance(b.get("text"), str):
                raise bad_field(f"'{q}.text' must be a string", f"{q}.text")
            texts.append(b["text"])
        elif kind == "thinking" and role == "assistant":
            if not isinstance(b.get("thinking"), str):
                raise bad_field(f"'{q}.thinking' must be a string", f"{q}.thinking")
            thinking.append(b["thinking"])
        elif kind == "redacted_thinking" and role == "assistant":
            continue        # opaque to us: nothing to render
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise bad_field(f"'{q}' needs string 'id' and 'name'", q)
            inp = b.get("input", {})
            if not isinstance(inp, dict):
                raise bad_field(f"'{q}.input' must be an object", f"{q}.input")
            calls.append({"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": inp}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(b.get("tool_use_id"), str):
                raise bad_field(f"'{q}.tool_use_id' must be a string", f"{q}.tool_use_id")
            c = b.get("content", "")
            results.append({"role": "tool", "tool_call_id": b["tool_use_id"],
                            "content": _text_of(c, f"{q}.content") if c is not None else ""})
        else:
            raise bad_field(f"content blocks of type {kind!r} are not supported in {role} messages", f"{q}.type")
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if thinking:
            msg["reasoning_content"] = "".join(thinking)
        if calls:
            msg["tool_calls"] = calls
        return [msg]
    # A user turn: its tool results first (the API puts them first), then any text.
    out = results
    if texts or not results:
        out = out + [{"role": "user", "content": "".join(texts)}]
    return out


def _tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_field("'tools' must be an array", "tools")
    out = []
    for p, t in each_object(tools, "tools"):
        if t.get("type") not in (None, "custom"):
            raise bad_field(f"'{p}': server tools (type {t.get('type')!r}) are not supported; "
                            f"only client tools with an input_schema", f"{p}.type")
        # OpenAI's key order (name, description, parameters): the template prints the tools as JSON.
        fn = {"name": t.get("name")}
        if t.get("description") is not None:
            fn["description"] = t["description"]
        fn["parameters"] = t.get("input_schema")
        if not isinstance(t.get("input_schema"), dict):
            raise bad_field(f"'{p}.input_schema' must be a JSON schema object", f"{p}.input_schema")
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: Any) -> Any:
    if tc is None:
        return None
    if not isinstance(tc, dict):
        raise bad_field("'tool_choice' must be an object", "tool_choice")
    kind = tc.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": tc.get("name")}}
    raise bad_field("'tool_choice.type' must be 'auto', 'any', 'tool' or 'none'", "tool_choice.type")


def _thinking(th: Any) -> bool:
    if th is None:
        return False
    if not isinstance(th, dict):
        raise bad_field("'thinking' must be an object", "thinking")
    kind = th.get("type")
    if kind == "disabled":
        return False
    if kind in ("adaptive", "between_tools"):
        return True
    if kind == "enabled":
        b = th.get("budget_tokens")
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise bad_field("'thinking.budget_tokens' must be a positive integer", "thinking.budget_tokens")
        return True
    raise bad_field("'thinking.type' must be 'enabled', 'adaptive', 'between_tools' or 'disabled'", "thinking.type")


def to_openai(body: dict) -> tuple[dict, dict]:
    """The Messages body as an OpenAI chat body (for parse_chat), and what the reply needs to know."""
    if body.get("max_tokens") is None:
        raise bad_field("'max_tokens' is required", "max_tokens")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_field("'messages' must be a non-empty array", "messages")
    messages: list[dict] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for p, m in each_object(raw, "messages"):
        messages.extend(_message(m, p))
    stop = body.get("stop_sequences")
    if stop is not None and not isinstance(stop, list):
        raise bad_field("'stop_sequences' must be an array of strings", "stop_sequences")
    thinking = _thinking(body.get("thinking"))
    chat = {"messages": messages, "max_tokens": body.get("max_tokens"), "stream": body.get("stream", False),
            "tools": _tools(body.get("tools")), "tool_choice": _tool_choice(body.get("tool_choice")),
            "chat_template_kwargs": {"enable_thinking": thinking}}
    tc = body.get("tool_choice")
    if isinstance(tc, dict) and tc.get("disable_parallel_tool_use") is True:   # a forced call: just one
        chat["parallel_tool_calls"] = False
    for k in ("temperature", "top_p", "top_k", "model"):
        if body.get(k) is not None:
            chat[k] = body[k]
    if stop is not None:
        chat["stop"] = stop
    oc = body.get("output_config")
    if oc is not None:
        if not isinstance(oc, dict):
            raise bad_field("'output_config' must be an object", "output_config")
        fmt = oc.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            # Structured output: the chat path's response_format (which decides what it supports).
            chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "strict": True,
                                                                              "schema": fmt.get("schema")}}
        elif fmt is not None:
            raise bad_field("'output_config.format' must be {'type': 'json_schema', 'schema': {...}}",
                            "output_config.format")
    return {k: v for k, v in chat.items() if v is not None}, {"model": body.get("model"), "stop": stop or []}


def _session(body: dict) -> str | None:
    md = body.get("metadata")
    return session_string(md.get("user_id")) if isinstance(md, dict) else None


# ---- reply ----------------------------------------------------------------------------------------------

def stop_reason(result: dict) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for the engine's finish."""
    fr = result["finish_reason"]
    if fr == "tool_calls":
        return "tool_use", None
    if fr == "length":
        return "max_tokens", None
    if result.get("stop_string"):
        return "stop_sequence", result["stop_string"]
    return "end_turn", None


def usage(result: dict) -> dict:
    u = result["usage"]
    cached = u["prompt_tokens_details"]["cached_tokens"]
    return {"input_tokens": u["prompt_tokens"] - cached, "output_tokens": u["completion_tokens"],
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


class EventWriter:
    """The engine's deltas -> the Messages stream's events (as (event_name, data) pairs), and the
    Message they add up to.

    One content block is open at a time; a change of kind (thinking -> text -> tool_use) closes it.
    Tool calls arrive whole from the parser, so each is a block with one input_json_delta. The
    non-streaming body is this writer fed the whole reply at once, so both paths build the same blocks."""

    def __init__(self, msg_id: str, model: str, prompt_tokens: int):
        self.msg_id, self.model, self.prompt_tokens = msg_id, model, prompt_tokens
        self.blocks: list[dict] = []          # the content so far
        self.open: str | None = None
        self.end: tuple[str | None, str | None] = (None, None)
        self.usage: dict = {"input_tokens": prompt_tokens, "output_tokens": 0}

    def message(self) -> dict:
        return {"id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
                "content": [dict(b) for b in self.blocks], "stop_reason": self.end[0], "stop_sequence": self.end[1],
                "usage": self.usage}

    def start(self) -> list[tuple[str, dict]]:
        return [("message_start", {"type": "message_start", "message": self.message()})]

    def _close(self) -> list[tuple[str, dict]]:
        if self.open is None:
            return []
        self.open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": len(self.blocks) - 1})]

    def _open(self, block: dict) -> list[tuple[str, dict]]:
        out = self._close()
        self.blocks.append(block)
        self.open = block["type"]
        return out + [("content_block_start", {"type": "content_block_start", "index": len(self.blocks) - 1,
                                               "content_block": dict(block)})]

    def _delta(self, delta: dict) -> tuple[str, dict]:
        return ("content_block_delta", {"type": "content_block_delta", "index": len(self.blocks) - 1,
                                        "delta": delta})

    def delta(self, d: dict) -> list[tuple[str, dict]]:
        out: list[tuple[str, dict]] = []
        if d.get("reasoning_content"):
            if self.open != "thinking":
                out += self._open({"type": "thinking", "thinking": "", "signature": ""})
            self.blocks[-1]["thinking"] += d["reasoning_content"]
            out.append(self._delta({"type": "thinking_delta", "thinking": d["reasoning_content"]}))
        if d.get("content"):
            if self.open != "text":
                out += self._open({"type": "text", "text": ""})
            self.blocks[-1]["text"] += d["content"]
            out.append(self._delta({"type": "text_delta", "text": d["content"]}))
        for tc in d.get("tool_calls") or []:
            fn = tc["function"]
            out += self._open({"type": "tool_use", "id": tc["id"], "name": fn["name"], "input": {}})
            self.blocks[-1]["input"] = json.loads(fn["arguments"])
            out.append(self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]}))
        return out

    def finish(self, result: dict) -> list[tuple[str, dict]]:
        self.end, self.usage = stop_reason(result), usage(result)
        return self._close() + [
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": self.end[0], "stop_sequence": self.end[1]},
                               "usage": self.usage}),
            ("message_stop", {"type": "message_stop"})]

    def whole(self, result: dict) -> dict:
        """The non-streaming body: the whole reply as one delta."""
        self.delta({"reasoning_content": result["reasoning_content"], "content": result["content"],
                    "tool_calls": [c.to_openai() for c in result["tool_calls"]]})
        self.finish(result)
        return self.message()


def _sse(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {dumps(data)}\n\n"


def register_anthropic(app, gw: Gateway) -> None:
    engine = gw.engine

    def error(e: APIError) -> JSONResponse:
        engine.metrics.count(PATH, e.status)
        return JSONResponse(error_body(e), status_code=e.status, headers=e.headers)

    @app.post(PATH)
    async def messages(request: Request):
        try:
            gw.check_key(request, "'x-api-key: KEY'")
            job, req, extra = await gw.start(request, to_openai, _session, names=NAMES)
        except APIError as e:
            return error(e)
        msg_id, model = new_id("msg"), extra["model"] or engine.model_name
        if req.stream:
            engine.metrics.count(PATH, 200)
            return StreamingResponse(_stream(gw, job, request, EventWriter(msg_id, model, len(job.prompt_ids))),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with contextlib.aclosing(gw.events(job, request)) as events:
            async for kind, payload in events:
                if kind == "done":
                    engine.metrics.count(PATH, 200)
                    return EventWriter(msg_id, model, len(job.prompt_ids)).whole(payload)
                if kind == "error":
                    return error(payload)
        return JSONResponse({}, status_code=499)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        # Claude Code asks for this; the count is the rendered prompt's tokens.
        try:
            gw.check_key(request, "'x-api-key: KEY'")
            job, _, _ = await gw.start(request, lambda b: to_openai(dict(b, max_tokens=b.get("max_tokens") or 1)),
                                            submit=False)
        except APIError as e:
            return error(e)
        engine.metrics.count(PATH + "/count_tokens", 200)
        return {"input_tokens": len(job.prompt_ids)}


async def _stream(gw: Gateway, job, request: Request, w: EventWriter) -> AsyncIterator[str]:
    for name, data in w.start():
        yield _sse(name, data)
    async with contextlib.aclosing(gw.events(job, request)) as events:
        async for kind, payload in events:
            if kind == "delta":
                for name, data in w.delta(payload):
                    yield _sse(name, data)
            elif kind == "done":
                for name, data in w.finish(payload):
                    yield _sse(name, data)
            else:
                yield _sse("error", error_body(payload))
