"""What the streaming parsers (chat.ReasoningSplitter for `</think>`, tool_calls.ToolCallParser for
`<tool_call>`) share: how much of a pushed text's end may still become a tag, and so must be held back."""

from __future__ import annotations


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (0 when none is)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
