"""Qwen3.6 tool calls (the qwen3_coder XML format) <-> OpenAI `tool_calls`.

Qwen3.6 writes a function call as XML after its visible text (see the chat template)::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

`ToolCallParser` turns generated content into ("content", text) and ("tool_call", ToolCall) events. It is
incremental (push/flush), so streamed content never contains a partial `<tool_call>` block, and
`parse_tool_calls` (whole text) is the same parser run once, so streaming and non-streaming agree.
Argument values are typed by the tool's JSON schema (integer/number/boolean/null/object/array parsed,
strings kept verbatim); a value that does not parse as its declared type stays a string. A block that
is not a well-formed call (no `<function=...>`, unterminated, junk between tags) is given back as text.

Tool calls are only recognised in the visible content, not inside the `<think>` block (the template
tells the model to call functions after reasoning; this is also what vLLM and llama.cpp do).

`messages_for_template` converts OpenAI chat messages to what the template expects (assistant
`tool_calls[].function.arguments` as a dict instead of a JSON string), and `validate_tools` checks an
OpenAI `tools` list.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .stream_tags import partial_suffix

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

_FUNCTION_RE = re.compile(r"<function=([^>\n]+)>")
_PARAM_OPEN_RE = re.compile(r"<parameter=([^>\n]+)>")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_openai(self, index: int | None = None) -> dict:
        d = {"id": self.id, "type": "function",
             "function": {"name": self.name, "arguments": self.arguments_json()}}
        if index is not None:
            d = {"index": index, **d}
        return d

    def to_template(self) -> dict:
        """The form the chat template renders (arguments as a mapping)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


# ---- schema-typed argument values ----------------------------------------------------------------

def _schema_types(schema: Any) -> list[str]:
    """JSON-schema types a parameter may take, in declaration order ([] = unknown)."""
    if not isinstance(schema, Mapping):
        return []
    t = schema.get("type")
    out: list[str] = []
    if isinstance(t, str):
        out.append(t)
    elif isinstance(t, list):
        out.extend(x for x in t if isinstance(x, str))
    for key in ("anyOf", "oneOf", "allOf"):
        subs = schema.get(key)
        if isinstance(subs, list):
            for s in subs:
                out.extend(x for x in _schema_types(s) if x not in out)
    if not out:
        if isinstance(schema.get("properties"), Mapping):
            out.append("object")
        elif "items" in schema:
            out.append("array")
        elif isinstance(schema.get("enum"), list) and schema["enum"]:
            kinds = {type(v) for v in schema["enum"]}
            if kinds == {str}:
                out.append("string")
    return out


def _parse_json_like(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        pass
    try:  # models sometimes write Python literals (single quotes, True/None)
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("not a literal") from None


def convert_value(raw: str, schema: Any) -> Any:
    """Type a parameter's text by its JSON schema; text that does not fit stays a string."""
    types = _schema_types(schema)
    s = raw.strip()
    for t in types:
        if t == "null" and s == "null":
            return None
    for t in types:
        if t == "string":
            return raw
        if t == "integer":
            try:
                v = json.loads(s)
            except ValueError:
                continue
            if isinstance(v, bool):
                continue
            if isinstance(v, int):
                return v
            if isinstance(v, float) and v.is_integer():
                return int(v)
        elif t == "number":
            try:
                v = json.loads(s)
            except ValueError:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
        elif t == "boolean":
            if s.lower() in ("true", "false"):
                return s.lower() == "true"
        elif t in ("object", "array"):
            try:
                v = _parse_json_like(s)
            except ValueError:
                continue
            if isinstance(v, dict if t == "object" else (list, tuple)):
                return list(v) if isinstance(v, tuple) else v
    return raw


def _tool_properties(tools: Iterable[Mapping] | None) -> dict[str, dict]:
    """name -> {param: schema} from an OpenAI tools list (or the bare function dicts)."""
    out: dict[str, dict] = {}
    for t in tools or ():
        if not isinstance(t, Mapping):
            continue
        fn = t.get("function", t)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            continue
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, Mapping) else None
        out[fn["name"]] = dict(props) if isinstance(props, Mapping) else {}
    return out


# ---- parsing -------------------------------------------------------------------------------------

def _strip_one_newline(v: str) -> str:
    if v.startswith("\n"):
        v = v[1:]
    if v.endswith("\n"):
        v = v[:-1]
    return v


def parse_call_block(body: str, properties: Mapping[str, dict] | None = None) -> ToolCall | None:
    """Parse what lies between `<tool_call>` and `</tool_call>`; None if it is not a well-formed call.

    Tolerated: a missing `</parameter>` (the value then ends at the next `<parameter=` or at
    `</function>`), surrounding whitespace. Not tolerated: text outside the function element, a missing
    `</function>`, anything but whitespace between parameters.
    """
    s = body.strip()
    m = _FUNCTION_RE.match(s)
    if not m or not s.endswith("</function>"):
        return None
    name = m.group(1).strip()
    if not name:
        return None
    inner = s[m.end():len(s) - len("</function>")]
    if "<function=" in inner or TOOL_CALL_OPEN in inner:
        return None
    schemas = (properties or {}).get(name, {})
    args: dict[str, Any] = {}
    pos = 0
    while True:
        rest = inner[pos:]
        if not rest.strip():
            break
        pm = _PARAM_OPEN_RE.match(rest.lstrip())
        if not pm:
            return None  # stray text between parameters
        start = pos + (len(rest) - len(rest.lstrip())) + pm.end()
        pname = pm.group(1).strip()
        close = inner.find("</parameter>", start)
        nxt = _PARAM_OPEN_RE.search(inner, start)
        if close >= 0 and (nxt is None or close < nxt.start()):
            value, pos = inner[start:close], close + len("</parameter>")
        else:  # missing </parameter>: value runs to the next parameter or the end
            end = nxt.start() if nxt else len(inner)
            value, pos = inner[start:end], end
        if not pname:
            return None
        args[pname] = convert_value(_strip_one_newline(value), schemas.get(pname))
    return ToolCall(name=name, arguments=args)


class ToolCallParser:
    """Incremental qwen3_coder tool-call parser over the visible content of a reply.

    push(text) / flush() return events [("content", str) | ("tool_call", ToolCall)]. Content that could
    still be the start of `<tool_call>` is held back, as is trailing whitespace (the template trims
    content, and puts exactly "\\n\\n" before the first call when it re-renders the turn), so streamed
    content equals the non-streamed content and never contains a fragment of a call.
    """

    def __init__(self, tools: Iterable[Mapping] | None = None):
        self._props = _tool_properties(tools)
        self._buf = ""          # unprocessed text
        self._in_call = False   # inside <tool_call> ... waiting for </tool_call>
        self._ws = ""           # held-back whitespace in content
        self._started = False   # some content was emitted (leading whitespace is dropped)
        self.calls: list[ToolCall] = []

    def _content(self, out: list, text: str) -> None:
        if not text:
            return
        body = text.rstrip()
        if not body:
            self._ws += text
            return
        lead = self._ws if self._started else ""
        if not self._started:
            body = body.lstrip()
        self._ws = text[len(text.rstrip()):]
        self._started = True
        out.append(("content", lead + body))

    def push(self, text: str) -> list[tuple[str, Any]]:
        self._buf += text
        out: list[tuple[str, Any]] = []
        while True:
            if not self._in_call:
                i = self._buf.find(TOOL_CALL_OPEN)
                if i < 0:
                    keep = partial_suffix(self._buf, TOOL_CALL_OPEN)
                    self._content(out, self._buf[:len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    return out
                self._content(out, self._buf[:i])
                self._buf = self._buf[i + len(TOOL_CALL_OPEN):]
                self._in_call = True
            j = self._buf.find(TOOL_CALL_CLOSE)
            if j < 0:
                return out
            body, self._buf = self._buf[:j], self._buf[j + len(TOOL_CALL_CLOSE):]
            self._in_call = False
            self._finish_block(out, body, closed=True)

    def _finish_block(self, out: list, body: str, closed: bool) -> None:
        call = parse_call_block(body, self._props)
        if call is None:
            self._content(out, TOOL_CALL_OPEN + body + (TOOL_CALL_CLOSE if closed else ""))
            return
        self._ws = ""  # whitespace between content and a call is the template's, not the reply's
        self.calls.append(call)
        out.append(("tool_call", call))

    def flush(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if self._in_call:
            # The generation ended inside a call: accept it if the function element is complete.
            self._in_call = False
            self._finish_block(out, self._buf, closed=False)
        else:
            self._content(out, self._buf)
        self._buf = ""
        self._ws = ""
        return out


def parse_tool_calls(text: str, tools: Iterable[Mapping] | None = None) -> tuple[str, list[ToolCall]]:
    """(content without the calls, calls) of a generated reply's visible text."""
    p = ToolCallParser(tools)
    events = p.push(text) + p.flush()
    content = "".join(v for k, v in events if k == "content")
    return content, [v for k, v in events if k == "tool_call"]


# ---- OpenAI request side ---------------------------------------------------------------------------

class ToolSpecError(ValueError):
    """An invalid `tools` / `tool_choice` / message field; `param` names it (OpenAI error style)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def validate_tools(tools: Any) -> list[dict] | None:
    """Check an OpenAI `tools` list; returns it (None if absent) or raises ToolSpecError."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ToolSpecError("'tools' must be an array", "tools")
    seen = set()
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict):
            raise ToolSpecError(f"{p} must be an object", p)
        if t.get("type", "function") != "function":
            raise ToolSpecError(f"{p}.type must be 'function'", f"{p}.type")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise ToolSpecError(f"{p}.function must be an object", f"{p}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ToolSpecError(f"{p}.function.name must be 1-128 letters, digits, '_', '-', '.' or ':'",
                                f"{p}.function.name")
        if name in seen:
            raise ToolSpecError(f"duplicate tool name {name!r}", f"{p}.function.name")
        seen.add(name)
        if "description" in fn and fn["description"] is not None and not isinstance(fn["description"], str):
            raise ToolSpecError(f"{p}.function.description must be a string", f"{p}.function.description")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise ToolSpecError(f"{p}.function.parameters must be a JSON schema object",
                                    f"{p}.function.parameters")
            ty = params.get("type", "object")
            if ty != "object":
                raise ToolSpecError(f"{p}.function.parameters.type must be 'object'",
                                    f"{p}.function.parameters.type")
            props = params.get("properties")
            if props is not None:
                if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
                    raise ToolSpecError(f"{p}.function.parameters.properties must map names to schemas",
                                        f"{p}.function.parameters.properties")
            req = params.get("required")
            if req is not None and (not isinstance(req, list) or not all(isinstance(r, str) for r in req)):
                raise ToolSpecError(f"{p}.function.parameters.required must be an array of strings",
                                    f"{p}.function.parameters.required")
    return tools


def _arguments_dict(args: Any, param: str) -> dict:
    if isinstance(args, dict):
        return args
    if isinstance(args, str):
        if not args.strip():
            return {}
        try:
            v = json.loads(args)
        except (ValueError, RecursionError):      # RecursionError: nested deeper than the parser goes
            raise ToolSpecError(f"{param} is not valid JSON", param) from None
        if isinstance(v, dict):
            return v
    raise ToolSpecError(f"{param} must be a JSON object (string)", param)


def messages_for_template(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages -> template messages: assistant tool-call arguments as dicts.

    Raises ToolSpecError for malformed tool calls. Other fields pass through unchanged.
    """
    out = []
    for i, m in enumerate(messages):
        tcs = m.get("tool_calls") if isinstance(m, dict) else None
        if not tcs:
            out.append(m)
            continue
        if not isinstance(tcs, list):
            raise ToolSpecError(f"messages[{i}].tool_calls must be an array", f"messages[{i}].tool_calls")
        conv = []
        for j, tc in enumerate(tcs):
            p = f"messages[{i}].tool_calls[{j}]"
            if not isinstance(tc, dict):
                raise ToolSpecError(f"{p} must be an object", p)
            fn = tc.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise ToolSpecError(f"{p}.function.name must be a non-empty string", f"{p}.function")
            conv.append({**tc, "function": {"name": fn["name"],
                                            "arguments": _arguments_dict(fn.get("arguments", {}),
                                                                         f"{p}.function.arguments")}})
        out.append({**m, "tool_calls": conv})
    return out
