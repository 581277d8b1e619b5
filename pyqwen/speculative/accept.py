"""Which drafted tokens to keep: the acceptance rule of speculative decoding, over distributions.

A verify step feeds the main model the last emitted token and k drafts d_1..d_k in one forward; row i
of its logits (i = 0..k) is the next-token distribution after the i-th of those inputs, so row i-1
judges d_i and row k gives a bonus token when every draft is kept.

- Greedy: keep the longest prefix where the target's argmax (with penalties over the history and the
  drafts kept so far, exactly as plain decoding would see them) equals the draft; the next token is the
  target's argmax at the first disagreement, or the bonus. The output equals plain greedy decoding.
- Sampling (Leviathan et al. 2023, Chen et al. 2023): keep d_i with probability min(1, p_i(d_i) /
  q_i(d_i)), p_i the target's distribution from `Sampler.distribution` and q_i the one d_i was drawn
  from (a deterministic drafter such as prompt lookup is a one-hot q: keep with probability p_i(d_i));
  on the first rejection draw from the normalised residual max(0, p_i - q_i); after k acceptances draw
  the bonus from p_{k+1}. Each emitted token is then distributed exactly as plain sampling from p.
  All randomness comes from the sampler's RNG, so a seed reproduces a run.

Both return (n_accepted, next_token): emit drafts[:n_accepted] followed by next_token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..sampling import Sampler

# A draft distribution as Sampler.distribution returns it: (ids, probabilities); None = one-hot at the draft.
DraftDist = tuple[np.ndarray, np.ndarray] | None


def accept(sampler: Sampler, target_logits: np.ndarray, drafts: Sequence[int], history: Sequence[int],
           draft_dists: Sequence[DraftDist] | None = None) -> tuple[int, int]:
    """The rule the sampler's parameters call for: greedy at temperature 0, else speculative sampling."""
    if sampler.params.greedy:
        return accept_greedy(sampler, target_logits, drafts, history)
    return accept_sampled(sampler, target_logits, drafts, history, draft_dists)


def accept_greedy(sampler: Sampler, target_logits: np.ndarray, drafts: Sequence[int],
                  history: Sequence[int]) -> tuple[int, int]:
    if not sampler.params.greedy:
        raise ValueError("accept_greedy needs a greedy sampler (temperature 0); use accept_sampled")
    rows, drafts = _check(target_logits, drafts)
    hist = list(history)
    for i, d in enumerate(drafts):
        best = int(sampler.distribution(rows[i], hist)[0][0])
        if best != d:
            return i, best
        hist.append(d)
    return len(drafts), int(sampler.distribution(rows[len(drafts)], hist)[0][0])


def accept_sampled(sampler: Sampler, target_logits: np.ndarray, drafts: Sequence[int], history: Sequence[int],
                   draft_dists: Sequence[DraftDist] | None = None) -> tuple[int, int]:
    rows, drafts = _check(target_logits, drafts)
    if draft_dists is None:
        draft_dists = [None] * len(drafts)
    if len(draft_dists) != len(drafts):
        raise ValueError(f"{len(drafts)} drafts but {len(draft_dists)} draft distributions")
    rng = sampler.rng
    hist = list(history)
    n_vocab = rows.shape[1]
    for i, d in enumerate(drafts):
        p_ids, p = sampler.distribution(rows[i], hist)
        p_d = float(p[p_ids == d].sum())
        q = draft_dists[i]
        if q is None:
            q_d = 1.0
        else:
            q_ids, q_probs = np.asarray(q[0], np.int64), np.asarray(q[1], np.float64)
            if q_ids.shape != q_probs.shape or q_ids.ndim != 1:
                raise ValueError(f"draft distribution {i}: ids and probabilities must be 1-D of one length")
            if q_ids.size and (q_ids.min() < 0 or q_ids.max() >= n_vocab):
                raise ValueError(f"draft distribution {i}: ids must be in [0, {n_vocab})")
            q_d = float(q_probs[q_ids == d].sum())
            if q_d <= 0.0:
                raise ValueError(f"draft {i} (token {d}) has probability 0 under the distribution it was drawn from")
        if rng.random() < p_d / q_d:     # min(1, .) is implicit: random() < 1
            hist.append(d)
            continue
        residual = np.zeros(n_vocab)
        residual[p_ids] = p
        if q is None:
            residual[d] = 0.0
        else:
            np.subtract.at(residual, q_ids, q_probs)
            np.maximum(residual, 0.0, out=residual)
        ids = np.flatnonzero(residual)
        if ids.size == 0:
            # only when p == q up to rounding, where a rejection has probability ~0: p itself is then the law
            ids, w = p_ids, p
        else:
            w = residual[ids] / residual[ids].sum()
        return i, int(ids[rng.choice(len(ids), p=w)])
    return len(drafts), sampler.sample(rows[len(drafts)], hist)


def _check(target_logits, drafts) -> tuple[np.ndarray, list[int]]:
    rows = np.asarray(target_logits, dtype=np.float32)
    drafts = [int(d) for d in drafts]
    if rows.ndim != 2 or rows.shape[0] != len(drafts) + 1:
        raise ValueError(f"need k + 1 = {len(drafts) + 1} rows of target logits for {len(drafts)} drafts, "
                         f"got shape {rows.shape}")
    if any(not 0 <= d < rows.shape[1] for d in drafts):
        raise ValueError(f"draft ids must be in [0, {rows.shape[1]}), got {drafts}")
    return rows, drafts
