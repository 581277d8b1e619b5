"""OpenAI request validation and error bodies.

Unknown top-level fields are accepted and ignored (OpenAI SDKs and agent frameworks send extras such as
`parallel_tool_calls`, `metadata`, `store`); every known field is type- and range-checked, and a bad
one is a 400 with an OpenAI-style body naming it: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..constrain import Constraint, request_constraint
from ..errors import GrammarError
from ..tool_calls import ToolSpecError, messages_for_template, validate_tools

MAX_DEPTH = 64          # nesting of the JSON body
MAX_STOP = 16           # stop strings
MAX_STOP_LEN = 1024
MAX_SESSION_KEY = 256


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def each_object(items: list, param: str) -> Iterator[tuple[str, dict]]:
    """(path, item) for each item of the JSON array `items` (found at `param`), path being `param[i]`;
    a 400 naming the first item that is not an object. Lazy: each item is checked as the caller reaches
    it, so an error in an earlier item's fields is reported first."""
    for i, item in enumerate(items):
        p = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise bad(f"'{p}' must be an object", p)
        yield p, item


def parse_json_body(raw: bytes) -> dict:
    if not raw:
        raise bad("the request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise bad("the JSON body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    # Iterative depth check: later stages (template rendering) recurse over these values.
    stack = [(body, 1)]
    while stack:
        v, d = stack.pop()
        if d > MAX_DEPTH:
            raise bad(f"the JSON body is nested deeper than {MAX_DEPTH} levels", code="invalid_json")
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return body


# ---- field checks --------------------------------------------------------------------------------

def _num(body: dict, name: str, lo: float, hi: float, *, lo_open: bool = False, default=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number", name)
    if v < lo or v > hi or (lo_open and v == lo):
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise bad(f"'{name}' must be in {lo_s}, {hi}], got {v}", name)
    return float(v)


def _int(body: dict, name: str, lo: int, hi: int | None = None, default=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer", name)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise bad(f"'{name}' must be {rng}, got {v}", name)
    return v


def _bool(body: dict, name: str, default=None):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be a boolean", name)
    return v


def _str(body: dict, name: str, max_len: int = 1 << 20):
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise bad(f"'{name}' must be a string of at most {max_len} characters", name)
    return v


@dataclass
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    penalty_last_n: int | None = None       # not an OpenAI field: set by `pyqwen chat --repeat-last-n`

    def params(self) -> dict:
        """Keyword arguments for pyqwen.SamplingParams (unset fields keep its defaults)."""
        out = {k: getattr(self, k) for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                               "repetition_penalty", "seed", "penalty_last_n")
               if getattr(self, k) is not None}
        out["stop"] = list(self.stop)
        return out


def _sampling(body: dict) -> Sampling:
    s = Sampling()
    s.temperature = _num(body, "temperature", 0.0, 2.0)
    s.top_p = _num(body, "top_p", 0.0, 1.0, lo_open=True)
    top_k = _int(body, "top_k", -1, 1 << 31)
    s.top_k = 0 if top_k == -1 else top_k
    s.min_p = _num(body, "min_p", 0.0, 1.0)
    s.presence_penalty = _num(body, "presence_penalty", -2.0, 2.0)
    s.frequency_penalty = _num(body, "frequency_penalty", -2.0, 2.0, default=0.0)
    s.repetition_penalty = _num(body, "repetition_penalty", 0.0, 10.0, lo_open=True)
    seed = _int(body, "seed", -(1 << 63), (1 << 64) - 1)
    s.seed = None if seed is None else seed % (1 << 64)
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if (not isinstance(stop, list) or len(stop) > MAX_STOP
                or not all(isinstance(x, str) and len(x) <= MAX_STOP_LEN for x in stop)):
            raise bad(f"'stop' must be a string or an array of at most {MAX_STOP} strings", "stop")
        s.stop = [x for x in stop if x]
    return s


def _common(body: dict, n_ctx: int) -> dict:
    out: dict[str, Any] = {}
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise bad("only n=1 is supported", "n")
    mt = _int(body, "max_completion_tokens", 1)
    if mt is None:
        mt = _int(body, "max_tokens", 1)
    if mt is not None and mt > n_ctx:
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        raise bad(f"'{name}' is {mt}, more than the context window of {n_ctx} tokens", name)
    out["max_tokens"] = mt
    out["stream"] = _bool(body, "stream", False)
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        include_usage = _bool(so, "include_usage", False)
    out["include_usage"] = include_usage
    out["sampling"] = _sampling(body)
    _str(body, "model", 256)
    _str(body, "user", MAX_SESSION_KEY)
    _str(body, "session_id", MAX_SESSION_KEY)
    return out


# ---- chat ------------------------------------------------------------------------------------------

_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _content(v: Any, param: str, *, allow_none: bool) -> Any:
    if v is None:
        if allow_none:
            return None
        raise bad(f"'{param}' is required", param)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for p, part in each_object(v, param):
            kind = part.get("type", "text")
            if kind != "text":
                raise bad(f"content parts of type {kind!r} are not supported (text only)", f"{p}.type")
            if not isinstance(part.get("text"), str):
                raise bad(f"'{p}.text' must be a string", f"{p}.text")
            parts.append({"type": "text", "text": part["text"]})
        return parts
    raise bad(f"'{param}' must be a string or an array of content parts", param)


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty array", "messages")
    out = []
    for p, m in each_object(raw, "messages"):
        role = m.get("role")
        if role not in _ROLES:
            raise bad(f"'{p}.role' must be one of system, developer, user, assistant, tool; got {role!r}",
                      f"{p}.role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        msg["content"] = _content(m.get("content"), f"{p}.content", allow_none=role == "assistant")
        if role == "assistant":
            for k in ("reasoning_content", "reasoning", "thinking"):
                if m.get(k) is not None:
                    if not isinstance(m[k], str):
                        raise bad(f"'{p}.{k}' must be a string", f"{p}.{k}")
                    msg["reasoning_content"] = m[k]
                    break
            if m.get("tool_calls") is not None:
                msg["tool_calls"] = m["tool_calls"]
            if msg["content"] is None and not msg.get("tool_calls"):
                msg["content"] = ""
        if role == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = str(m["tool_call_id"])
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    try:
        return messages_for_template(out)
    except ToolSpecError as e:
        raise bad(str(e), e.param) from None


@dataclass
class ChatRequest:
    messages: list[dict]
    tools: list[dict] | None
    tool_choice: Any
    max_tokens: int | None
    stream: bool
    include_usage: bool
    sampling: Sampling
    template_kwargs: dict
    session_key: str | None
    logprobs: int | None = None     # None: off; n: the chosen token's and the n likeliest tokens' logprobs
    constraint: Constraint | None = None   # response_format / grammar / forced tool call (pyqwen.constrain)

    @property
    def parse_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


MAX_TOP_LOGPROBS = 20


def _chat_logprobs(body: dict) -> int | None:
    """Chat: `logprobs` true turns them on, `top_logprobs` (0-20, needs logprobs) adds the likeliest tokens."""
    on = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not on:
        raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if on else None


def _completion_logprobs(body: dict) -> int | None:
    """Completions: `logprobs` N (0-20) = the chosen token's and the N likeliest tokens' logprobs."""
    v = body.get("logprobs")
    if v is None or v is False:
        return None
    if v is True:   # not OpenAI's type, but what some clients send
        return 0
    return _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)


def parse_chat(body: dict, n_ctx: int, header_session: str | None = None) -> ChatRequest:
    common = _common(body, n_ctx)
    logprobs = _chat_logprobs(body)
    messages = _messages(body.get("messages"))
    try:
        tools = validate_tools(body.get("tools"))
    except ToolSpecError as e:
        raise bad(str(e), e.param) from None
    tc = body.get("tool_choice")
    if tc is not None:
        names = {t["function"]["name"] for t in tools or []}
        if isinstance(tc, str):
            if tc not in ("none", "auto", "required"):
                raise bad("'tool_choice' must be 'none', 'auto', 'required' or a function", "tool_choice")
            if tc == "required" and not tools:
                raise bad("tool_choice 'required' needs 'tools'", "tool_choice")
        elif isinstance(tc, dict):
            fn = tc.get("function")
            if tc.get("type") != "function" or not isinstance(fn, dict) or fn.get("name") not in names:
                raise bad("'tool_choice' names no function in 'tools'", "tool_choice")
        else:
            raise bad("'tool_choice' must be a string or an object", "tool_choice")
    constraint = _constraint(body, tools if tc != "none" else None, tc)
    kw = body.get("chat_template_kwargs")
    if kw is None:
        kw = {}
    if not isinstance(kw, dict):
        raise bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    for k in ("enable_thinking", "preserve_thinking"):
        if k in kw and kw[k] is not None and not isinstance(kw[k], bool):
            raise bad(f"'chat_template_kwargs.{k}' must be a boolean", f"chat_template_kwargs.{k}")
    kw = {k: v for k, v in kw.items() if isinstance(k, str) and not k.startswith("_") and v is not None
          and k not in ("messages", "tools", "add_generation_prompt", "documents")}
    key = header_session or body.get("session_id") or body.get("user") or None
    return ChatRequest(messages=messages, tools=tools if tc != "none" else None, tool_choice=tc,
                       max_tokens=common["max_tokens"], stream=common["stream"],
                       include_usage=common["include_usage"], sampling=common["sampling"], template_kwargs=kw,
                       session_key=key, logprobs=logprobs, constraint=constraint)


def _constraint(body: dict, tools: list[dict] | None = None, tool_choice: Any = None) -> Constraint | None:
    """What the output is held to: OpenAI's response_format, llama-server's `grammar` (GBNF, or Lark) and
    `json_schema`, or a forced tool call (tool_choice "required" or a named function). Its content (the
    schema or grammar itself) is checked when it is compiled against the vocabulary (Engine.prepare_*)."""
    parallel = _bool(body, "parallel_tool_calls", True)
    try:
        return request_constraint(response_format=body.get("response_format"), grammar=body.get("grammar"),
                                  json_schema=body.get("json_schema"), tools=tools, tool_choice=tool_choice,
                                  parallel_tool_calls=parallel)
    except GrammarError as e:
        raise bad(str(e), e.param) from None


# ---- completions -----------------------------------------------------------------------------------

@dataclass
class CompletionRequest:
    prompt: str | list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    sampling: Sampling
    session_key: str | None
    logprobs: int | None = None
    constraint: Constraint | None = None


def parse_completion(body: dict, n_ctx: int, n_vocab: int, header_session: str | None = None) -> CompletionRequest:
    common = _common(body, n_ctx)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise bad("'prompt' is empty", "prompt")
    elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if any(t < 0 or t >= n_vocab for t in p):
            raise bad(f"token ids in 'prompt' must be in [0, {n_vocab})", "prompt")
    else:
        raise bad("'prompt' must be a non-empty string or array of token ids (one prompt)", "prompt")
    if body.get("echo"):
        raise bad("echo is not supported", "echo")
    if body.get("suffix") is not None:
        raise bad("suffix is not supported", "suffix")
    if body.get("best_of") not in (None, 1):
        raise bad("only best_of=1 is supported", "best_of")
    key = header_session or body.get("session_id") or body.get("user") or None
    return CompletionRequest(prompt=p, max_tokens=common["max_tokens"] or 16, stream=common["stream"],
                             include_usage=common["include_usage"], sampling=common["sampling"], session_key=key,
                             logprobs=_completion_logprobs(body), constraint=_constraint(body))
