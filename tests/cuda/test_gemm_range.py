"""The prefill matmul (n_tok > 16, fp16 GEMM) with activations beyond the fp16 range (issue 10, bug 3).

ffn_down's input silu(g) * u reaches 1e4-1e5 in Qwen-family models; fp16 ends at 65504. The launcher scales
each activation row whose max |x| reaches 2^15 by a power of two before the fp16 conversion and scales
the product row back (cuda/kernels/gemm.cuh). Checked against float64 numpy on the dequantized weights:
the only errors are the two fp16 roundings (2^-11 relative each, so 2^-10 of sum |w x|, plus 2^-25 per
term for subnormals) and the float32 accumulation, as test_gemm.py's ref tolerance. Rows of 1e5 and
3e6 overflowed to inf before the fix; ordinary rows (|x| < 2^15) must be converted exactly as before:
equal to the unscaled fp16 model within its float32-accumulation bound (float weights: the hi + lo
activation model of test_gemm.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_gemm import SPLIT_TYPES, prefill_model
from test_matvec import F16, Q4_K, dequant, make_weight, rng_for, silu


@pytest.fixture(autouse=True)
def fp16_prefill_path(ops):
    """These tests are about the fp16 dequantize + cuBLAS path: the int8 MMQ route (test_mmq.py), which
    takes Q4_K/Q5_K/Q6_K/Q8_0 by default, is switched off while they run."""
    ops._set_prefill_mmq_disabled(True)
    yield
    ops._set_prefill_mmq_disabled(False)


def _x(rng, n_tok, K):
    x = rng.standard_normal((n_tok, K)).astype(np.float32)
    x[3] *= 5e4        # max |x| ~ 1.4e5: above fp16
    x[7] *= 6e5        # ~ 3e6
    x[11, 5] = 70000.0  # one value above fp16 in an otherwise small row
    return x


def _bound(w, x):
    aw, ax = np.abs(w.astype(np.float64)), np.abs(x.astype(np.float64))
    K = w.shape[1]
    return (2.0**-10 + 2.0**-22 + (K + 16) * 2.0**-24) * (ax @ aw.T) + 2.0**-25 * (aw.sum(1)[None, :] + ax.sum(1)[:, None])


@pytest.mark.parametrize("wtype", [F16, Q4_K])
def test_matmul_rows_beyond_fp16(ops, wtype):
    rng = rng_for("range", wtype)
    n_tok, K, N = 20, 256, 48
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = _x(rng, n_tok, K)
    got = ops.matmul(wtype, wb, K, N, x)
    assert np.isfinite(got).all()
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    err = np.abs(got - ref)
    tol = _bound(w, x)
    assert np.all(err <= tol), f"worst err/tol {np.max(err / tol):.3g}"
    # rows inside the fp16 range: exactly the unscaled fp16 product (scale 1) -- or, for float weights (hi + lo
    # activations, test_gemm.py), the product on exact activations within that model's bound
    small = [i for i in range(n_tok) if np.abs(x[i]).max() < 2.0**15]
    y16, acc = prefill_model(w, x[small], wtype in SPLIT_TYPES)
    assert np.all(np.abs(got[small] - y16) <= acc)


def test_swiglu_rows_beyond_fp16(ops):
    rng = rng_for("range-glu")
    n_tok, K, N = 18, 256, 32
    wg, wu = make_weight(F16, N, K, rng), make_weight(F16, N, K, rng)
    g, u = dequant(F16, wg, N, K).astype(np.float64), dequant(F16, wu, N, K).astype(np.float64)
    x = _x(rng, n_tok, K) * 1e-3
    x[3] *= 1e4  # max |x| ~ 1.4e6: above fp16 (rows 7 and 11 are inside it here)
    assert np.abs(x[3]).max() > 65504
    got = ops.matmul_swiglu(F16, wg, F16, wu, K, N, x)
    xg, xu = x.astype(np.float64) @ g.T, x.astype(np.float64) @ u.T
    ref = silu(xg) * xu
    assert np.isfinite(got).all()
    # first-order propagation of the projections' bounds through silu(a) * b
    tg, tu = _bound(g, x), _bound(u, x)
    ds = np.abs(1 / (1 + np.exp(-np.clip(xg, -700, 700))) * (1 + xg * (1 - 1 / (1 + np.exp(-np.clip(xg, -700, 700))))))
    tol = 2 * (ds * tg * np.abs(xu) + np.abs(silu(xg)) * tu) + 1e-6 * np.abs(ref) + 1e-30
    assert np.all(np.abs(got - ref) <= tol), f"worst {np.max(np.abs(got - ref) / tol):.3g}"
