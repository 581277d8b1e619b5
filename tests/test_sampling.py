"""The host sampler's partial selection against a full-sort reference written here.

pyqwen.sampling.Sampler never sorts the whole vocabulary for top-p / min-p: it sorts a growing top
slice. The tokens it draws must be exactly those of the straightforward formulation below (sort the
whole row by descending logit, ties by index; normalise; cut at cumulative top_p; keep p >= min_p *
p_max; temperature; rng.choice) for the same RNG state -- including rows full of ties.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyqwen.sampling import Sampler, SamplingParams, kept_candidates, sorted_prefix


def reference_sample(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """Full sort of the candidates; top-k -> top-p -> min-p -> temperature -> draw."""
    logits = np.asarray(logits, dtype=np.float32)
    if p.temperature < 1e-5:
        return int(np.argmax(logits))
    n = logits.shape[0]
    if 0 < p.top_k < n:
        idx = np.argpartition(-logits, p.top_k - 1)[:p.top_k]
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
    w = np.exp((cand - cand[0]) / p.temperature)
    w /= w.sum()
    return int(idx[rng.choice(len(idx), p=w)])


def _rows(rng: np.random.Generator):
    """Random rows of several widths and shapes, many with ties."""
    for n in (1, 2, 3, 7, 64, 65, 300, 5000):
        yield rng.normal(size=n).astype(np.float32) * 2
        yield np.round(rng.normal(size=n) * 2).astype(np.float32)          # integer logits: many ties
        yield np.round(rng.normal(size=n) * 8).astype(np.float32) / 4      # quarter steps
        r = rng.normal(size=n).astype(np.float32)
        r[rng.integers(0, n, size=max(1, n // 10))] = r.max()              # a tied maximum
        yield r
        yield np.zeros(n, np.float32)                                      # all tied
        peaked = (rng.normal(size=n) * 3).astype(np.float32)               # a model-like row
        peaked[rng.integers(0, n, size=3)] += 15
        yield peaked


PARAM_SETS = [
    dict(top_k=0, top_p=0.95, min_p=0.05), dict(top_k=0, top_p=0.5, min_p=0.0), dict(top_k=0, top_p=0.9, min_p=0.0),
    dict(top_k=0, top_p=1.0, min_p=0.1), dict(top_k=0, top_p=1.0, min_p=1.0), dict(top_k=0, top_p=1.0, min_p=0.0),
    dict(top_k=40, top_p=0.95, min_p=0.05), dict(top_k=3, top_p=0.8, min_p=0.0), dict(top_k=1, top_p=1.0, min_p=0.0),
    dict(top_k=0, top_p=0.999, min_p=0.0), dict(top_k=0, top_p=0.25, min_p=0.0), dict(top_k=0, top_p=0.6, min_p=0.3),
    dict(top_k=10_000, top_p=0.9, min_p=0.01),
]


@pytest.mark.parametrize("temperature", [0.0, 0.3, 0.8, 1.7])
@pytest.mark.parametrize("pset", range(len(PARAM_SETS)))
def test_same_tokens_as_the_full_sort(temperature, pset):
    rng = np.random.default_rng(1000 + pset)
    rows = list(_rows(rng))
    for seed in (0, 1, 12345):
        params = SamplingParams(temperature=temperature, seed=seed, **PARAM_SETS[pset])
        ours = Sampler(params)
        ref_rng = np.random.default_rng(seed)
        got = [ours.sample(r) for r in rows for _ in range(3)]
        want = [reference_sample(r, params, ref_rng) for r in rows for _ in range(3)]
        assert got == want


def test_same_tokens_at_full_vocabulary_size():
    rng = np.random.default_rng(7)
    n = 248_320
    rows = [(rng.normal(size=n) * 3).astype(np.float32) for _ in range(3)]
    rows.append(np.round(rows[0]))  # ties everywhere
    for pset in PARAM_SETS:
        params = SamplingParams(temperature=0.8, seed=3, **pset)
        ours, ref_rng = Sampler(params), np.random.default_rng(3)
        assert [ours.sample(r) for r in rows] == [reference_sample(r, params, ref_rng) for r in rows], pset


def test_kept_sets_by_hand():
    # e^(x - 2) = [1, .3679, .3679, .1353, .0498]; sum 1.9209 -> p = [.5206, .1915, .1915, .0705, .0259]
    # cumulative [.5206, .7121, .9036, .9741, 1.0]; ties (1, 2) in index order.
    x = np.array([2.0, 1.0, 1.0, 0.0, -1.0], np.float32)
    assert kept_candidates(x, 0.5, 0.0).tolist() == [0]
    assert kept_candidates(x, 0.6, 0.0).tolist() == [0, 1]
    assert kept_candidates(x, 0.75, 0.0).tolist() == [0, 1, 2]
    assert kept_candidates(x, 0.95, 0.0).tolist() == [0, 1, 2, 3]
    assert kept_candidates(x, 0.99, 0.0).tolist() == [0, 1, 2, 3, 4]
    assert kept_candidates(x, 1.0, 0.3).tolist() == [0, 1, 2]        # p_i / p_0 = [1, .37, .37, .14, .05]
    assert kept_candidates(x, 1.0, 0.4).tolist() == [0]
    assert kept_candidates(x, 1.0, 0.1).tolist() == [0, 1, 2, 3]
    assert kept_candidates(x, 0.6, 0.1).tolist() == [0, 1]           # top-p first, then min-p
    # a tie on the maximum: both kept, lower index first
    y = np.array([0.0, 3.0, -5.0, 3.0], np.float32)                   # p = [.0243, .4877, .0002, .4877]
    assert kept_candidates(y, 0.4, 0.0).tolist() == [1]
    assert kept_candidates(y, 0.9, 0.0).tolist() == [1, 3]
    assert kept_candidates(y, 0.99, 0.0).tolist() == [1, 3, 0]
    assert kept_candidates(y, 1.0, 0.01).tolist() == [1, 3, 0]       # e^-3 = .0498 >= .01 > e^-8
    # uniform row: cumulative 0.25, 0.5, ... -- top_p = 0.5 sits exactly on a boundary
    u = np.zeros(4, np.float32)
    assert kept_candidates(u, 0.5, 0.0).tolist() == [0, 1]
    assert kept_candidates(u, 0.51, 0.0).tolist() == [0, 1, 2]
    assert kept_candidates(u, 1.0, 1.0).tolist() == [0, 1, 2, 3]


def test_sorted_prefix_is_a_prefix_of_the_stable_sort():
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(1, 400))
        x = np.round(rng.normal(size=n) * 3).astype(np.float32)
        full = np.argsort(-x, kind="stable")
        for m in (1, 2, n // 2 + 1, n):
            got = sorted_prefix(x, m)
            assert len(got) >= m and got.tolist() == full[:len(got)].tolist()
            assert len(got) == n or x[got[-1]] > x[full[len(got)]]   # ties are never split


def test_no_full_sort_of_the_vocabulary(monkeypatch):
    n = 248_320
    rng = np.random.default_rng(11)
    row = (rng.normal(size=n) * 3).astype(np.float32)
    sizes = []
    real = np.argsort

    def spy(a, *args, **kw):
        sizes.append(np.asarray(a).size)
        return real(a, *args, **kw)

    monkeypatch.setattr(np, "argsort", spy)
    for pset in (dict(top_k=0, top_p=0.95, min_p=0.05), dict(top_k=40, top_p=0.95, min_p=0.05),
                 dict(top_k=0, top_p=0.5, min_p=0.0), dict(top_k=0, top_p=1.0, min_p=0.02)):
        sizes.clear()
        Sampler(SamplingParams(temperature=0.8, seed=0, **pset)).sample(row)
        assert sizes and max(sizes) < n // 10, (pset, sizes)


def test_device_params_only_for_plain_sampling():
    assert Sampler(SamplingParams(temperature=0.7)).device_params is not None
    assert Sampler(SamplingParams(temperature=0.0)).device_params is not None
    assert Sampler(SamplingParams(repetition_penalty=1.1)).device_params is None
    assert Sampler(SamplingParams(presence_penalty=0.5)).device_params is None

    class Custom(Sampler):
        def sample(self, logits, history=None):
            return 0

    assert Custom(SamplingParams()).device_params is None


# ---- independent references: hand-computed distributions, transformers' logits processors ------------
#
# The tests above compare the fast selection with a full-sort formulation of the same chain; they cannot
# see a sampler that gets the chain itself wrong (temperature ignored, a penalty inverted). The tests below
# take their expectations from elsewhere: softmax written out by hand, transformers' processors, and the
# observed frequencies of many draws.

def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


def _chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of Pearson's chi-square test that `counts` were drawn from `probs` (zero-probability cells
    must have no draws at all: that is asserted, not tested)."""
    from scipy.stats import chisquare

    counts = np.asarray(counts, np.float64)
    assert counts[probs == 0].sum() == 0, f"drew tokens the filters remove: {np.flatnonzero((probs == 0) & (counts > 0))}"
    live = probs > 0
    if live.sum() == 1:
        return 1.0
    return float(chisquare(counts[live], probs[live] * counts.sum()).pvalue)


ROW = np.array([1.5, 0.2, -0.4, 2.0, 0.9, -1.3, 0.0, 1.1], np.float32)


def _expected(row, temperature, keep):
    """softmax(row / T) renormalised over the indices in `keep` (a hand-made kept set)."""
    p = np.zeros(len(row))
    k = np.asarray(sorted(keep))
    p[k] = _softmax(np.asarray(row, np.float64)[k] / temperature)
    return p


# Kept sets by hand for ROW (sorted: 3:2.0, 0:1.5, 7:1.1, 4:0.9, 1:0.2, 6:0.0, 2:-0.4, 5:-1.3).
# softmax(ROW) = [.2186, .0596, .0327, .3605, .1200, .0133, .0488, .1466] (index order);
# descending cumulative .360, .579, .726, .846, .905, .954, .987, 1.0; p_i / p_max: 1, .607, .407, .333, .165, ...
# top-k 5 then top-p .8: the five renormalised (sum .905) have cumulative .398, .640, .802 -> three kept.
HAND_CASES = [
    (dict(top_k=0, top_p=1.0, min_p=0.0), range(8)),
    (dict(top_k=3, top_p=1.0, min_p=0.0), [3, 0, 7]),
    (dict(top_k=0, top_p=0.7, min_p=0.0), [3, 0, 7]),
    (dict(top_k=0, top_p=0.9, min_p=0.0), [3, 0, 7, 4, 1]),
    (dict(top_k=0, top_p=1.0, min_p=0.3), [3, 0, 7, 4]),
    (dict(top_k=0, top_p=1.0, min_p=0.6), [3, 0]),
    (dict(top_k=5, top_p=0.8, min_p=0.2), [3, 0, 7]),
]


def test_hand_computed_softmax_of_the_fixed_row():
    # guards the comments above: the kept sets below were read off these numbers
    np.testing.assert_allclose(_softmax(ROW), [.2186, .0596, .0327, .3605, .1200, .0133, .0488, .1466], atol=6e-5)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("case", range(len(HAND_CASES)))
def test_draw_frequencies_chi_square(temperature, case):
    """20,000 draws match softmax(logits / T) over the hand-computed kept set (chi-square, p > 1e-4: with
    a fixed seed the test is deterministic; a sampler that ignores T, or keeps the wrong set, scores
    p < 1e-20 here)."""
    pset, keep = HAND_CASES[case]
    s = Sampler(SamplingParams(temperature=temperature, seed=100 + case, **pset))
    n = 20_000
    counts = np.bincount([s.sample(ROW) for _ in range(n)], minlength=len(ROW))
    probs = _expected(ROW, temperature, keep)
    assert _chi_square_p(counts, probs) > 1e-4, (counts.tolist(), (probs * n).round(1).tolist())


def test_chi_square_sees_a_wrong_temperature():
    """The frequency test has the power the tests above rely on: draws at T=1 are rejected as T=0.3."""
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    counts = np.bincount([s.sample(ROW) for _ in range(20_000)], minlength=len(ROW))
    assert _chi_square_p(counts, _expected(ROW, 0.3, range(8))) < 1e-20


def test_greedy_is_argmax_whatever_the_filters():
    rng = np.random.default_rng(3)
    for _ in range(50):
        row = rng.normal(size=300).astype(np.float32)
        for pset in (dict(top_k=1), dict(top_k=0, top_p=0.1), dict(top_k=0, min_p=0.9)):
            assert Sampler(SamplingParams(temperature=0.0, **pset)).sample(row) == int(row.argmax())


def _torch_rows(rng, n_rows=40, n=500):
    rows = []
    for i in range(n_rows):
        r = (rng.normal(size=n) * (1 + i % 4)).astype(np.float32)
        r[rng.integers(0, n, size=3)] += 6
        rows.append(r)
    return rows


@pytest.mark.parametrize("pset", [dict(top_k=20, top_p=1.0, min_p=0.0), dict(top_k=0, top_p=0.9, min_p=0.0),
                                  dict(top_k=0, top_p=0.5, min_p=0.0), dict(top_k=0, top_p=1.0, min_p=0.05),
                                  dict(top_k=0, top_p=1.0, min_p=0.3)])
def test_kept_sets_match_transformers_warpers(pset):
    """At T = 1 our kept set equals what transformers' TopK/TopP/MinP warpers leave finite."""
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    warpers = []
    if pset["top_k"]:
        warpers.append(lp.TopKLogitsWarper(pset["top_k"]))
    if pset["top_p"] < 1.0:
        warpers.append(lp.TopPLogitsWarper(pset["top_p"]))
    if pset["min_p"] > 0.0:
        warpers.append(lp.MinPLogitsWarper(pset["min_p"]))
    rng = np.random.default_rng(21)
    for row in _torch_rows(rng):
        scores = torch.from_numpy(row.astype(np.float64))[None]
        for w in warpers:
            scores = w(None, scores)
        want = set(np.flatnonzero(np.isfinite(scores[0].numpy())).tolist())
        if pset["top_k"]:
            got = set(np.argsort(-row, kind="stable")[:pset["top_k"]].tolist())
        else:
            got = set(kept_candidates(row, pset["top_p"], pset["min_p"]).tolist())
        assert got == want


HISTORIES = [[5, 5, 9, 0, 499, 17], [1], list(range(0, 500, 7)) + [3, 3, 3], [42] * 10]


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
@pytest.mark.parametrize("hist", range(len(HISTORIES)))
def test_repetition_penalty_matches_transformers(penalty, hist):
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(hist)
    row = (rng.normal(size=500) * 3).astype(np.float32)
    history = HISTORIES[hist]
    s = Sampler(SamplingParams(repetition_penalty=penalty, penalty_last_n=1000))
    got = s.apply_penalties(row, history)
    want = lp.RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([history]), torch.from_numpy(row.copy())[None])
    np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-6, atol=0)
    assert not np.array_equal(got, row)  # the penalty did something


def test_repetition_penalty_window_matches_transformers_on_the_window():
    """penalty_last_n: only the last n tokens count -- transformers' processor fed just those tokens."""
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(8)
    row = (rng.normal(size=300) * 3).astype(np.float32)
    history = rng.integers(0, 300, size=200).tolist()
    for last_n in (1, 5, 64):
        got = Sampler(SamplingParams(repetition_penalty=1.5, penalty_last_n=last_n)).apply_penalties(row, history)
        want = lp.RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([history[-last_n:]]), torch.from_numpy(row.copy())[None])
        np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-6, atol=0)


def test_presence_penalty_by_hand():
    """OpenAI's presence penalty: subtract the penalty once from every token that occurred (whatever the
    count), over the whole history."""
    row = np.array([1.0, -2.0, 3.0, 0.5, 0.0], np.float32)
    s = Sampler(SamplingParams(presence_penalty=0.75, penalty_last_n=1))
    got = s.apply_penalties(row, [2, 2, 2, 0, 4])
    np.testing.assert_allclose(got, [0.25, -2.0, 2.25, 0.5, -0.75])
    np.testing.assert_array_equal(row, [1.0, -2.0, 3.0, 0.5, 0.0])  # the caller's logits are not modified


def test_penalties_reach_the_draw():
    """With a repetition penalty the token drawn greedily is the penalised argmax (the penalty is applied
    before selection, not only computed)."""
    row = np.array([3.0, 2.9, 0.0], np.float32)
    assert Sampler(SamplingParams(temperature=0.0)).sample(row, [0]) == 0
    assert Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.2)).sample(row, [0]) == 1   # 3/1.2 = 2.5
    assert Sampler(SamplingParams(temperature=0.0, presence_penalty=0.5)).sample(row, [0]) == 1


# ---- Sampler.distribution: the law `sample` draws from (speculative decoding's acceptance needs it) ----

@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("case", range(len(HAND_CASES)))
def test_distribution_is_the_hand_computed_law(temperature, case):
    pset, keep = HAND_CASES[case]
    ids, probs = Sampler(SamplingParams(temperature=temperature, **pset)).distribution(ROW)
    assert ids.dtype == np.int64 and probs.dtype == np.float64
    assert sorted(ids.tolist()) == sorted(keep)
    dense = np.zeros(len(ROW))
    dense[ids] = probs
    np.testing.assert_allclose(dense, _expected(ROW, temperature, keep), rtol=1e-12, atol=1e-15)


def test_distribution_greedy_and_penalised():
    row = np.array([3.0, 2.9, 0.0], np.float32)
    ids, probs = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.2)).distribution(row, [0])
    assert ids.tolist() == [1] and probs.tolist() == [1.0]                  # 3/1.2 = 2.5 < 2.9
    # presence penalty 0.5 on token 0: softmax([2.5, 2.9, 0.0]) by hand at T = 1
    ids, probs = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                        presence_penalty=0.5)).distribution(row, [0])
    e = np.exp(np.array([2.5, 2.9, 0.0]) - 2.9)
    dense = np.zeros(3)
    dense[ids] = probs
    np.testing.assert_allclose(dense, e / e.sum(), rtol=1e-6)


def test_sample_draws_from_distribution_with_the_same_rng():
    rng = np.random.default_rng(4)
    rows = [(rng.normal(size=n) * 2).astype(np.float32) for n in (3, 40, 700)]
    params = SamplingParams(temperature=0.9, top_k=30, top_p=0.9, min_p=0.02, seed=8)
    s, mirror = Sampler(params), np.random.default_rng(8)
    for r in rows * 20:
        ids, probs = s.distribution(r)
        assert s.sample(r) == int(ids[mirror.choice(len(ids), p=probs)])
