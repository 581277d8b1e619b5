"""First CUDA kernels (cuda/kernels/) against numpy references, run by the CPU emulator and, when a GPU
is present, by pyqwen._cuda (the `ops` fixture).

The references are written here in numpy for now; once pyqwen._core exposes the C++ reference ops
(ref_*), these tests should compare against those instead.
"""

from __future__ import annotations

import numpy as np
import pytest

Q8_1 = np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", (32,))])
assert Q8_1.itemsize == 36


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---- RMSNorm ----------------------------------------------------------------------------------------------
def rms_norm_ref(x, w, eps):
    x64 = x.astype(np.float64)
    y = x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    return y * w if w is not None else y


@pytest.mark.parametrize("rows,ncols", [(1, 1), (1, 5120), (3, 257), (7, 1000), (2, 33), (5, 4113), (4, 256)])
def test_rms_norm(ops, rows, ncols):
    rng = _rng(rows * 7919 + ncols)
    x = rng.normal(0, 2, (rows, ncols)).astype(np.float32)
    w = rng.normal(1, 0.2, ncols).astype(np.float32)
    np.testing.assert_allclose(ops.rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ops.rms_norm(x, None, 1e-6), rms_norm_ref(x, None, 1e-6), rtol=2e-5, atol=1e-6)


def test_rms_norm_strided_rows(ops):
    """Per-head norms run on views: the first 128 of every 160 values."""
    x = _rng(1).normal(0, 1, (9, 160)).astype(np.float32)
    w = _rng(2).normal(1, 0.1, 128).astype(np.float32)
    got = ops.rms_norm(x, w, 1e-5, ncols=128)
    np.testing.assert_allclose(got, rms_norm_ref(x[:, :128], w, 1e-5), rtol=2e-5, atol=1e-6)


def test_rms_norm_zero_row(ops):
    x = np.zeros((2, 3000), np.float32)
    np.testing.assert_array_equal(ops.rms_norm(x, None, 1e-6), x)


# ---- Q8_1 activation quantization ---------------------------------------------------------------------------
def quantize_q8_1_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_1_ref in float32 arithmetic; a partial last block is padded with zeros."""
    rows, n = x.shape
    nb = (n + 31) // 32
    xb = np.zeros((rows, nb * 32), np.float32)
    xb[:, :n] = x
    xb = xb.reshape(rows, nb, 32)
    amax = np.abs(xb).max(axis=-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (xb * inv[..., None]).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)).astype(np.int8)  # roundf: ties away from 0
    out = np.zeros((rows, nb), Q8_1)
    with np.errstate(over="ignore"):  # huge inputs overflow the fp16 scale to inf, as in ggml
        out["d"] = d.astype(np.float16)
        out["s"] = (q.astype(np.int32).sum(-1).astype(np.float32) * d).astype(np.float16)
    out["qs"] = q
    return out


@pytest.mark.parametrize("rows,ncols", [(1, 32), (3, 224), (2, 5120), (5, 100), (1, 1), (7, 33), (1, 17408)])
def test_quantize_q8_1_bit_exact(ops, rows, ncols):
    rng = _rng(rows * 31 + ncols)
    x = (rng.normal(0, 1, (rows, ncols)) * rng.choice([1e-3, 1.0, 40.0], (rows, 1))).astype(np.float32)
    got = ops.quantize_q8_1(x).view(Q8_1).reshape(rows, -1)
    exp = quantize_q8_1_ref(x)
    for field in ("d", "s", "qs"):
        np.testing.assert_array_equal(got[field], exp[field], err_msg=field)


def test_quantize_q8_1_zero_and_halfway_blocks(ops):
    x = np.zeros((3, 64), np.float32)
    # amax = 127 makes d = 1 exactly, so x * (1/d) keeps the .5 ties: roundf sends them away from zero
    # (2.5 -> 3, -2.5 -> -3), where numpy's rint would give 2 and -2.
    x[1, :32] = np.arange(32) - 15.5
    x[1, 0] = 127.0
    x[1, 32:] = -(np.arange(32) + 0.5)
    x[1, 63] = -127.0
    x[2, :] = 1e30  # d overflows fp16 to inf, as in ggml
    got = ops.quantize_q8_1(x).view(Q8_1).reshape(3, -1)
    exp = quantize_q8_1_ref(x)
    assert exp[1, 0]["qs"][3] == -13  # -12.5 rounded away from zero (rint would give -12)
    for field in ("d", "s", "qs"):
        np.testing.assert_array_equal(got[field], exp[field], err_msg=field)
    assert (got[0]["qs"] == 0).all() and (got[0]["d"] == 0).all()


def test_quantize_q8_1_strided_rows(ops):
    x = _rng(3).normal(0, 1, (4, 100)).astype(np.float32)
    got = ops.quantize_q8_1(x, ncols=70).view(Q8_1).reshape(4, -1)
    exp = quantize_q8_1_ref(x[:, :70])
    for field in ("d", "s", "qs"):
        np.testing.assert_array_equal(got[field], exp[field], err_msg=field)


# ---- SwiGLU and residual add --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (1, 1), (3, 257), (2, 17408), (9, 300)])
def test_swiglu(ops, shape):
    rng = _rng(sum(shape))
    g = rng.normal(0, 4, shape).astype(np.float32)
    u = rng.normal(0, 1, shape).astype(np.float32)
    g64 = g.astype(np.float64)
    ref = (g64 / (1 + np.exp(-g64)) * u).reshape(-1, shape[-1])
    np.testing.assert_allclose(ops.swiglu(g, u), ref, rtol=2e-6, atol=1e-7)


def test_swiglu_extremes(ops):
    g = np.array([[-1e4, -100.0, -0.0, 0.0, 100.0, 1e4, 88.0, -88.0]], np.float32)
    u = np.ones_like(g)
    got = ops.swiglu(g, u)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0, 4:6], [100.0, 1e4], rtol=1e-6)
    assert (np.abs(got[0, :4]) < 1e-30).all()


@pytest.mark.parametrize("n", [1, 31, 1000, 5120, 1_000_003])
@pytest.mark.parametrize("in_place", [False, True])
def test_add(ops, n, in_place):
    rng = _rng(n)
    a = rng.normal(0, 1, n).astype(np.float32)
    b = rng.normal(0, 1, n).astype(np.float32)
    np.testing.assert_array_equal(ops.add(a, b, in_place=in_place), a + b)


# ---- argmax -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,n", [(1, 1), (1, 31), (3, 1000), (2, 2049), (1, 248320), (4, 151936)])
def test_argmax(ops, rows, n):
    x = _rng(n).normal(0, 3, (rows, n)).astype(np.float32)
    np.testing.assert_array_equal(ops.argmax(x), np.argmax(x, axis=1))


def test_argmax_ties_and_specials(ops):
    n = 100_000
    x = np.full((5, n), -np.inf, np.float32)
    x[0, [70_000, 5, 99_999]] = 7.0  # ties: smallest index wins
    x[1, :] = 1.0  # all equal: 0
    x[2, 123] = np.nan  # NaNs are ignored; all -inf otherwise: index 0
    x[3, :] = np.nan  # nothing but NaN: -1
    x[3, 50_000] = np.nan
    x[4, 17] = -1e30
    x[4, 40_000] = np.nan
    np.testing.assert_array_equal(ops.argmax(x), [5, 0, 0, -1, 17])


# ---- the cuBLAS door ----------------------------------------------------------------------------------------
def test_gemm_f16(ops):
    rng = _rng(17)
    w = rng.normal(0, 1, (37, 300)).astype(np.float16)
    x = rng.normal(0, 1, (5, 300)).astype(np.float16)
    try:
        got = ops.gemm_f16(w, x)
    except RuntimeError as e:
        if "not supported" in str(e):
            pytest.skip("built without cuBLAS")
        raise
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_emulated_module_has_no_leaks(emu_ops):
    emu_ops.testing.argmax(np.ones((2, 5000), np.float32))
    emu_ops.testing.rms_norm(np.ones((2, 5000), np.float32), np.ones(5000, np.float32))
    assert emu_ops.live_allocations() == 0
