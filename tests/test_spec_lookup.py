"""pyqwen.speculative.LookupDrafter against a brute-force scan of the whole history written here."""

from __future__ import annotations

import numpy as np
import pytest

from pyqwen.speculative import LookupDrafter


def brute_force_draft(history: list[int], k: int, min_n: int, max_n: int) -> tuple[list[int], int]:
    """For n = max_n down to min_n: scan back from the end for the latest start s < len - n where
    history[s:s+n] equals the last n tokens; the draft is what followed it (at most k tokens)."""
    L = len(history)
    for n in range(max_n, min_n - 1, -1):
        if L < n:
            continue
        suffix = history[L - n:]
        for s in range(L - n - 1, -1, -1):
            if history[s:s + n] == suffix:
                return history[s + n:s + n + k], n
    return [], 0


@pytest.mark.parametrize("alphabet,min_n,max_n", [(2, 1, 3), (3, 2, 5), (4, 2, 4), (6, 3, 6), (20, 1, 2)])
def test_matches_brute_force_on_random_histories(alphabet, min_n, max_n):
    rng = np.random.default_rng(alphabet * 100 + max_n)
    for trial in range(20):
        drafter = LookupDrafter(min_n=min_n, max_n=max_n)
        history: list[int] = []
        # extend in chunks of random size (a prompt, then accepted runs), drafting after every extend
        while len(history) < 150:
            chunk = rng.integers(0, alphabet, size=int(rng.integers(1, 6))).tolist()
            if rng.random() < 0.3 and len(history) > 8:       # splice in an earlier span: a long match
                s = int(rng.integers(0, len(history) - 4))
                chunk = history[s:s + int(rng.integers(3, 12))]
            drafter.extend(chunk)
            history += chunk
            k = int(rng.integers(0, 9))
            want, want_n = brute_force_draft(history, k, min_n, max_n)
            assert drafter.draft(k) == want, (history, k)
            assert drafter.match_len == want_n
    assert drafter.history == history


def test_found_matches_are_common_enough_to_mean_something():
    """Guards the test above: on a 3-letter alphabet most drafts are non-empty and of several lengths."""
    rng = np.random.default_rng(0)
    history = rng.integers(0, 3, size=200).tolist()
    lens = {brute_force_draft(history[:L], 4, 2, 5)[1] for L in range(10, 200)}
    assert {2, 3, 4, 5} <= lens


def test_edge_cases():
    d = LookupDrafter(min_n=2, max_n=4)
    assert d.draft(3) == [] and d.match_len == 0             # empty
    d.extend([7])
    assert d.draft(3) == [] and d.match_len == 0             # shorter than min_n
    d.extend([8])
    assert d.draft(3) == []                                  # the suffix itself is no earlier occurrence
    d.extend([9, 7, 8])                                      # 7 8 9 7 8: "7 8" occurred at 0, followed by 9 7 8
    assert d.draft(5) == [9, 7, 8] and d.match_len == 2      # k beyond the continuation: what exists
    assert d.draft(1) == [9]
    assert d.draft(0) == []


def test_self_overlapping_repeat_uses_the_latest_occurrence():
    d = LookupDrafter(min_n=2, max_n=3)
    d.extend([5, 5, 5, 5, 5])
    # suffix "5 5 5" last occurred at 1..3, followed only by the final 5
    assert d.draft(4) == [5] and d.match_len == 3
    d = LookupDrafter(min_n=1, max_n=2)
    d.extend([1, 2, 1, 2, 1, 2])
    assert d.draft(10) == [1, 2] and d.match_len == 2         # "1 2" at 2..3, followed by 1 2


def test_longest_suffix_wins_over_a_later_shorter_match():
    d = LookupDrafter(min_n=1, max_n=3)
    d.extend([1, 2, 3, 40, 9, 3, 41, 1, 2, 3])
    # "1 2 3" occurred at 0 (followed by 40); "3" alone more recently at 5 (followed by 41)
    assert d.draft(2) == [40, 9] and d.match_len == 3


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="min_n"):
        LookupDrafter(min_n=0)
    with pytest.raises(ValueError, match="max_n"):
        LookupDrafter(min_n=4, max_n=3)
    d = LookupDrafter()
    with pytest.raises(TypeError, match="integers"):
        d.extend([1.5])
    with pytest.raises(ValueError, match="non-negative"):
        d.draft(-1)
    d.extend(np.array([3, 4, 3, 4]))                          # numpy ids are ids
    assert d.draft(2) == [3, 4] and all(type(t) is int for t in d.history)
