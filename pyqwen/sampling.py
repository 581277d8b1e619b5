"""Token sampling: penalties, top-k, top-p, min-p, temperature, seeded randomness.

The order follows llama.cpp's default sampler chain (penalties -> top-k -> top-p -> min-p ->
temperature -> draw), so the same parameters mean the same thing to users of both. A temperature of 0
(or below 1e-5) is greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40              # 0 = off
    top_p: float = 0.95          # 1.0 = off
    min_p: float = 0.05          # 0.0 = off
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0   # 1.0 = off; applied over the last `penalty_last_n` tokens
    penalty_last_n: int = 64
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(msg)
        if not math.isfinite(self.temperature) or self.temperature < 0:
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be a non-negative integer, got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0.0 <= self.min_p <= 1.0):
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if not math.isfinite(self.presence_penalty) or abs(self.presence_penalty) > 2.0:
            bad(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.penalty_last_n < 0:
            bad("penalty_last_n must be >= 0")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed must be an integer")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


class Sampler:
    """Draws one token id from a logits vector; holds the RNG so a seed gives the same tokens."""

    def __init__(self, params: SamplingParams):
        params.validate()
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def apply_penalties(self, logits: np.ndarray, history: list[int]) -> np.ndarray:
        p = self.params
        if not history or (p.repetition_penalty == 1.0 and p.presence_penalty == 0.0):
            return logits
        logits = logits.copy()
        recent = history[-p.penalty_last_n:] if p.penalty_last_n else []
        if p.repetition_penalty != 1.0 and recent:
            ids = np.unique(np.asarray(recent, dtype=np.int64))
            v = logits[ids]
            # As llama.cpp and transformers: shrink positive logits, push negative ones further down.
            logits[ids] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.presence_penalty != 0.0:
            ids = np.unique(np.asarray(history, dtype=np.int64))
            logits[ids] -= p.presence_penalty
        return logits

    @property
    def uses_history(self) -> bool:
        """True when the token history changes the logits (penalties): only the host can do that."""
        p = self.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0

    @property
    def device_params(self) -> SamplingParams | None:
        """The params when a backend that samples on its device may choose the token in this sampler's
        place (plain temperature / top-k / top-p / min-p, no history, no overridden `sample`), else None."""
        if type(self).sample is not Sampler.sample or self.uses_history:
            return None
        return self.params

    def distribution(self, logits: np.ndarray, history: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The distribution `sample` draws from: (candidate ids int64, their probabilities float64 summing
        to 1), after penalties, top-k, top-p, min-p and temperature; ids best first (stable, ties by
        index within the kept set). Greedy is the argmax with probability 1. Speculative decoding's
        acceptance rule needs these probabilities, so they are computed here and only here."""
        p = self.params
        logits = self.apply_penalties(np.asarray(logits, dtype=np.float32), history or [])
        if p.greedy:
            return np.array([int(np.argmax(logits))], np.int64), np.ones(1)
        n = logits.shape[0]
        idx = None
        if 0 < p.top_k < n:
            # argpartition picks the top k (which of several tied at the k-th value is its choice, as ever);
            # they are then the row the filters below run on, in argpartition's order.
            idx = np.argpartition(-logits, p.top_k - 1)[:p.top_k]
            logits = logits[idx]
        order = kept_candidates(logits, p.top_p, p.min_p)
        cand = logits[order].astype(np.float64)
        z = (cand - cand[0]) / p.temperature
        w = np.exp(z)
        w /= w.sum()
        ids = idx[order] if idx is not None else order
        return ids.astype(np.int64, copy=False), w

    def sample(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        ids, probs = self.distribution(logits, history)
        if self.params.greedy:
            return int(ids[0])        # no draw: greedy never advances the RNG
        return int(ids[self.rng.choice(len(ids), p=probs)])


# ---- top-p / min-p without sorting the row ------------------------------------------------------------
#
# The filters keep a prefix of the row sorted by descending logit (stable: ties in row order), so only
# that prefix needs sorting. Its length is bounded in O(n) for min-p (p_i >= min_p * p_0 is a threshold
# on the logit) and found for top-p by sorting a growing top slice until its cumulative probability
# reaches top_p. The probabilities are normalised by the sum over the whole row, computed in O(n) in row
# order; the full-sort formulation sums in sorted order, which may differ in the last bits. Only a
# comparison within that rounding of its threshold could come out differently: such rows (measure zero
# for real logits, but possible with ties and round numbers) are decided by the full sort instead.

_MARGIN = 1e-9   # relative; the two sums differ by < 1e-13 relative (pairwise float64 over <= 2^20 terms)
_FIRST_SLICE = 64


def sorted_prefix(logits: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest logits in stable descending order (ties by index), extended to every
    index tied with the m-th, so it is exactly a prefix of np.argsort(-logits, kind="stable")."""
    n = logits.shape[0]
    if m >= n:
        return np.argsort(-logits, kind="stable")
    kth = logits[np.argpartition(-logits, m - 1)[m - 1]]
    sel = np.flatnonzero(logits >= kth)          # ascending indices: the stable sort keeps ties in order
    return sel[np.argsort(-logits[sel], kind="stable")]


def kept_candidates(logits: np.ndarray, top_p: float, min_p: float) -> np.ndarray:
    """Indices the top-p then min-p filters keep, best first: the same as sorting the whole row
    (stable, descending), normalising, cutting at the first cumulative probability >= top_p, then
    keeping p >= min_p * p_max."""
    n = logits.shape[0]
    if top_p >= 1.0 and min_p <= 0.0:
        return np.argsort(-logits, kind="stable")  # nothing is filtered: every token is a candidate
    x = logits.astype(np.float64)
    c0 = float(x.max())
    e = np.exp(x - c0)
    den = e.sum()
    limit = n
    if min_p > 0.0:
        # p_i >= min_p * p_0 with p = e / den and e_0 = 1: a threshold on e_i, hence on the logit.
        p = e / den
        limit = int(np.count_nonzero(p >= min_p * (1.0 / den)))
        if np.any(np.abs(e - min_p) <= _MARGIN * min_p):
            return _kept_by_full_sort(logits, top_p, min_p)
        if top_p >= 1.0:
            return sorted_prefix(logits, limit)[:limit]
    m = min(_FIRST_SLICE, limit)
    while True:
        order = sorted_prefix(logits, m)
        probs = np.exp(logits[order].astype(np.float64) - c0) / den
        cs = np.cumsum(probs)
        if cs[-1] >= top_p or len(order) >= limit:
            break
        m = min(limit, m * 4)
    cut = int(np.searchsorted(cs, top_p) + 1)
    # The decision cs[cut-1] >= top_p > cs[cut-2] must not hang on the last bits of den.
    near = (cut <= len(cs) and cs[cut - 1] < top_p * (1 + _MARGIN)) or \
        (2 <= cut <= len(cs) + 1 and cs[cut - 2] > top_p * (1 - _MARGIN))
    if near:
        return _kept_by_full_sort(logits, top_p, min_p)
    return order[:min(cut, limit)]


def _kept_by_full_sort(logits: np.ndarray, top_p: float, min_p: float) -> np.ndarray:
    """The reference formulation (sort everything); used only for rows at a rounding boundary."""
    idx = np.argsort(-logits, kind="stable")
    cand = logits[idx].astype(np.float64)
    probs = np.exp(cand - cand[0])
    probs /= probs.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        idx, probs = idx[:cut], probs[:cut]
    if min_p > 0.0:
        idx = idx[probs >= min_p * probs[0]]
    return idx
