"""Prompt-lookup drafts: guess the next tokens by finding the current suffix earlier in the text.

Agents and code repeat long spans of their own prompt and output (file contents, identifiers, tool
results). When the last n tokens occurred before, the tokens that followed them then are a free draft:
no weights, no forward. For each n in [min_n, max_n] a dict maps every n-gram that has a following
token to the position of that token in its most recent occurrence; the newest occurrence overwrites
the older one. An extend costs O(max_n) dict updates per token and a draft O(max_n + k), whatever the
length of the history.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable


class LookupDrafter:
    """`extend(tokens)` with the prompt, then with each accepted token; `draft(k)` proposes up to k tokens
    that followed the most recent earlier occurrence of the longest suffix (length max_n down to min_n)
    of the history; `match_len` is the length of the suffix that matched for the last draft (0: none)."""

    def __init__(self, min_n: int = 2, max_n: int = 5):
        if not (isinstance(min_n, int) and isinstance(max_n, int)) or min_n < 1 or max_n < min_n:
            raise ValueError(f"need integers 1 <= min_n <= max_n, got min_n={min_n!r}, max_n={max_n!r}")
        self.min_n, self.max_n = min_n, max_n
        self.history: list[int] = []
        # _index[n - min_n][n-gram] = position of the token that followed its most recent occurrence
        self._index: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n - min_n + 1)]
        self.match_len = 0

    def __len__(self) -> int:
        return len(self.history)

    def extend(self, tokens: Iterable[int]) -> None:
        h = self.history
        for t in tokens:
            if type(t) is not int:
                t = _as_token(t)
            # h[-n:] now gets its follower t: index it (it is no longer the unmatched suffix)
            end = len(h)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._index[n - self.min_n][tuple(h[end - n:])] = end
            h.append(t)

    def draft(self, k: int) -> list[int]:
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"draft length must be a non-negative integer, got {k!r}")
        h = self.history
        end = len(h)
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            pos = self._index[n - self.min_n].get(tuple(h[end - n:]))
            if pos is not None:
                self.match_len = n
                return h[pos:pos + k]
        self.match_len = 0
        return []


def _as_token(t) -> int:
    try:
        v = operator.index(t)       # numpy integers are fine; floats and strings are not
    except TypeError:
        raise TypeError(f"token ids must be integers, got {type(t).__name__} {t!r}") from None
    return int(v)
