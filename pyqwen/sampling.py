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

    def sample(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        p = self.params
        logits = self.apply_penalties(np.asarray(logits, dtype=np.float32), history or [])
        if p.greedy:
            return int(np.argmax(logits))
        n = logits.shape[0]
        k = p.top_k if 0 < p.top_k < n else n
        # Candidates sorted by logit, descending (argpartition first: the vocab is 248k wide).
        if k < n:
            idx = np.argpartition(-logits, k - 1)[:k]
        else:
            idx = np.arange(n)
        idx = idx[np.argsort(-logits[idx], kind="stable")]
        cand = logits[idx].astype(np.float64)
        probs = np.exp(cand - cand[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            idx, cand, probs = idx[:cut], cand[:cut], probs[:cut]
        if p.min_p > 0.0:
            keep = probs >= p.min_p * probs[0]
            idx, cand = idx[keep], cand[keep]
        z = (cand - cand[0]) / p.temperature
        w = np.exp(z)
        w /= w.sum()
        return int(idx[self.rng.choice(len(idx), p=w)])
