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
