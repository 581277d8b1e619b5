"""One reply stream: generated text -> OpenAI-style deltas, and the whole reply at the end.

Used by pyqwen.Model.chat (ChatGeneration) and the server's Engine, so both see the same reasoning split
(pyqwen.chat.ReasoningSplitter: `<think>...</think>` -> reasoning_content) and the same qwen3_coder
tool-call parsing (pyqwen.tool_calls.ToolCallParser -> tool_calls).

    reply = ReplyStream(started_in_think=True, tools=tools, parse_tools=True)
    for chunk in generation:
        delta = reply.push(chunk.text)     # {} or some of reasoning_content / content / tool_calls
    delta = reply.flush()                  # what was held back (a partial tag, an unfinished call)
    reply.reasoning_content, reply.content, reply.calls, reply.finish_reason(generation.finish_reason)

`TextStream` is the same interface for plain completions: deltas are {"text": ...}, no parsing.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .chat import ReasoningSplitter
from .tool_calls import ToolCall, ToolCallParser

__all__ = ["ReplyStream", "TextStream"]


class ReplyStream:
    """Reasoning split + (optionally) tool-call parsing of one assistant reply."""

    def __init__(self, started_in_think: bool, tools: Iterable[Mapping] | None = None, parse_tools: bool = False):
        self._splitter = ReasoningSplitter(started_in_think)
        self._parser = ToolCallParser(tools) if parse_tools else None
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self.calls: list[ToolCall] = []

    @property
    def reasoning_content(self) -> str:
        return "".join(self._reasoning)

    @property
    def content(self) -> str:
        return "".join(self._content)

    def push(self, text: str) -> dict[str, Any]:
        """The delta for a piece of generated text ({} when everything is held back)."""
        return self._route(self._splitter.push(text))

    def flush(self) -> dict[str, Any]:
        """The delta of whatever was held back, at the end of the generation."""
        delta = self._route(self._splitter.flush())
        if self._parser is not None:
            self._add_events(delta, self._parser.flush())
        return delta

    def finish_reason(self, reason: str | None) -> str:
        """OpenAI's finish_reason: a reply that stopped after tool calls finished with "tool_calls"."""
        reason = reason or "stop"
        return "tool_calls" if self.calls and reason == "stop" else reason

    def _route(self, parts: list[tuple[str, str]]) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        for kind, text in parts:
            if kind == "reasoning":
                delta["reasoning_content"] = delta.get("reasoning_content", "") + text
                self._reasoning.append(text)
            elif self._parser is not None:
                self._add_events(delta, self._parser.push(text))
            else:
                self._add_events(delta, [("content", text)])
        return delta

    def _add_events(self, delta: dict[str, Any], events) -> None:
        for kind, ev in events:
            if kind == "content":
                delta["content"] = delta.get("content", "") + ev
                self._content.append(ev)
            else:
                delta.setdefault("tool_calls", []).append(ev.to_openai(index=len(self.calls)))
                self.calls.append(ev)


class TextStream:
    """ReplyStream's interface for raw completions: every piece of text is a {"text": ...} delta."""

    reasoning_content = ""
    content = ""

    def __init__(self):
        self.calls: list[ToolCall] = []

    def push(self, text: str) -> dict[str, Any]:
        return {"text": text} if text else {}

    def flush(self) -> dict[str, Any]:
        return {}

    def finish_reason(self, reason: str | None) -> str:
        return reason or "stop"
