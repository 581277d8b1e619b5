"""Prefill matmul (n_tok > 16): fp16 weight tiles (dequant_rows_kernel) x fp16 activations through
pq::cuda::gemm_f16 (cuBLAS on a GPU; a host GEMM under the emulator).

Checks:

1. The fp16 tile is bit-exact: fp16(CPU dequantized float) for every type (round to nearest even, as
   numpy's float16 cast).
2. The product against a numpy model of exactly that arithmetic, y = fp16(w) . fp16(x) in float64; the
   only difference is the GEMM's float32 accumulation, bounded by (K + 16) * 2^-24 * sum |w16 x16|.
   Float weights (F16/BF16/F32) get hi + lo fp16 activations (kernels/gemm.cuh, issue 10 part A): their
   model is y = fp16(w) . x with x exact, and the bound adds the lo rounding, 2^-22 |x_i| per value plus
   2^-39 max|x| (the lo subnormal floor after the row is scaled into [2^14, 2^15)), and a second float32
   accumulation. With single fp16 activations these types miss that bound by 6x (f16, 17 tokens).
3. The product against pyqwen._core.testing.ref_matmul. Derivation of the tolerance: with w, x the exact weights and
   activations, the GPU computes sum_i fp16(w_i) fp16(x_i) with |fp16(v) - v| <= 2^-11 |v| + 2^-25 (the
   absolute part covers fp16 subnormals), so |y_gpu - w.x| <= sum_i (2^-10 + 2^-22)|w_i x_i|
   + 2^-25 (|w_i| + |x_i|) + its float32 accumulation (above). The CPU quantizes x: Q8_K,
   |a2_i - x_i| <= d256/2; Q8_0/Q8_1 (32-value blocks, fp16 scale), <= d32 (1/2 + 127 * 2^-11); float
   weights: exact x. Q4_1/Q5_1 on the CPU also use the fp16 block sum s for the min term, adding
   |m| 2^-11 |s| per block. Both bounds added give the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyqwen import _core
from test_matvec import (CPU_ACT, E1, F16, F32, BF16, NAMES, Q4_1, Q4_K, Q5_1, Q6_K, Q8_0, IQ4_XS, block_m,
                         check_matmul, check_swiglu, dequant, make_weight, make_x, offset_terms, q8_1_values,
                         q8_k_scale, rng_for, silu, type_ids, _k_for)


SPLIT_TYPES = (F32, F16, BF16)  # hi + lo fp16 activations (detail::prefill_split_act)


def prefill_model(w: np.ndarray, x: np.ndarray, split: bool = False):
    """(y, tol): fp16 weights, fp16 activations (split: exact activations), exact products, the roundings'
    bound."""
    w16 = w.astype(np.float16).astype(np.float64)
    K = w.shape[1]
    if not split:
        x16 = x.astype(np.float16).astype(np.float64)
        return x16 @ w16.T, (K + 16) * 2.0**-24 * (np.abs(x16) @ np.abs(w16).T) + 1e-30
    x64 = x.astype(np.float64)
    ax, aw = np.abs(x64), np.abs(w16)
    tol = (2 * (K + 16) * 2.0**-24 + 2.0**-22) * (ax @ aw.T) + 2.0**-39 * ax.max(1)[:, None] * aw.sum(1)[None, :]
    return x64 @ w16.T, tol + 1e-30


def ref_tolerance(wtype, wbytes, w, x):
    N, K = w.shape
    aw = np.abs(w.astype(np.float64))
    ax = np.abs(x.astype(np.float64))
    mag = aw + 2 * offset_terms(wtype, wbytes, N, K)
    tol = (2.0**-10 + 2.0**-22 + (K + 16) * 2.0**-24) * (ax @ aw.T)  # fp16 roundings + GPU accumulation
    tol += 2.0**-25 * (aw.sum(1)[None, :] + ax.sum(1)[:, None])      # fp16 subnormals
    tol += (K / 32 + 32) * 2.0**-23 * (ax @ mag.T)                   # CPU accumulation
    if CPU_ACT[wtype] == "q8_k":
        tol += 0.5 * q8_k_scale(x) @ aw.T
    elif CPU_ACT[wtype] == "q8_32":
        _, d32, s = q8_1_values(x)
        tol += E1 * d32 @ aw.T
        if wtype in (Q4_1, Q5_1):
            tol += 2.0**-11 * np.abs(s) @ np.abs(block_m(wtype, wbytes, N, K)).T
    return tol + 1e-30


def check_prefill(got, wtype, wbytes, w, x, what):
    N, K = w.shape
    y, tol = prefill_model(w, x, wtype in SPLIT_TYPES)
    err = np.abs(got - y)
    assert np.all(err <= tol), f"{what}: vs fp16 model, worst err/tol = {np.max(err / tol):.3g}"
    ref = np.asarray(_core.testing.ref_matmul(wtype, wbytes, K, N, x))
    tol = ref_tolerance(wtype, wbytes, w, x)
    err = np.abs(got - ref)
    assert np.all(err <= tol), f"{what}: vs ref_matmul, worst err/tol = {np.max(err / tol):.3g}"


@pytest.fixture(autouse=True)
def fp16_prefill_path(ops):
    """These tests are about the fp16 dequantize + cuBLAS path: the int8 MMQ route (test_mmq.py), which
    takes Q4_K/Q5_K/Q6_K/Q8_0 by default, is switched off while they run."""
    ops._set_prefill_mmq_disabled(True)
    yield
    ops._set_prefill_mmq_disabled(False)


@pytest.fixture
def small_tiles(ops):
    """Weight tiles of 64 rows for K = 256 (several tiles per matrix); restores the default afterwards."""
    ops._set_prefill_tile_values(64 * 256)
    yield
    ops._set_prefill_tile_values(0)


@type_ids
def test_dequant_f16_tile_bit_exact(ops, wtype):
    rng = rng_for("tile", wtype)
    N, K = 11, _k_for(wtype)
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    got = ops.dequant_f16(wtype, wb, K, 3, 7)
    np.testing.assert_array_equal(got.view(np.uint16), w[3:10].astype(np.float16).view(np.uint16))


@type_ids
@pytest.mark.parametrize("n_tok", [17, 40, 64])
def test_matmul_prefill(ops, wtype, n_tok):
    rng = rng_for("prefill", wtype, n_tok)
    N, K = 37, _k_for(wtype)
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_prefill(ops.matmul(wtype, wb, K, N, x), wtype, wb, w, x, f"{NAMES[wtype]} n_tok={n_tok}")


@pytest.mark.parametrize("wtype", [Q4_K, Q6_K, Q8_0, IQ4_XS, F16, BF16], ids=lambda t: NAMES[t])
def test_matmul_prefill_tiles(ops, small_tiles, wtype):
    """N = 150 with 64-row tiles: 64 + 64 + 22 rows, each tile's GEMM writing its columns of y."""
    rng = rng_for("tiles", wtype)
    N, K, n_tok = 150, 256, 21
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_prefill(ops.matmul(wtype, wb, K, N, x), wtype, wb, w, x, NAMES[wtype])


def _serial(ops, fn):
    """fn() with the prefill tiles run serially on one stream (the reference order)."""
    ops._set_prefill_overlap(False)
    try:
        return fn()
    finally:
        ops._set_prefill_overlap(True)


def _same_bits(a, b):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


# Fallback types (MMQ takes none of them even when enabled), and Q4_K through the fallback (MMQ switched off).
OVERLAP_TYPES = [IQ4_XS, Q4_1, BF16, F32, Q4_K]


@pytest.mark.parametrize("wtype", OVERLAP_TYPES, ids=lambda t: NAMES[t])
@pytest.mark.parametrize("N,case", [(64, "one tile"), (128, "two tiles: no buffer reused"),
                                    (150, "three: first reuse, short last"), (192, "three, exact"),
                                    (337, "six: each buffer reused twice, short last")],
                         ids=lambda v: v if isinstance(v, str) else str(v))
def test_prefill_overlap_bit_identical(ops, small_tiles, wtype, N, case):
    """Tiles double-buffered over two streams (dequantize tile i+1 on the side stream while tile i
    multiplies) give the serial path's result bit for bit (the GEMMs see the same fp16 values), and the
    product is right (fp16 model and ref_matmul bounds)."""
    rng = rng_for("overlap", wtype, N)
    K, n_tok = 256, 19
    wb = make_weight(wtype, N, K, rng)
    x = make_x(rng, n_tok, K)
    got = ops.matmul(wtype, wb, K, N, x)
    _same_bits(got, _serial(ops, lambda: ops.matmul(wtype, wb, K, N, x)))
    check_prefill(got, wtype, wb, dequant(wtype, wb, N, K), x, f"{NAMES[wtype]} N={N}")


@pytest.mark.parametrize("tg,tu,N", [(IQ4_XS, IQ4_XS, 200), (BF16, Q4_1, 200), (IQ4_XS, Q4_1, 64), (F16, IQ4_XS, 150)],
                         ids=lambda v: NAMES[v] if v in NAMES else str(v))
def test_prefill_overlap_swiglu_bit_identical(ops, small_tiles, tg, tu, N):
    """Gate then up as one pipeline of tiles (gemm_prefill_n): the up matrix's first tile is dequantized
    while the gate's last one multiplies, into the buffer the gate's second-to-last GEMM has released.
    N = 64: one tile each (two in the pipeline); F16 gate: multiplied directly, the up tiles alone."""
    rng = rng_for("overlap_glu", tg, tu, N)
    K, n_tok = 256, 23
    wg, wu = make_weight(tg, N, K, rng), make_weight(tu, N, K, rng)
    x = make_x(rng, n_tok, K)
    got = ops.matmul_swiglu(tg, wg, tu, wu, K, N, x)
    _same_bits(got, _serial(ops, lambda: ops.matmul_swiglu(tg, wg, tu, wu, K, N, x)))
    split = tg in SPLIT_TYPES or tu in SPLIT_TYPES
    g, tol_g = prefill_model(dequant(tg, wg, N, K), x, split)
    u, tol_u = prefill_model(dequant(tu, wu, N, K), x, split)
    expect = silu(g) * u
    tol = 1.1 * tol_g * (np.abs(u) + tol_u) + np.abs(silu(g)) * tol_u + 1e-6 * np.abs(expect) + 1e-30
    assert np.all(np.abs(got - expect) <= tol)


@pytest.mark.parametrize("fault,what", [(1, "GEMM without the wait for its tile"),
                                        (2, "dequantization without the wait for the buffer's last GEMM")],
                         ids=["no-ready-wait", "no-freed-wait"])
def test_prefill_overlap_planted_ordering_bugs_are_caught(cuda_module, ops, small_tiles, fault, what):
    """Each of the two waits matters, and these tests can fail: under the emulator (which runs the side
    stream only when something waits for it, then as far as it can), dropping either wait changes y."""
    if not cuda_module.emulated:
        pytest.skip("on a GPU a missing wait is a race that may or may not show")
    rng = rng_for("overlap_fault", fault)
    K, N, n_tok = 256, 337, 19
    wb = make_weight(IQ4_XS, N, K, rng)
    x = make_x(rng, n_tok, K)
    ref = ops.matmul(IQ4_XS, wb, K, N, x)
    ops._set_prefill_overlap_fault(fault)
    try:
        bad = ops.matmul(IQ4_XS, wb, K, N, x)
    finally:
        ops._set_prefill_overlap_fault(0)
    rows_wrong = ~np.all(np.asarray(bad) == np.asarray(ref), axis=0)
    assert rows_wrong.sum() >= 64, what  # at least one whole tile of output columns is wrong
    _same_bits(ops.matmul(IQ4_XS, wb, K, N, x), ref)  # and the fixed order is right again


@pytest.mark.parametrize("K", [256, 768, 1280])
def test_matmul_prefill_k(ops, K):
    rng = rng_for("prefill_k", K)
    N, n_tok = 19, 33
    wb = make_weight(Q4_K, N, K, rng)
    w = dequant(Q4_K, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_prefill(ops.matmul(Q4_K, wb, K, N, x), Q4_K, wb, w, x, f"K={K}")


@pytest.mark.parametrize("tg,tu", [(Q4_K, Q4_K), (Q4_K, Q6_K), (F16, Q8_0)], ids=lambda t: NAMES[t])
def test_matmul_swiglu_prefill(ops, tg, tu):
    rng = rng_for("swiglu_prefill", tg, tu)
    N, K, n_tok = 41, 512, 24
    wgb, wub = make_weight(tg, N, K, rng), make_weight(tu, N, K, rng)
    x = make_x(rng, n_tok, K)
    split = tg in SPLIT_TYPES or tu in SPLIT_TYPES  # one activation layout for both weights
    g, tol_g = prefill_model(dequant(tg, wgb, N, K), x, split)
    u, tol_u = prefill_model(dequant(tu, wub, N, K), x, split)
    expect = silu(g) * u
    tol = 1.1 * tol_g * (np.abs(u) + tol_u) + np.abs(silu(g)) * tol_u + 1e-6 * np.abs(expect) + 1e-30
    got = ops.matmul_swiglu(tg, wgb, tu, wub, K, N, x)
    err = np.abs(got - expect)
    assert np.all(err <= tol), f"worst err/tol = {np.max(err / tol):.3g}"


@pytest.mark.parametrize("wtype", [F16, BF16, F32], ids=lambda t: NAMES[t])
@pytest.mark.parametrize("n_tok,K,N,case", [(17, 8, 1, "tiny"), (40, 72, 5, "small"), (100, 264, 3, "wide"),
                                            (33, 64, 7, "zero"), (20, 64, 7, "huge"), (64, 136, 2, "nonfinite")])
def test_matmul_prefill_split_edges(ops, wtype, n_tok, K, N, case):
    """Hi + lo activations at their edges: K of one 8-value group and not a multiple of 32/256, one output
    row, rows whose max is tiny (~1e-22: scaled up by ~2^88; unscaled, fp16 would flush them to 0) or in
    fp16's subnormal range (3e-5), exactly zero, huge (1e30: scaled down, as the single path), and an inf /
    NaN value (only those rows are non-finite). Against fp16(w) . x in float64."""
    rng = rng_for("split edges", wtype, n_tok, K, case)
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    x[1] *= np.float32(1e-25) if case != "huge" else np.float32(1e30)
    x[2] = 0.0
    x[3] = rng.normal(0, 1, K) * np.float32(3e-5)  # all of it in fp16's subnormal range unless scaled up
    if case == "nonfinite":
        x[4, 0], x[5, 1] = np.inf, np.nan
    got = ops.matmul(wtype, wb, K, N, x)
    y, tol = prefill_model(w, x, True)
    ok = np.isfinite(x).all(1)
    assert not np.isfinite(got[~ok]).any()
    err = np.abs(got[ok] - y[ok])
    assert np.all(err <= tol[ok]), f"{case}: worst err/tol = {np.max(err / tol[ok]):.3g}"
    assert np.isfinite(got[ok]).all()


@pytest.mark.parametrize("wtype", [Q4_K, Q8_0, F16], ids=lambda t: NAMES[t])
def test_matmul_prefill_without_cublas(ops, wtype):
    """Without cuBLAS (gemm_f16 -> cudaErrorNotSupported) the prefill sizes run the decode kernel in passes
    of 8 tokens: the decode path's arithmetic, checked like test_matvec's."""
    rng = rng_for("noblas", wtype)
    N, K, n_tok = 23, 512, 19
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    wub = make_weight(Q4_K, N, K, rng)
    ops._set_prefill_blas_disabled(True)
    try:
        got = ops.matmul(wtype, wb, K, N, x)
        got_glu = ops.matmul_swiglu(wtype, wb, Q4_K, wub, K, N, x)
    finally:
        ops._set_prefill_blas_disabled(False)
    check_matmul(got, wtype, wb, w, x, NAMES[wtype])
    check_swiglu(got_glu, wtype, wb, Q4_K, wub, x, N, K)


def test_scratch_bytes(ops):
    """Scratch grows with the tokens; the prefill layout holds the fp16 activations and the weight tile pair
    (two buffers of 3264 rows of K = 5120: 16M values each)."""
    K, N = 5120, 17408
    dec = ops.matmul_scratch_bytes(Q4_K, K, N, 8)
    pre = ops.matmul_scratch_bytes(Q4_K, K, N, 512)
    assert 0 < dec < pre
    assert pre >= 512 * K * 2 + 2 * 3264 * K * 2 + 2 * 512 * N * 4
    assert ops.matmul_scratch_bytes(F16, K, N, 512) == pre  # any pairing of types for matmul_swiglu
    assert ops.matmul_scratch_bytes(10, K, N, 1) == 0       # unsupported type
