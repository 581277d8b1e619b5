"""The F16 cache's flash-style attention (csrc/simd/attn_flash.h) at the 27B's attention shape (24/4 heads
x 256) over long prefixes, against a float64 numpy reference and against attention_head (the spec), on
every SIMD kernel set this CPU has; and its batch invariance there: a query row gives the same bits alone,
in a verification-sized batch and in a prefill block, whatever other rows share its register block (the
4-key score reduction and the vectorised softmax step must not depend on them)."""

from __future__ import annotations

import numpy as np
import pytest

from pyqwen import _core

H, HKV, D = 24, 4, 256


def _sets():
    """The kernel sets to run: every one set_simd accepts here except the reference (no flash path)."""
    before = _core.simd_backend()
    out = []
    try:
        for name in ("avx2", "avx512"):
            if _core.set_simd(name):
                out.append(name)
    finally:
        _core.set_simd(before)
    return out


def _attention_f64(q, K, V, pos0):
    """Causal GQA softmax attention in float64 over float caches [m, Hkv, D]."""
    n = q.shape[0]
    group = H // HKV
    o = np.zeros((n, H, D))
    for t in range(n):
        keys = pos0 + t + 1
        for h in range(H):
            g = h // group
            s = K[:keys, g].astype(np.float64) @ q[t, h].astype(np.float64) / np.sqrt(D)
            p = np.exp(s - s.max())
            o[t, h] = (p / p.sum()) @ V[:keys, g].astype(np.float64)
    return o


def _cache(rng, m, scale=1.0):
    return (rng.standard_normal((m, HKV * D)) * scale).astype(np.float16)


@pytest.mark.parametrize("simd", _sets() or [pytest.param("none", marks=pytest.mark.skip("no SIMD kernel set"))])
@pytest.mark.parametrize("pos0,n,qscale", [(0, 37, 1.0), (1000, 19, 1.0), (1021, 5, 4.0)])
def test_flash_matches_float64_and_attention_head(simd, pos0, n, qscale):
    """Prefixes from 1 key to ~1040 keys (tile edges every 32 keys inside each batch); qscale 4 gives peaked
    softmaxes (the running max moves late, the rescaling matters)."""
    rng = np.random.default_rng(pos0 + n)
    q = (rng.standard_normal((n, H, D)) * qscale).astype(np.float32)
    k, v = _cache(rng, pos0 + n), _cache(rng, pos0 + n)
    before = _core.simd_backend()
    try:
        assert _core.set_simd(simd)
        got = _core.testing.ref_attention_kv(q, k.view(np.uint8), "f16", v.view(np.uint8), "f16", HKV, pos0, True)
        spec = _core.testing.ref_attention_kv(q, k.view(np.uint8), "f16", v.view(np.uint8), "f16", HKV, pos0, False)
    finally:
        _core.set_simd(before)
    exact = _attention_f64(q, k.astype(np.float32).reshape(-1, HKV, D), v.astype(np.float32).reshape(-1, HKV, D), pos0)
    # float32 scores round by ~eps |q| |k| / sqrt(D) (~1e-6 per unit of qscale), the weights by as much
    # relative, over |V| ~ 1 values; sums of up to ~1000 terms add a few 1e-7
    bound = 2e-6 * qscale
    assert float(np.abs(got - exact).max()) < bound
    assert float(np.abs(got - spec).max()) < 2 * bound  # both round
    # the bound can fail: a wrong mask (one key too many) moves rows by far more
    wrong = _attention_f64(q[-1:], k.astype(np.float32).reshape(-1, HKV, D)[1:],
                           v.astype(np.float32).reshape(-1, HKV, D)[1:], pos0 + n - 2)
    assert float(np.abs(got[-1:] - wrong).max()) > 1e-3


@pytest.mark.parametrize("simd", _sets() or [pytest.param("none", marks=pytest.mark.skip("no SIMD kernel set"))])
def test_flash_rows_are_batch_invariant_at_long_context(simd):
    """Rows at positions 700..722 (the tile edge at 704 and 736 inside): each alone (a decode step), in
    verification-sized pieces and in the whole block give the same bits."""
    rng = np.random.default_rng(7)
    pos0, n = 700, 23
    q = rng.standard_normal((n, H, D)).astype(np.float32)
    k, v = _cache(rng, pos0 + n).view(np.uint8), _cache(rng, pos0 + n).view(np.uint8)
    before = _core.simd_backend()
    try:
        assert _core.set_simd(simd)
        whole = _core.testing.ref_attention_kv(q, k, "f16", v, "f16", HKV, pos0, True)
        for i in range(n):
            alone = _core.testing.ref_attention_kv(q[i:i + 1], k, "f16", v, "f16", HKV, pos0 + i, True)
            assert np.array_equal(alone[0], whole[i]), i
        for i0, i1 in ((0, 16), (3, 4), (5, 21), (16, 23)):
            part = _core.testing.ref_attention_kv(q[i0:i1], k, "f16", v, "f16", HKV, pos0 + i0, True)
            assert np.array_equal(part, whole[i0:i1]), (i0, i1)
    finally:
        _core.set_simd(before)
