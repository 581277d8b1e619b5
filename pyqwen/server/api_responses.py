"""OpenAI Responses API (`POST /v1/responses`) on the server's engine and session cache.

Request: `input` (a string, or items: messages with input_text / output_text parts, `reasoning` items,
`function_call` and `function_call_output` items), `instructions` (the system message), function
`tools` (the Responses shape: name/parameters at the top level), tool_choice, max_output_tokens,
temperature, top_p, `reasoning` ({"effort": "none"} turns thinking off, any other effort on; absent:
the template's default, on), stream. It becomes an OpenAI chat body for protocol.parse_chat: function
calls join the assistant message before them as its tool_calls, their outputs are the template's tool
messages, a reasoning item is the next assistant message's reasoning_content.

`previous_response_id` continues a stored response (kept in memory, the last 256, unless `store` is
false); the conversation still goes to the session cache by the X-Session-Id header, else
`prompt_cache_key`, else `user`, else by prompt prefix, so a follow-up prefills only what is new
(usage.input_tokens_details.cached_tokens).

Reply: a `response` object whose output holds a `reasoning` item (the think block, as reasoning_text
content), a `message` item (output_text) and `function_call` items; status "incomplete" with
incomplete_details.reason "max_output_tokens" when the budget ran out. Streaming sends the typed events
with sequence numbers: response.created, response.in_progress, then per item output_item.added /
content_part.added / reasoning_text.delta or output_text.delta or function_call_arguments.delta / their
.done events / output_item.done, and response.completed (or response.incomplete); an error after the
stream began is an `error` event followed by response.failed. Errors are OpenAI's error body.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .api_common import Gateway, bad_field, dumps, session_string
from .engine import new_id
from .protocol import APIError, each_object

PATH = "/v1/responses"
NAMES = {"max_tokens": "max_output_tokens", "chat_template_kwargs": "reasoning", "response_format": "text.format"}   # for the parser's errors
STORE_SIZE = 256


class ResponseStore:
    """The conversations of recent responses (chat messages, the reply included), for previous_response_id."""

    def __init__(self, size: int = STORE_SIZE):
        self.size = size
        self._items: collections.OrderedDict[str, list[dict]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, rid: str, messages: list[dict]) -> None:
        with self._lock:
            self._items[rid] = messages
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, rid: str) -> list[dict] | None:
        with self._lock:
            return self._items.get(rid)


# ---- request -> OpenAI chat body -------------------------------------------------------------------------

_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_field(f"'{param}' must be a string or an array of content parts", param)
    out = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise bad_field(f"'{p}': content parts of type {kind!r} are not supported (text only)", p)
        out.append(part["text"])
    return "".join(out)


def _items(items: Any) -> list[dict]:
    """Responses input items -> OpenAI chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad_field("'input' must be a string or a non-empty array of items", "input")
    out: list[dict] = []
    reasoning: list[str] = []      # a reasoning item waits for the assistant output that follows it

    def assistant() -> dict:
        """The assistant message to add to: the last one, if nothing came after it; else a new one."""
        if not out or out[-1]["role"] != "assistant" or reasoning:
            msg = {"role": "assistant", "content": ""}
            if reasoning:
                msg["reasoning_content"] = "".join(reasoning)
                reasoning.clear()
            out.append(msg)
        return out[-1]

    for p, it in each_object(items, "input"):
        kind = it.get("type", "message")
        if kind == "message":
            role = it.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_field(f"'{p}.role' must be user, assistant, system or developer; got {role!r}", f"{p}.role")
            text = _text(it.get("content"), f"{p}.content")
            if role == "assistant":
                msg = assistant()
                msg["content"] += text
            else:
                out.append({"role": role, "content": text})
        elif kind == "reasoning":
            parts = it.get("content") or it.get("summary") or []
            reasoning.append(_text(parts, f"{p}.content"))
        elif kind == "function_call":
            name, args, cid = it.get("name"), it.get("arguments", "{}"), it.get("call_id")
            if not isinstance(name, str) or not isinstance(cid, str) or not isinstance(args, str):
                raise bad_field(f"'{p}' needs string 'call_id', 'name' and 'arguments'", p)
            msg = assistant()
            msg.setdefault("tool_calls", []).append(
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}})
        elif kind == "function_call_output":
            cid, output = it.get("call_id"), it.get("output")
            if not isinstance(cid, str):
                raise bad_field(f"'{p}.call_id' must be a string", f"{p}.call_id")
            out.append({"role": "tool", "tool_call_id": cid, "content": _text(output, f"{p}.output")})
        else:
            raise bad_field(f"input items of type {kind!r} are not supported", f"{p}.type")
    if reasoning:       # reasoning with nothing after it: an assistant turn of only thinking
        assistant()
    return out


def _tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_field("'tools' must be an array", "tools")
    out = []
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise bad_field(f"'{p}': tools of type {kind!r} are not supported (function tools only)", f"{p}.type")
        fn = {k: t[k] for k in ("name", "description", "parameters") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: Any) -> Any:
    if tc is None or isinstance(tc, str):
        return tc
    if isinstance(tc, dict) and tc.get("type") == "function":
        return {"type": "function", "function": {"name": tc.get("name")}}
    raise bad_field("'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}",
                    "tool_choice")


def _thinking(reasoning: Any) -> bool | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise bad_field("'reasoning' must be an object", "reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
        raise bad_field("'reasoning.effort' must be none, minimal, low, medium, high or xhigh", "reasoning.effort")
    return effort != "none"


def _text_format(text: Any) -> dict | None:
    """`text.format` -> the chat path's response_format (which decides what it supports)."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad_field("'text' must be an object", "text")
    f = text.get("format")
    if f is None:
        return None
    if not isinstance(f, dict):
        raise bad_field("'text.format' must be an object", "text.format")
    if f.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: f[k] for k in ("name", "schema", "strict", "description")
                                                       if k in f}}
    return {"type": f.get("type")}


def make_translator(store: ResponseStore):
    def to_openai(body: dict) -> tuple[dict, dict]:
        if "input" not in body:
            raise bad_field("'input' is required", "input")
        history: list[dict] = []
        prev = body.get("previous_response_id")
        if prev is not None:
            found = store.get(prev) if isinstance(prev, str) else None
            if found is None:
                raise APIError(400, f"previous response {prev!r} not found (responses are kept in memory, "
                               f"the last {STORE_SIZE}, unless 'store' is false)", "invalid_request_error",
                               "previous_response_id", "previous_response_not_found")
            history = list(found)
        conversation = history + _items(body["input"])
        messages = list(conversation)
        instructions = body.get("instructions")
        if instructions is not None:
            if not isinstance(instructions, str):
                raise bad_field("'instructions' must be a string", "instructions")
            messages.insert(0, {"role": "system", "content": instructions})
        chat: dict[str, Any] = {"messages": messages, "stream": body.get("stream", False),
                                "tools": _tools(body.get("tools")), "tool_choice": _tool_choice(body.get("tool_choice")),
                                "max_tokens": body.get("max_output_tokens"),
                                "parallel_tool_calls": body.get("parallel_tool_calls")}   # a forced call: 1 or more
        fmt = _text_format(body.get("text"))
        if fmt is not None:
            chat["response_format"] = fmt
        thinking = _thinking(body.get("reasoning"))
        if thinking is not None:
            chat["chat_template_kwargs"] = {"enable_thinking": thinking}
        for k in ("temperature", "top_p", "top_k", "min_p", "seed", "model", "user"):
            if body.get(k) is not None:
                chat[k] = body[k]
        extra = {"conversation": conversation, "store": body.get("store") is not False,
                 "echo": {k: body.get(k) for k in ("instructions", "max_output_tokens", "previous_response_id",
                                                   "temperature", "top_p", "model")},
                 "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice") or "auto",
                 "reasoning": body.get("reasoning") if isinstance(body.get("reasoning"), dict) else None,
                 "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {}}
        return {k: v for k, v in chat.items() if v is not None}, extra

    return to_openai


def _session(body: dict) -> str | None:
    return session_string(body.get("prompt_cache_key")) or session_string(body.get("user"))


# ---- reply ----------------------------------------------------------------------------------------------

class ResponseWriter:
    """The engine's deltas -> Responses stream events; `response()` is the object they describe.

    Items open in the order the reply produces them (reasoning, message, function calls); a change of
    kind closes the open one. The non-streaming body is this writer fed the whole reply at once, so
    both paths build the same items."""

    def __init__(self, model: str, extra: dict, tokenizer=None):
        self.id = new_id("resp")
        self.model = model
        self.extra = extra
        self.tokenizer = tokenizer
        self.created = int(time.time())
        self.seq = 0
        self.items: list[dict] = []       # output items, completed or in progress
        self.open: dict | None = None
        self.status = "in_progress"
        self.incomplete: dict | None = None
        self.error: dict | None = None
        self.usage: dict | None = None

    def _ev(self, kind: str, **fields) -> dict:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def response(self) -> dict:
        e = self.extra["echo"]
        return {"id": self.id, "object": "response", "created_at": self.created, "status": self.status,
                "model": self.model, "output": [dict(it) for it in self.items if it["status"] != "in_progress"]
                if self.status != "in_progress" else [],
                "error": self.error, "incomplete_details": self.incomplete, "instructions": e["instructions"],
                "max_output_tokens": e["max_output_tokens"], "previous_response_id": e["previous_response_id"],
                "temperature": e["temperature"], "top_p": e["top_p"], "parallel_tool_calls": True,
                "tool_choice": self.extra["tool_choice"], "tools": self.extra["tools"],
                "reasoning": self.extra["reasoning"], "store": self.extra["store"], "truncation": "disabled",
                "text": {"format": {"type": "text"}}, "metadata": self.extra["metadata"], "usage": self.usage}

    def start(self) -> list[dict]:
        return [self._ev("response.created", response=self.response()),
                self._ev("response.in_progress", response=self.response())]

    def _add(self, item: dict, part: dict | None) -> list[dict]:
        out = self._close()
        self.items.append(item)
        self.open = item
        idx = len(self.items) - 1
        out.append(self._ev("response.output_item.added", output_index=idx, item=dict(item, content=[])
                            if "content" in item else dict(item)))
        if part is not None:
            out.append(self._ev("response.content_part.added", item_id=item["id"], output_index=idx,
                                content_index=0, part=dict(part)))
        return out

    def _close(self) -> list[dict]:
        it = self.open
        if it is None:
            return []
        self.open = None
        idx = len(self.items) - 1
        out = []
        it["status"] = "completed"
        if it["type"] == "reasoning":
            part = it["content"][0]
            out.append(self._ev("response.reasoning_text.done", item_id=it["id"], output_index=idx,
                                content_index=0, text=part["text"]))
            out.append(self._ev("response.content_part.done", item_id=it["id"], output_index=idx,
                                content_index=0, part=dict(part)))
        elif it["type"] == "message":
            part = it["content"][0]
            out.append(self._ev("response.output_text.done", item_id=it["id"], output_index=idx,
                                content_index=0, text=part["text"], logprobs=[]))
            out.append(self._ev("response.content_part.done", item_id=it["id"], output_index=idx,
                                content_index=0, part=dict(part)))
        else:
            out.append(self._ev("response.function_call_arguments.done", item_id=it["id"], output_index=idx,
                                name=it["name"], arguments=it["arguments"]))
        out.append(self._ev("response.output_item.done", output_index=idx, item=dict(it)))
        return out

    def delta(self, d: dict) -> list[dict]:
        out: list[dict] = []
        if d.get("reasoning_content"):
            if self.open is None or self.open["type"] != "reasoning":
                part = {"type": "reasoning_text", "text": ""}
                out += self._add({"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [part],
                                  "status": "in_progress"}, part)
            self.open["content"][0]["text"] += d["reasoning_content"]
            out.append(self._ev("response.reasoning_text.delta", item_id=self.open["id"],
                                output_index=len(self.items) - 1, content_index=0, delta=d["reasoning_content"]))
        if d.get("content"):
            if self.open is None or self.open["type"] != "message":
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += self._add({"id": new_id("msg"), "type": "message", "role": "assistant", "content": [part],
                                  "status": "in_progress"}, part)
            self.open["content"][0]["text"] += d["content"]
            out.append(self._ev("response.output_text.delta", item_id=self.open["id"],
                                output_index=len(self.items) - 1, content_index=0, delta=d["content"], logprobs=[]))
        for tc in d.get("tool_calls") or []:
            fn = tc["function"]
            out += self._add({"id": new_id("fc"), "type": "function_call", "call_id": tc["id"], "name": fn["name"],
                              "arguments": "", "status": "in_progress"}, None)
            self.open["arguments"] = fn["arguments"]
            out.append(self._ev("response.function_call_arguments.delta", item_id=self.open["id"],
                                output_index=len(self.items) - 1, delta=fn["arguments"]))
        return out

    def finish(self, result: dict) -> list[dict]:
        out = self._close()
        u = result["usage"]
        reasoning_tokens = (len(self.tokenizer.encode(result["reasoning_content"]))
                            if self.tokenizer is not None and result["reasoning_content"] else 0)
        self.usage = {"input_tokens": u["prompt_tokens"],
                      "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"]},
                      "output_tokens": u["completion_tokens"],
                      "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, u["completion_tokens"])},
                      "total_tokens": u["total_tokens"]}
        if result["finish_reason"] == "length":
            self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
            return out + [self._ev("response.incomplete", response=self.response())]
        self.status = "completed"
        return out + [self._ev("response.completed", response=self.response())]

    def fail(self, e: APIError) -> list[dict]:
        self.status = "failed"
        self.error = {"code": e.code or e.type, "message": e.message}
        return [self._ev("error", code=e.code or e.type, message=e.message, param=e.param),
                self._ev("response.failed", response=self.response())]

    def whole(self, result: dict) -> dict:
        """The non-streaming body: the whole reply as one delta."""
        self.delta({"reasoning_content": result["reasoning_content"], "content": result["content"],
                    "tool_calls": [c.to_openai() for c in result["tool_calls"]]})
        self.finish(result)
        return self.response()

    def conversation(self, history: list[dict], result: dict) -> list[dict]:
        """The chat messages a follow-up (previous_response_id) continues: history + this reply."""
        reply: dict[str, Any] = {"role": "assistant", "content": result["content"]}
        if result["reasoning_content"]:
            reply["reasoning_content"] = result["reasoning_content"]
        if result["tool_calls"]:
            reply["tool_calls"] = [c.to_openai() for c in result["tool_calls"]]
        return history + [reply]


def _sse(ev: dict) -> str:
    return f"event: {ev['type']}\ndata: {dumps(ev)}\n\n"


def register_responses(app, gw: Gateway) -> None:
    engine = gw.engine
    store = ResponseStore()
    to_openai = make_translator(store)

    def error(e: APIError) -> JSONResponse:
        engine.metrics.count(PATH, e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.post(PATH)
    async def responses(request: Request):
        try:
            gw.check_key(request, "'Authorization: Bearer KEY'")
            job, req, extra = await gw.start(request, to_openai, _session, names=NAMES)
        except APIError as e:
            return error(e)
        w = ResponseWriter(extra["echo"]["model"] or engine.model_name, extra, engine.model.tokenizer)

        def keep(result: dict) -> None:
            if extra["store"]:
                store.put(w.id, w.conversation(extra["conversation"], result))

        if req.stream:
            engine.metrics.count(PATH, 200)
            return StreamingResponse(_stream(gw, job, request, w, keep), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with contextlib.aclosing(gw.events(job, request)) as events:
            async for kind, payload in events:
                if kind == "done":
                    engine.metrics.count(PATH, 200)
                    body = w.whole(payload)
                    keep(payload)
                    return body
                if kind == "error":
                    return error(payload)
        return JSONResponse({}, status_code=499)


async def _stream(gw: Gateway, job, request: Request, w: ResponseWriter, keep) -> AsyncIterator[str]:
    for ev in w.start():
        yield _sse(ev)
    async with contextlib.aclosing(gw.events(job, request)) as events:
        async for kind, payload in events:
            if kind == "delta":
                for ev in w.delta(payload):
                    yield _sse(ev)
            elif kind == "done":
                for ev in w.finish(payload):
                    yield _sse(ev)
                keep(payload)
            else:
                for ev in w.fail(payload):
                    yield _sse(ev)
