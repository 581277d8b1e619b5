"""The decode path's fused kernels (issue 10, fewer launches per token), against the op-by-op path they
replace -- bit for bit, since the arithmetic is the same -- and against float64 numpy:

- add_rms_norm_q8 (cuda/kernels/norm_q8.cuh): residual add + RMSNorm + Q8_1 activations in one kernel
  must equal add + rms_norm + quantize_act exactly (the model relies on it: a verification's rows, run
  through the same fused path, equal decode steps; and the fused path equals the unfused one), for both
  of rms_norm's block sizes (rows < 1024 values: one warp; else 256 threads), with and without the add,
  the weight and the quantization;
- matmul_prepared (ops_matvec.h): several weights of one type on one shared Q8_1 input in one launch must
  give each weight's matmul bit for bit, whatever the mix of row counts (each segment keeps its own
  warps-per-row, hence its own summation order).

The numpy references (test_matvec.py's make_weight / quantize_q8_1_ref) make the checks independent of
our C++: the norm in float64 within 4 float32 ulps of |y|, the Q8_1 bytes exactly (quantize_q8_1_ref is
ggml's reference quantizer in numpy).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_matvec import F16, F32, Q4_K, Q5_K, Q6_K, Q8_0, _k_for, make_weight, quantize_q8_1_ref, rng_for


def _q8_from_ref(y: np.ndarray):
    """(qs, ds) of y as the decode kernel's layout holds them, from numpy's block_q8_1 values."""
    ref = quantize_q8_1_ref(y)
    n, K = y.shape
    return ref["qs"].reshape(n, K), np.stack([ref["d"].astype(np.float32), ref["s"].astype(np.float32)], -1)


@pytest.mark.parametrize("K", [32, 96, 992, 1024, 1056])
@pytest.mark.parametrize("n_tok", [1, 3])
@pytest.mark.parametrize("with_add,with_w", [(True, True), (False, True), (True, False)])
def test_add_rms_norm_q8_equals_unfused(ops, K, n_tok, with_add, with_w):
    rng = rng_for("norm_q8", K, n_tok, with_add, with_w)
    x = (rng.standard_normal((n_tok, K)) * rng.uniform(0.1, 30, (n_tok, 1))).astype(np.float32)
    add = rng.standard_normal((n_tok, K)).astype(np.float32) if with_add else None
    w = rng.uniform(-2, 2, K).astype(np.float32) if with_w else None
    eps = 1e-6
    xo, y, qs, ds = ops.add_rms_norm_q8(x, add, w, eps)
    # op by op: add, rms_norm, quantize_act
    xr = ops.add(x, add).reshape(n_tok, K) if with_add else x
    yr = ops.rms_norm(xr, w, eps)
    qr, dr = ops.quantize_act(yr)
    assert np.array_equal(xo, xr) and np.array_equal(y, yr)
    assert np.array_equal(qs, qr) and np.array_equal(ds, dr)
    # independent references
    x64 = x.astype(np.float64) + (add.astype(np.float64) if with_add else 0)
    y64 = x64 / np.sqrt((x64 ** 2).mean(1, keepdims=True) + eps) * (w if with_w else 1)
    np.testing.assert_allclose(y, y64, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(y64).max())
    qn, dn = _q8_from_ref(y)
    assert np.array_equal(qs, qn) and np.array_equal(ds, dn)


def test_add_rms_norm_without_quantization(ops):
    rng = rng_for("norm_q8_noq")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    xo, y, qs, ds = ops.add_rms_norm_q8(x, None, None, 1e-6, quantize=False)
    assert qs is None and ds is None and np.array_equal(y, ops.rms_norm(x, None, 1e-6))


def test_add_rms_norm_q8_rejects_partial_blocks(ops):
    with pytest.raises(Exception):
        ops.add_rms_norm_q8(np.ones((1, 48), np.float32))


# (type, row counts of the parts): the DeltaNet layer's gate | beta | alpha and attention's q | k | v
# shapes in small, with row counts on both sides of the warps-per-row thresholds (2048, 8192).
GROUPS = [(Q4_K, [96, 6, 6]), (Q5_K, [2100, 40]), (Q8_0, [300, 48, 17, 1]), (Q6_K, [9]), (F16, [64, 16, 8]),
          (F32, [40, 3])]


@pytest.mark.parametrize("wtype,ns", GROUPS)
@pytest.mark.parametrize("n_tok", [1, 2, 11])
def test_matmul_prepared_equals_separate_matmuls(ops, wtype, ns, n_tok):
    K = _k_for(wtype)
    rng = rng_for("prepared", wtype, tuple(ns), n_tok)
    ws = [make_weight(wtype, N, K, rng) for N in ns]
    x = rng.standard_normal((n_tok, K)).astype(np.float32)
    got = ops.matmul_prepared(wtype, [(w, N) for w, N in zip(ws, ns)], K, x)
    for g, w, N in zip(got, ws, ns):
        assert g.shape == (n_tok, N)
        assert np.array_equal(g, ops.matmul(wtype, w, K, N, x))


def test_matmul_prepared_rejects(ops):
    K = 256
    rng = rng_for("prepared_bad")
    w = make_weight(Q4_K, 8, K, rng)
    x = np.ones((1, K), np.float32)
    with pytest.raises(Exception):
        ops.matmul_prepared(Q4_K, [(w, 8)] * 5, K, x)  # more parts than one launch serves
    with pytest.raises(Exception):
        ops.matmul_prepared(Q4_K, [(w, 8)], K, np.ones((17, K), np.float32))  # beyond the decode path


# (nk, nv, dk, dv): the 27B's heads (16 QK / 48 V x 128), small ones with 2 and 3 parts per head, and
# dk 256 (4 rows per warp and pass).
GDN_SHAPES = [(16, 48, 128, 128), (2, 4, 64, 64), (1, 3, 32, 96), (2, 2, 256, 64)]


@pytest.mark.parametrize("nk,nv,dk,dv", GDN_SHAPES)
def test_gdn_decode_spread_and_q8_equal_the_one_block_step(ops, nk, nv, dk, dv):
    """The DeltaNet decode step with each head's rows spread over blocks (the last block of a head norms
    it) and its output quantized in the kernel gives gdn's one-block step bit for bit, leaves the
    per-head counters zero, and its Q8_1 bytes are quantize_act's of the output."""
    rng = rng_for("gdn_spread", nk, nv, dk, dv)
    C = 2 * nk * dk + nv * dv
    y = rng.standard_normal((1, C)).astype(np.float32)
    alpha = rng.standard_normal((1, nv)).astype(np.float32)
    b = rng.standard_normal((1, nv)).astype(np.float32)
    ssm_a = -rng.uniform(0.1, 2, nv).astype(np.float32)
    dt = rng.standard_normal(nv).astype(np.float32)
    S = (rng.standard_normal((nv, dv, dk)) * 0.3).astype(np.float32)
    z = rng.standard_normal((1, nv * dv)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, dv).astype(np.float32)
    ref_out, ref_S = ops.gdn(y, alpha, b, ssm_a, dt, S, z, w, nk)
    for spread in (True, False):
        out, S_new, qs, ds, cnt = ops.gdn_decode_q8(y, alpha, b, ssm_a, dt, S, z, w, nk, spread=spread)
        assert np.array_equal(out, ref_out[0]) and np.array_equal(S_new, ref_S)
        assert cnt is None or not cnt.any()
        q_ref, d_ref = ops.quantize_act(ref_out)
        assert np.array_equal(qs, q_ref[0]) and np.array_equal(ds, d_ref[0])


@pytest.mark.parametrize("wtype,N", [(Q4_K, 96), (Q5_K, 2100), (F16, 64)])
@pytest.mark.parametrize("n_tok", [1, 2, 11])
@pytest.mark.parametrize("ck", [4, 8])
def test_matmul_conv_epilogue_equals_conv1d(ops, wtype, N, n_tok, ck):
    """The DeltaNet conv + SiLU as the in-projection's epilogue (each output row one conv channel, its
    tokens in order, the state carried across the two launches of 11 tokens and partly kept when fewer
    tokens than taps - 1 come) equals matmul then conv1d_silu bit for bit."""
    K = _k_for(wtype)
    rng = rng_for("conv_epilogue", wtype, N, n_tok, ck)
    w = make_weight(wtype, N, K, rng)
    x = rng.standard_normal((n_tok, K)).astype(np.float32)
    cw = rng.standard_normal((N, ck)).astype(np.float32)
    state = rng.standard_normal((N, ck - 1)).astype(np.float32)
    y_ref = ops.matmul(wtype, w, K, N, x)
    cy_ref, st_ref = ops.conv1d_silu(y_ref, cw, state)
    y, cy, st = ops.matmul_prepared_conv(wtype, w, N, K, x, cw, state)
    assert np.array_equal(y, y_ref) and np.array_equal(cy, cy_ref) and np.array_equal(st, st_ref)


@pytest.mark.parametrize("wtype,K", [(Q4_K, 512), (Q6_K, 256), (F16, 64)])
@pytest.mark.parametrize("N", [96, 1056, 2048])
@pytest.mark.parametrize("n_tok", [1, 3, 11])
def test_matmul_norm_epilogue_equals_add_rms_norm_q8(ops, wtype, K, N, n_tok):
    """The layer entry (residual add + RMSNorm + Q8_1) as the matmul's epilogue, run by the kernel's last
    CTA of 128 threads playing add_rms_norm_q8's 32 or 256 (N < 1024: one warp's tree; else 256 threads'),
    equals matmul then add_rms_norm_q8 bit for bit -- over the two launches of 11 tokens too (each launch's
    last CTA norms its own tokens) -- and leaves its counter zero."""
    rng = rng_for("norm_epilogue", wtype, K, N, n_tok)
    w = make_weight(wtype, N, K, rng)
    x = rng.standard_normal((n_tok, K)).astype(np.float32)
    res = (rng.standard_normal((n_tok, N)) * 20).astype(np.float32)
    nw = rng.uniform(-2, 2, N).astype(np.float32)
    y_ref = ops.matmul(wtype, w, K, N, x)
    xr_ref, out_ref, qs_ref, ds_ref = ops.add_rms_norm_q8(res, y_ref, nw, 1e-6, True)
    y, xr, out, qs, ds, cnt = ops.matmul_prepared_norm(wtype, w, N, K, x, res, nw, 1e-6, True)
    assert np.array_equal(y, y_ref)
    assert np.array_equal(xr, xr_ref) and np.array_equal(out, out_ref)
    assert np.array_equal(qs, qs_ref) and np.array_equal(ds, ds_ref)
    assert cnt == 0
    # without the norm weight and the quantization (the kernel's other branches)
    _, xr2, out2, qs2, _, cnt2 = ops.matmul_prepared_norm(wtype, w, N, K, x, res, None, 1e-6, False)
    xr2_ref, out2_ref, _, _ = ops.add_rms_norm_q8(res, y_ref, None, 1e-6, False)
    assert np.array_equal(xr2, xr2_ref) and np.array_equal(out2, out2_ref) and qs2 is None and cnt2 == 0
    # float64 reference of the norm on the matmul's own output (independent of our C++ arithmetic)
    s = res.astype(np.float64) + y.astype(np.float64)
    ref = s / np.sqrt((s * s).mean(axis=1, keepdims=True) + 1e-6) * nw
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_matmul_norm_epilogue_rejects(ops):
    rng = rng_for("norm_epilogue_rejects")
    w = make_weight(Q4_K, 48, 256, rng)  # N not whole Q8_1 blocks
    x = rng.standard_normal((1, 256)).astype(np.float32)
    with pytest.raises(Exception):
        ops.matmul_prepared_norm(Q4_K, w, 48, 256, x, np.zeros((1, 48), np.float32))
