"""The AVX-512 gated delta rule (csrc/simd/gdn_avx512.cpp: each state row in registers for a token step)
against the AVX2 kernel, bit for bit (it is built to give the same floats), against the reference kernel
and float64 numpy within a bound, and batch invariant (n tokens in one call = n one-token calls, bit for
bit), on head sizes with a register path (dk a multiple of 16 up to 128) and without one (AVX2 fallback)."""

from __future__ import annotations

import numpy as np
import pytest

from pyqwen import _core


def _has(name):
    before = _core.simd_backend()
    try:
        return bool(_core.set_simd(name))
    finally:
        _core.set_simd(before)


pytestmark = pytest.mark.skipif(not (_has("avx2") and _has("avx512")), reason="needs AVX2 and AVX-512 kernel sets")


def delta_rule_inputs(rng, n, dk, dv):
    """One head's delta-rule arguments as the model feeds them (q, k unit rows; g < 0; beta in [0, 1])
    (also used by test_forward.py's reference check of the AVX2 kernel)."""
    q = rng.standard_normal((n, dk)).astype(np.float32)
    k = rng.standard_normal((n, dk)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    v = rng.standard_normal((n, dv)).astype(np.float32)
    g = -rng.uniform(0, 2, n).astype(np.float32)
    beta = rng.uniform(0, 1, n).astype(np.float32)
    S = rng.standard_normal((dv, dk)).astype(np.float32)
    return q, k, v, g, beta, S


def _run(level, q, k, v, g, beta, S):
    before = _core.simd_backend()
    try:
        assert _core.set_simd(level)
        return _core.testing.ref_delta_rule(q, k, v, g, beta, S, q.shape[1] ** -0.5)
    finally:
        _core.set_simd(before)


def _f64(q, k, v, g, beta, S):
    """delta_rule_head in float64 (state [dv][dk])."""
    S = S.astype(np.float64).copy()
    qs = q.astype(np.float64) * q.shape[1] ** -0.5
    o = np.zeros((q.shape[0], v.shape[1]))
    for t in range(q.shape[0]):
        S *= np.exp(np.float64(g[t]))
        u = S @ k[t]
        S += np.outer(beta[t] * (v[t] - u), k[t])
        o[t] = S @ qs[t]
    return o, S


@pytest.mark.parametrize("n,dk,dv", [(1, 128, 128), (2, 128, 128), (17, 128, 128), (33, 128, 96), (5, 16, 3),
                                     (9, 48, 40), (4, 112, 7), (3, 72, 40), (6, 144, 8), (2, 8, 5)])
def test_avx512_delta_rule_equals_avx2_bit_for_bit(n, dk, dv):
    rng = np.random.default_rng(n * 1000 + dk + dv)
    a = delta_rule_inputs(rng, n, dk, dv)
    o512, s512 = _run("avx512", *a)
    o2, s2 = _run("avx2", *a)
    assert np.array_equal(o512, o2) and np.array_equal(s512, s2)
    o_ref, s_ref = _run("ref", *a)
    o64, s64 = _f64(*a)
    for got, want, exact in ((o512, o_ref, o64), (s512, s_ref, s64)):
        scale = np.abs(exact).max()
        assert float(np.abs(got - exact).max()) < 2e-5 * scale
        assert float(np.abs(got - want).max()) < 4e-5 * scale


@pytest.mark.parametrize("dk", [128, 64, 72])
def test_avx512_delta_rule_is_batch_invariant(dk):
    """n tokens in one call give the bits of n one-token calls (decode steps) and of other splits."""
    rng = np.random.default_rng(dk)
    n, dv = 19, 32
    q, k, v, g, beta, S = delta_rule_inputs(rng, n, dk, dv)
    o_all, s_all = _run("avx512", q, k, v, g, beta, S)
    for cuts in ([1] * n, [16, 3], [5, 9, 5]):
        st, outs, t0 = S, [], 0
        for c in cuts:
            o, st = _run("avx512", q[t0:t0 + c], k[t0:t0 + c], v[t0:t0 + c], g[t0:t0 + c], beta[t0:t0 + c], st)
            outs.append(o)
            t0 += c
        assert np.array_equal(np.concatenate(outs), o_all) and np.array_equal(st, s_all), cuts
