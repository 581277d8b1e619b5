"""The acceptance rule of speculative decoding (pyqwen.speculative.accept), against laws computed here.

The claim to prove: whatever the drafts and the distribution they were drawn from, the tokens a
speculative loop emits have exactly the law of plain sampling. The "target model" is a small table of
logits conditioned on the previous token, so a run of the loop spans several verify steps and the joint
law of its first emitted tokens is a product of known factors, computed below by enumeration with a
full-sort softmax / top-k / top-p / min-p / penalty reference written in this file (not pyqwen's
Sampler). Chi-square compares the observed joint counts with it; the same test rejects two wrong rules
(accept every draft; resample from p instead of the residual), so it has power.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import chisquare

from pyqwen.sampling import Sampler, SamplingParams
from pyqwen.speculative import accept, accept_greedy, accept_sampled


def ref_probs(logits, history, *, temperature, top_k=0, top_p=1.0, min_p=0.0, presence_penalty=0.0):
    """Dense law of one draw: presence penalty, then the filters on a full stable sort, then temperature."""
    x = np.asarray(logits, np.float64).copy()
    if presence_penalty and history:
        x[sorted(set(history))] -= presence_penalty
    x = x.astype(np.float32).astype(np.float64)     # the sampler works on float32 logits
    order = np.argsort(-x, kind="stable")
    if 0 < top_k < len(x):
        order = order[:top_k]
    p = np.exp(x[order] - x[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:cut], p[:cut]
    if min_p > 0.0:
        order = order[p >= min_p * p[0]]
    w = np.exp((x[order] - x[order[0]]) / temperature)
    out = np.zeros(len(x))
    out[order] = w / w.sum()
    return out


def exact_joint(table, start, n_tokens, sp):
    """P(x_1..x_n) = prod_t p(x_t | x_{t-1}, history) by enumeration of all V^n sequences."""
    V = table.shape[0]
    joint = np.zeros((V,) * n_tokens)
    for seq in itertools.product(range(V), repeat=n_tokens):
        hist, prob = [start], 1.0
        for t in seq:
            prob *= ref_probs(table[hist[-1]], hist, **sp)[t]
            if prob == 0.0:
                break
            hist.append(t)
        joint[seq] = prob
    return joint


class Drafter:
    """Drafts k tokens by walking a draft table from the last token: sampled from its own Sampler
    (q = that sampler's distribution), or deterministically (its argmax: q one-hot, passed as None or
    explicitly)."""

    def __init__(self, table, mode, params=None, seed=0):
        self.table, self.mode = table, mode
        self.sampler = Sampler(params or SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
        self.rng = np.random.default_rng(seed)

    def __call__(self, last, k):
        drafts, dists = [], []
        for _ in range(k):
            if self.mode == "sampled":
                ids, probs = self.sampler.distribution(self.table[last])
                last = int(ids[self.rng.choice(len(ids), p=probs)])
                dists.append((ids, probs))
            else:
                last = int(np.argmax(self.table[last]))
                dists.append((np.array([last]), np.ones(1)) if self.mode == "onehot-explicit" else None)
            drafts.append(last)
        return drafts, dists


def run_loop(rule, sampler, target, drafter, start, k, n_tokens):
    """One speculative generation from `start` until n_tokens are emitted; returns the first n_tokens."""
    hist, out = [start], []
    while len(out) < n_tokens:
        drafts, dists = drafter(hist[-1], k)
        rows = target[[hist[-1]] + drafts]
        n, tok = rule(sampler, rows, drafts, hist, dists)
        new = drafts[:n] + [tok]
        out += new
        hist += new
    return tuple(out[:n_tokens])


def chi_square_p(counts, probs):
    """Pearson's chi-square p-value, cells with expected count < 5 pooled into one; a draw in a cell of
    probability 0 is a failure outright."""
    counts, probs = counts.ravel().astype(np.float64), probs.ravel()
    assert counts[probs == 0].sum() == 0, "emitted a sequence that plain sampling never produces"
    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    obs_c, exp_c = list(counts[big]), list(exp[big])
    if (~big & (probs > 0)).any():
        obs_c.append(counts[~big].sum())
        exp_c.append(exp[~big].sum())
    return float(chisquare(obs_c, exp_c).pvalue)


def sampled_counts(rule, sp, target, drafter, k, n_tokens, n_runs, seed):
    sampler = Sampler(SamplingParams(seed=seed, **{"top_k": 0, "top_p": 1.0, "min_p": 0.0, **sp}))
    counts = np.zeros((target.shape[0],) * n_tokens)
    for _ in range(n_runs):
        counts[run_loop(rule, sampler, target, drafter, 0, k, n_tokens)] += 1
    return counts


def _tables(V, seed, scale=2.0, closeness=None):
    rng = np.random.default_rng(seed)
    target = (rng.normal(size=(V, V)) * scale).astype(np.float32)
    if closeness is None:
        draft = (rng.normal(size=(V, V)) * scale).astype(np.float32)          # unrelated to the target
    else:
        draft = (target + rng.normal(size=(V, V)) * closeness).astype(np.float32)
    return target, draft


# (vocabulary, tokens in the joint, sampling params, draft: mode / closeness / draft sampler params, k,
#  logit scale of the tables: 2 is peaked, 1 flatter where a filter would otherwise leave one path)
CASES = [
    (5, 3, dict(temperature=1.0), ("sampled", 0.3, None), 1, 2.0),
    (5, 3, dict(temperature=0.7), ("sampled", None, None), 2, 2.0),
    (5, 3, dict(temperature=1.3, top_k=3), ("sampled", 0.5, None), 3, 2.0),
    (6, 3, dict(temperature=0.8, top_p=0.8), ("sampled", None, dict(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)), 4, 1.0),
    (6, 3, dict(temperature=1.0, min_p=0.1), ("onehot", 0.3, None), 2, 2.0),
    (5, 3, dict(temperature=0.6, presence_penalty=0.8), ("sampled", 0.4, None), 3, 2.0),
    (12, 2, dict(temperature=0.7, top_k=6, top_p=0.9), ("onehot-explicit", 0.3, None), 4, 2.0),
    (20, 2, dict(temperature=0.5), ("sampled", 1.0, dict(temperature=0.7, top_k=0, top_p=0.95, min_p=0.0)), 1, 2.0),
]
N_RUNS = 6_000


@pytest.mark.parametrize("case", range(len(CASES)))
def test_emitted_tokens_have_the_law_of_plain_sampling(case):
    V, n_tokens, sp, (mode, closeness, dparams), k, scale = CASES[case]
    target, draft = _tables(V, seed=case, scale=scale, closeness=closeness)
    drafter = Drafter(draft, mode, SamplingParams(**dparams) if dparams else None, seed=50 + case)
    counts = sampled_counts(accept_sampled, sp, target, drafter, k, n_tokens, N_RUNS, seed=case)
    want = exact_joint(target, 0, n_tokens, {"top_k": 0, "top_p": 1.0, "min_p": 0.0, **sp})
    np.testing.assert_allclose(want.sum(), 1.0, rtol=1e-9)
    assert np.count_nonzero(want * N_RUNS >= 5) >= 8      # a law with room to be wrong in
    assert chi_square_p(counts, want) > 1e-4


def _accept_always(sampler, rows, drafts, hist, dists):
    return len(drafts), sampler.sample(rows[len(drafts)], hist + drafts)


def _resample_from_p(sampler, rows, drafts, hist, dists):
    """The classic bug: on rejection draw from p instead of the residual max(0, p - q)."""
    h = list(hist)
    for i, d in enumerate(drafts):
        ids, p = sampler.distribution(rows[i], h)
        q_d = 1.0 if dists[i] is None else float(dists[i][1][dists[i][0] == d].sum())
        if sampler.rng.random() >= float(p[ids == d].sum()) / q_d:
            return i, sampler.sample(rows[i], h)
        h.append(d)
    return len(drafts), sampler.sample(rows[len(drafts)], h)


@pytest.mark.parametrize("wrong_rule", [_accept_always, _resample_from_p])
def test_the_chi_square_rejects_wrong_rules(wrong_rule):
    V, n_tokens, sp = 5, 3, dict(temperature=1.0)
    target, draft = _tables(V, seed=0, closeness=None)
    drafter = Drafter(draft, "sampled", seed=1)
    counts = sampled_counts(wrong_rule, sp, target, drafter, 2, n_tokens, N_RUNS, seed=0)
    want = exact_joint(target, 0, n_tokens, {"top_k": 0, "top_p": 1.0, "min_p": 0.0, **sp})
    try:
        p = chi_square_p(counts, want)
    except AssertionError:                  # a sequence plain sampling cannot produce: rejected outright
        return
    assert p < 1e-8


def test_no_drafts_is_plain_sampling_and_explicit_one_hot_is_none():
    rng = np.random.default_rng(3)
    rows = (rng.normal(size=(5, 30)) * 2).astype(np.float32)
    params = SamplingParams(temperature=0.8, seed=11)
    a, b = Sampler(params), Sampler(params)
    for r in rows:
        assert accept_sampled(a, r[None], [], [1, 2]) == (0, b.sample(r, [1, 2]))
    drafts = [int(np.argmax(rows[i])) for i in range(4)]
    a, b = Sampler(params), Sampler(params)
    for _ in range(50):
        onehots = [(np.array([d]), np.ones(1)) for d in drafts]
        assert accept_sampled(a, rows, drafts, [], None) == accept_sampled(b, rows, drafts, [], onehots)


def test_a_draft_the_target_cannot_emit_is_rejected_and_not_emitted():
    # top_k 2 keeps tokens 0 and 1; the draft 3 has p = 0: rejected, next token from p (q one-hot at 3)
    row = np.array([2.0, 1.5, -1.0, 0.0], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    for _ in range(200):
        n, tok = accept_sampled(s, np.stack([row, row]), [3], [])
        assert n == 0 and tok in (0, 1)


def _penalised_argmax(row, hist, rep):
    x = row.astype(np.float64).copy()
    for t in set(hist):
        x[t] = x[t] / rep if x[t] > 0 else x[t] * rep
    return int(np.argmax(x))


@pytest.mark.parametrize("rep", [1.0, 1.5])
def test_greedy_keeps_the_prefix_where_argmax_agrees(rep):
    rng = np.random.default_rng(int(rep * 10))
    s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=rep, penalty_last_n=1000))
    for _ in range(300):
        k = int(rng.integers(0, 5))
        rows = (rng.normal(size=(k + 1, 8)) * 2).astype(np.float32)
        hist = rng.integers(0, 8, size=int(rng.integers(0, 5))).tolist()
        # drafts: the penalised argmax, corrupted at a random position (or not at all)
        drafts, h, wrong_at = [], list(hist), int(rng.integers(0, k + 2))
        for i in range(k):
            d = _penalised_argmax(rows[i], h, rep)
            if i == wrong_at:
                d = (d + 1 + int(rng.integers(0, 7))) % 8
            drafts.append(d)
            h.append(d)
        want_n = min(wrong_at, k)
        want_next = _penalised_argmax(rows[want_n], hist + drafts[:want_n], rep)
        assert accept_greedy(s, rows, drafts, hist) == (want_n, want_next)
        assert accept(s, rows, drafts, hist) == (want_n, want_next)


def test_greedy_speculative_loop_equals_plain_greedy_decoding():
    """Whole loop on the chain model with a prompt-lookup drafter: identical tokens to argmax decoding."""
    from pyqwen.speculative import LookupDrafter

    V = 7
    target, _ = _tables(V, seed=9)
    target = np.round(target)               # ties in the rows: the argmax convention must agree too
    plain, last = [], 0
    for _ in range(60):
        last = int(np.argmax(target[last]))
        plain.append(last)
    s = Sampler(SamplingParams(temperature=0.0))
    look = LookupDrafter(min_n=1, max_n=3)
    look.extend([0])
    hist, accepted = [0], 0
    while len(hist) < 61:
        drafts = look.draft(4)
        n, tok = accept(s, target[[hist[-1]] + drafts], drafts, hist)
        accepted += n
        look.extend(drafts[:n] + [tok])
        hist += drafts[:n] + [tok]
    assert hist[1:61] == plain
    assert accepted > 20                    # the chain cycles: lookup drafts were really used


def test_bad_input_is_a_clear_error():
    row = np.zeros((2, 4), np.float32)
    g, t = Sampler(SamplingParams(temperature=0.0)), Sampler(SamplingParams(temperature=1.0))
    with pytest.raises(ValueError, match="k \\+ 1"):
        accept(g, row, [1, 2], [])
    with pytest.raises(ValueError, match="draft ids"):
        accept(t, row, [9], [])
    with pytest.raises(ValueError, match="greedy sampler"):
        accept_greedy(t, row, [1], [])
    with pytest.raises(ValueError, match="probability 0"):
        accept_sampled(t, row, [1], [], [(np.array([2]), np.ones(1))])
    with pytest.raises(ValueError, match="ids must be in"):
        accept_sampled(t, row, [1], [], [(np.array([1, 4]), np.array([0.5, 0.5]))])
    with pytest.raises(ValueError, match="distributions"):
        accept_sampled(t, row, [1], [], [None, None])
