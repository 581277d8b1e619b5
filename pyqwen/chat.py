"""Chat templates and reasoning (`<think>`) handling.

`ChatTemplate` renders a model's jinja chat template the way transformers' `apply_chat_template(...,
tokenize=False)` does (same sandbox, jinja options, globals, filters and message preprocessing), so a
prompt built here tokenizes to exactly what the model saw in training and what llama.cpp's jinja path
produces.

`split_reasoning` / `ReasoningSplitter` turn generated text back into (reasoning_content, content). The
Qwen3.6 generation prompt ends inside the think block (`<think>\\n`), so generated text starts as
reasoning and switches to content at `</think>`. Newlines around the tag are dropped exactly as the
template drops them when it re-renders an assistant turn, so a round trip does not grow the prompt.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .stream_tags import partial_suffix

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


from .errors import ChatTemplateError  # noqa: E402,F401  (defined with the other errors; re-exported here)


class _GenerationTag(jinja2.ext.Extension):
    # transformers' templates may wrap assistant text in {% generation %}..{% endgeneration %} to build
    # training masks; for rendering the block is just its body.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    # Like transformers: namespaces refuse underscore attributes so templates cannot reach internals.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


class _Dict:
    # `dict(...)` in templates, without exposing the dict type itself.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise ChatTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson HTML-escapes '<', '>' and '&', which would corrupt tool schemas in prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _plain(value: Any) -> Any:
    """Deep copy into plain JSON-like types, so the sandboxed template only sees inert data."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models (e.g. from an API layer)
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _prepare_message(message: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"chat messages must be dicts, got {type(message).__name__}")
    # OpenAI clients send `content: null` / `tool_calls: null`; templates expect the key to be absent.
    msg = _plain({k: v for k, v in message.items() if v is not None})
    # Reasoning may come under any of its common names; templates read `reasoning_content`.
    reasoning = next((msg[k] for k in _REASONING_KEYS if msg.get(k) is not None), None)
    if reasoning is not None:
        msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
    return msg


# Bounds on what one template expression may build: a hostile template (it comes with the model file)
# must not make `'x' * 10**10` or `9 ** 9 ** 9` allocate or compute for minutes. Real templates repeat
# strings a few times and never raise to powers.
MAX_REPEAT_ITEMS = 1 << 20
MAX_POW_BITS = 4096


class _Env(ImmutableSandboxedEnvironment):
    """transformers' sandbox (no attribute starting with `_`, no mutation of inputs), plus bounds on
    sequence repetition and powers (see above). Renders every ordinary template identically."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT_ITEMS:
                    raise jinja2.exceptions.SecurityError(
                        f"the template repeats a sequence of {len(seq)} items {n} times")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                and left.bit_length() * right > MAX_POW_BITS:
            raise jinja2.exceptions.SecurityError("the template raises a number to a huge power")
        return super().call_binop(context, operator, left, right)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Mapping[str, str | None] | None = None):
        """`special_tokens` (e.g. {"eos_token": "<|im_end|>"}) become template variables, as transformers
        passes the tokenizer's special_tokens_map; explicit render kwargs override them."""
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        env = _Env(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                           dict=_Dict(), namespace=_Namespace)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"invalid chat template: {e}") from e
        except (RecursionError, MemoryError, ValueError, TypeError) as e:  # hostile sources can reach these
            raise ChatTemplateError(f"invalid chat template: {type(e).__name__}: {e}") from e

    def render(self, messages, *, add_generation_prompt: bool = True, tools=None, documents=None,
               **kwargs) -> str:
        try:
            chat = [_prepare_message(m) for m in messages]
            tool_schemas = None
            if tools is not None:
                for t in tools:
                    if not isinstance(t, Mapping):
                        raise ChatTemplateError("tools must be JSON-schema dicts (OpenAI style)")
                tool_schemas = _plain(list(tools))
            variables = {**self.special_tokens, **_plain(kwargs)}
            docs = _plain(documents)
        except RecursionError:
            raise ChatTemplateError("the messages or tools are nested too deeply") from None
        try:
            return self._template.render(messages=chat, tools=tool_schemas, documents=docs,
                                         add_generation_prompt=add_generation_prompt, **variables)
        except ChatTemplateError:
            raise
        except RecursionError:
            raise ChatTemplateError("chat template failed: the messages or tools are nested too deeply") from None
        except Exception as e:  # noqa: BLE001 -- the template is data from the model file: whatever it
            # raises (SecurityError, TypeError, OverflowError from a huge range(), ...) is its failure
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e


class BrokenChatTemplate:
    """Stands in for a model's chat template that does not compile: the model still loads and runs raw
    completions; rendering a conversation raises ChatTemplateError saying why."""

    def __init__(self, source: str, error: ChatTemplateError):
        self.source = source
        self.error = error
        self.special_tokens: dict = {}

    def render(self, messages, **kwargs) -> str:
        raise ChatTemplateError(f"the model's chat template is unusable ({self.error}); raw completion "
                                "still works, or load a model with a valid tokenizer.chat_template")


def split_reasoning(text: str, started_in_think: bool) -> tuple[str | None, str]:
    """(reasoning_content, content) of a generated assistant message.

    With `started_in_think` the prompt ended in `<think>\\n`, so everything before the first `</think>`
    is reasoning (all of it if the tag never came: the generation stopped while thinking). Otherwise a
    reasoning block is only recognised when the text itself opens with `<think>`; if not, reasoning is
    None. Newlines next to the tags are dropped like the template does.
    """
    if not started_in_think:
        stripped = text.lstrip()
        if not stripped.startswith(THINK_OPEN):
            return None, text
        text = stripped[len(THINK_OPEN):]
    end = text.find(THINK_CLOSE)
    if end < 0:
        return text.strip("\n"), ""
    return text[:end].strip("\n"), text[end + len(THINK_CLOSE):].lstrip("\n")


class ReasoningSplitter:
    """Streaming form of `split_reasoning`: `push(delta)` returns [(kind, text), ...] with kind
    'reasoning' or 'content'. A tag split across pushes is held back, never emitted as text, and so are
    newlines that may turn out to precede `</think>`. Joining all pieces of a kind (including `flush()`)
    gives exactly what `split_reasoning` gives for the whole text."""

    def __init__(self, started_in_think: bool = True):
        self._state = "reasoning" if started_in_think else "pre"
        self._pending = ""
        self._at_start = True  # strip leading newlines of the current section

    def push(self, text: str) -> list[tuple[str, str]]:
        self._pending += text
        out: list[tuple[str, str]] = []
        while True:
            if self._state == "pre":
                stripped = self._pending.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._pending = stripped[len(THINK_OPEN):]
                    self._state, self._at_start = "reasoning", True
                    continue
                if THINK_OPEN.startswith(stripped):
                    return out  # could still become "<think>"
                self._state, self._at_start = "content", False
                continue
            if self._state == "reasoning":
                end = self._pending.find(THINK_CLOSE)
                if end >= 0:
                    self._emit(out, "reasoning", self._pending[:end].rstrip("\n"))
                    self._pending = self._pending[end + len(THINK_CLOSE):]
                    self._state, self._at_start = "content", True
                    continue
                keep = partial_suffix(self._pending, THINK_CLOSE)
                body = self._pending[:len(self._pending) - keep].rstrip("\n")
                self._emit(out, "reasoning", body)
                self._pending = self._pending[len(body):]
                return out
            # content: nothing more to parse
            self._emit(out, "content", self._pending)
            self._pending = ""
            return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self._state == "pre":
            self._emit(out, "content", self._pending)
        elif self._state == "reasoning":
            self._emit(out, "reasoning", self._pending.rstrip("\n"))
        else:
            self._emit(out, "content", self._pending)
        self._pending = ""
        return out

    def _emit(self, out: list[tuple[str, str]], kind: str, text: str) -> None:
        if self._at_start:
            text = text.lstrip("\n")
        if text:
            self._at_start = False
            out.append((kind, text))
