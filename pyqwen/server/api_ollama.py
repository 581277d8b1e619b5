"""ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version`) on the
server's engine and session cache, for the tools built on ollama.

/api/chat: messages (role, content, thinking, tool_calls with object arguments, tool results as role
"tool"), tools (OpenAI's shape, which ollama uses), `think` (true/false or an effort level; absent: the
template's default, on), `options` (temperature, top_p, top_k, min_p, seed, num_predict, stop,
repeat_penalty, presence_penalty, frequency_penalty; the rest, such as num_ctx, are the server's to
set and are ignored), `format` ("json" or a JSON schema: the chat path's response_format), `stream`
(default true: NDJSON lines, the last with done: true). They become an OpenAI chat body for
protocol.parse_chat.

/api/generate: `prompt` with `system`, rendered with the chat template (a one-turn chat: `response`
and `thinking` are its content and reasoning), or with `raw: true` the prompt as-is through the
completions path. An empty prompt answers at once with done_reason "load" (ollama's way to preload).
`context`, `suffix`, `template` and `images` are refused with a 400 rather than silently ignored.

Counts: prompt_eval_count is the prompt tokens actually evaluated (the session cache's reused tokens are
not: ollama reports it the same way), eval_count the generated tokens, durations in nanoseconds.
Errors are ollama's {"error": "message"} with the HTTP status. ollama has no auth; the server's
--api-key applies (`Authorization: Bearer KEY`, which ollama's client sends from OLLAMA_API_KEY).
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .api_common import Gateway, bad_field, dumps
from .protocol import APIError, each_object, parse_json_body

# The ollama API version reported by /api/version. Clients gate features on it (tool calling,
# `think`), so it names the API this module speaks, not pyqwen's own version.
OLLAMA_API_VERSION = "0.12.0"

_OPTION_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                 "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty",
                 "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


# The shared parser's field names -> where ollama's clients put them (for its errors).
NAMES = {**{v: f"options.{k}" for k, v in _OPTION_NAMES.items()}, "max_tokens": "options.num_predict",
         "chat_template_kwargs": "think", "response_format": "format"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _sampling(body: dict, n_ctx: int) -> dict:
    """ollama `options` -> OpenAI sampling fields (max_tokens from num_predict; -1/-2: up to the context)."""
    opts = body.get("options")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise bad_field("'options' must be an object", "options")
    out = {_OPTION_NAMES[k]: v for k, v in opts.items() if k in _OPTION_NAMES and v is not None}
    n = opts.get("num_predict")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise bad_field("'options.num_predict' must be an integer", "options.num_predict")
        out["max_tokens"] = n if n > 0 else n_ctx
    return out


def _think(body: dict) -> dict:
    t = body.get("think")
    if t is None:
        return {}
    if isinstance(t, bool):
        return {"chat_template_kwargs": {"enable_thinking": t}}
    if t in ("low", "medium", "high"):
        return {"chat_template_kwargs": {"enable_thinking": True}}
    raise bad_field("'think' must be true, false, 'low', 'medium' or 'high'", "think")


def _format(body: dict) -> dict:
    f = body.get("format")
    if f is None or f == "":
        return {}
    if f == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(f, dict):
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "format", "schema": f,
                                                                            "strict": True}}}
    raise bad_field("'format' must be 'json' or a JSON schema object", "format")


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list):
        raise bad_field("'messages' must be an array", "messages")
    out = []
    for p, m in each_object(raw, "messages"):
        if m.get("images"):
            raise bad_field(f"'{p}.images': this model reads text only", f"{p}.images")
        msg = {k: m[k] for k in ("role", "content") if k in m}
        if m.get("role") == "assistant":
            if m.get("thinking") is not None:
                msg["reasoning_content"] = m["thinking"]
            calls = m.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise bad_field(f"'{p}.tool_calls' must be an array", f"{p}.tool_calls")
                msg["tool_calls"] = [dict(c, type="function") if isinstance(c, dict) else c for c in calls]
        if m.get("role") == "tool" and isinstance(m.get("tool_name"), str):
            msg["name"] = m["tool_name"]
        out.append(msg)
    return out


def _refuse_unsupported(body: dict) -> None:
    for k, why in (("context", "send the conversation to /api/chat instead"),
                   ("suffix", "fill-in-the-middle is not supported"),
                   ("template", "the model's own chat template is used"),
                   ("images", "this model reads text only")):
        if body.get(k):
            raise bad_field(f"'{k}' is not supported: {why}", k)


def _extra(body: dict, **kw) -> dict:
    """What the reply needs: the model name to echo and whether to stream (ollama's default: yes)."""
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise bad_field("'stream' must be a boolean", "stream")
    model = body.get("model")
    return {"model": model if isinstance(model, str) and model else None, "stream": stream, **kw}


def chat_body(body: dict, n_ctx: int) -> tuple[dict, dict]:
    extra = _extra(body)
    if body.get("messages") is None:
        raise bad_field("'messages' is required", "messages")
    chat = {"messages": _messages(body["messages"]), "stream": False, "tools": body.get("tools") or None,
            **_sampling(body, n_ctx), **_think(body), **_format(body)}
    return {k: v for k, v in chat.items() if v is not None}, extra


def generate_body(body: dict, n_ctx: int) -> tuple[dict | None, dict]:
    raw = bool(body.get("raw"))
    extra = _extra(body, kind="completion" if raw else "chat")
    _refuse_unsupported(body)
    prompt = body.get("prompt")
    if prompt is None or prompt == "":
        return None, extra        # ollama's way to load a model: answered at once
    if not isinstance(prompt, str):
        raise bad_field("'prompt' must be a string", "prompt")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise bad_field("'system' must be a string", "system")
    if raw:     # the prompt as-is: like ollama, no template and no system prompt
        return {"prompt": prompt, "max_tokens": n_ctx, **_sampling(body, n_ctx), **_format(body)}, extra
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"messages": messages, **_sampling(body, n_ctx), **_think(body), **_format(body)}, extra


def _stats(result: dict, t0: float) -> dict:
    u, t = result["usage"], result["timings"]
    return {"total_duration": int((time.perf_counter() - t0) * 1e9), "load_duration": 0,
            "prompt_eval_count": t["prefilled_tokens"], "prompt_eval_duration": int(t["prefill_seconds"] * 1e9),
            "eval_count": u["completion_tokens"], "eval_duration": int(t["decode_seconds"] * 1e9)}


def _done_reason(result: dict) -> str:
    return "length" if result["finish_reason"] == "length" else "stop"


def _calls(calls: list[dict]) -> list[dict]:
    """OpenAI tool-call dicts (arguments a JSON string) -> ollama's (arguments an object, no id)."""
    return [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in calls]


class ChatLines:
    """/api/chat's objects: one per delta, the last with done and the counts; or the whole reply."""

    def __init__(self, model: str, t0: float, raw: bool = False):
        self.model, self.t0, self.raw = model, t0, raw

    def delta(self, d: dict) -> dict | None:
        msg: dict[str, Any] = {"role": "assistant", "content": d.get("content", "")}
        if d.get("reasoning_content"):
            msg["thinking"] = d["reasoning_content"]
        if d.get("tool_calls"):
            msg["tool_calls"] = _calls(d["tool_calls"])
        return {"model": self.model, "created_at": _now(), "message": msg, "done": False}

    def last(self, result: dict) -> dict:
        return {"model": self.model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": _done_reason(result), **_stats(result, self.t0)}

    def whole(self, result: dict) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": result["content"]}
        if result["reasoning_content"]:
            msg["thinking"] = result["reasoning_content"]
        if result["tool_calls"]:
            msg["tool_calls"] = _calls([c.to_openai() for c in result["tool_calls"]])
        return {"model": self.model, "created_at": _now(), "message": msg, "done": True,
                "done_reason": _done_reason(result), **_stats(result, self.t0)}


class GenerateLines(ChatLines):
    """/api/generate's objects: `response` (content, or the raw completion's text) and `thinking`."""

    def delta(self, d: dict) -> dict | None:
        out = {"model": self.model, "created_at": _now(), "response": d.get("content", d.get("text", "")),
               "done": False}
        if d.get("reasoning_content"):
            out["thinking"] = d["reasoning_content"]
        return out

    def last(self, result: dict) -> dict:
        return {"model": self.model, "created_at": _now(), "response": "", "done": True,
                "done_reason": _done_reason(result), **_stats(result, self.t0)}

    def whole(self, result: dict) -> dict:
        out = {"model": self.model, "created_at": _now(), "response": result["text"] if self.raw else result["content"],
               "done": True, "done_reason": _done_reason(result), **_stats(result, self.t0)}
        if result.get("reasoning_content"):
            out["thinking"] = result["reasoning_content"]
        return out


def model_facts(engine) -> dict:
    """What /api/tags and /api/show say about the one loaded model (from its GGUF metadata)."""
    m = engine.model
    md = getattr(m, "metadata", {}) or {}
    arch = md.get("general.architecture", "qwen35")
    try:
        from ..bench import describe_model

        desc = describe_model(m.gguf)
        size, n_params, ftype = desc.size, desc.n_params, desc.name.split(" ", 2)[-1]
    except Exception:  # a model object without a GGUFFile (embedding code): report what is known
        size, n_params, ftype = 0, 0, "unknown"
    psize = f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"
    info = {k: v for k, v in md.items() if isinstance(v, (int, float, str, bool)) and not k.startswith("tokenizer.")}
    info["general.parameter_count"] = n_params
    details = {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
               "parameter_size": psize, "quantization_level": ftype}
    return {"size": size, "details": details, "model_info": info,
            "template": md.get("tokenizer.chat_template", "") if isinstance(md.get("tokenizer.chat_template"), str)
            else "", "path": str(getattr(m, "path", ""))}


def register_ollama(app, gw: Gateway) -> None:
    engine = gw.engine
    started = _now()
    facts: dict = {}

    def get_facts() -> dict:
        if not facts:
            facts.update(model_facts(engine))
        return facts

    def error(e: APIError, path: str) -> JSONResponse:
        engine.metrics.count(path, e.status)
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    def check(request: Request) -> None:
        gw.check_key(request, "'Authorization: Bearer KEY'")

    async def run(request: Request, path: str, translate, lines_cls):
        t0 = time.perf_counter()
        try:
            check(request)
            n_ctx = engine.model.n_ctx
            job, _, extra = await gw.start(request, lambda b: translate(b, n_ctx), names=NAMES)
        except APIError as e:
            return error(e, path)
        model = extra["model"] or engine.model_name
        engine.metrics.count(path, 200)
        if job is None:         # ollama's "load the model" request: an empty prompt
            return {"model": model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        lines = lines_cls(model, t0, raw=extra.get("kind") == "completion")
        if extra["stream"]:
            return StreamingResponse(_ndjson(gw, job, request, lines, path), media_type="application/x-ndjson")
        async with contextlib.aclosing(gw.events(job, request)) as events:
            async for ev, payload in events:
                if ev == "done":
                    return lines.whole(payload)
                if ev == "error":
                    return error(payload, path)
        return JSONResponse({}, status_code=499)

    @app.post("/api/chat")
    async def api_chat(request: Request):
        return await run(request, "/api/chat", chat_body, ChatLines)

    @app.post("/api/generate")
    async def api_generate(request: Request):
        return await run(request, "/api/generate", generate_body, GenerateLines)

    @app.get("/api/version")
    async def api_version():
        return {"version": OLLAMA_API_VERSION}

    def entry() -> dict:
        f = get_facts()
        return {"name": engine.model_name, "model": engine.model_name, "modified_at": started, "size": f["size"],
                "digest": "", "details": f["details"]}

    def models(request: Request, path: str, **running) -> Any:
        """/api/tags and /api/ps: the one model, with the fields /api/ps adds for a running one."""
        try:
            check(request)
        except APIError as e:
            return error(e, path)
        return {"models": [dict(entry(), **running)]}

    @app.get("/api/tags")
    async def api_tags(request: Request):
        return models(request, "/api/tags")

    @app.get("/api/ps")
    async def api_ps(request: Request):
        return models(request, "/api/ps", expires_at="9999-12-31T23:59:59Z", size_vram=0,
                      context_length=engine.model.n_ctx)

    @app.post("/api/show")
    async def api_show(request: Request):
        try:
            check(request)
            parse_json_body(await gw.read_body(request))      # one model: the name asked for is not checked
        except APIError as e:
            return error(e, "/api/show")
        f = get_facts()
        return {"modelfile": f"FROM {f['path']}\n", "parameters": "", "template": f["template"],
                "details": f["details"], "model_info": f["model_info"], "modified_at": started,
                "capabilities": ["completion", "tools", "thinking"]}


async def _ndjson(gw: Gateway, job, request: Request, lines: ChatLines, path: str) -> AsyncIterator[str]:
    async with contextlib.aclosing(gw.events(job, request)) as events:
        async for kind, payload in events:
            if kind == "delta":
                obj = lines.delta(payload)
                if obj is not None:
                    yield dumps(obj) + "\n"
            elif kind == "done":
                yield dumps(lines.last(payload)) + "\n"
            else:
                yield dumps({"error": payload.message}) + "\n"
