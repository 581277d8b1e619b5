"""The quantized prefill matmul on int8 tensor cores (cuda/kernels/mmq.cuh, launch/mmq.cu), emulated.

1. The MMA twins against the PTX ISA's fragment layouts of mma.m16n8k32 / m16n8k16 .s8 (row.col): the
   fragments are built here from the ISA's documented thread -> element formulas (groupID = lane / 4,
   threadID_in_group = lane % 4), independently of the kernel's code, and the result is read back by the
   ISA's C layout. Integer arithmetic: the comparison is exact.
2. The whole kernel against an exact integer reference: the weight blocks parsed here into integer levels,
   per-16 scales and per-32 mins (the parse checked against gguf.quants.dequantize), the Q8_1 activations
   from test_matvec.quantize_q8_1_ref (ggml's reference quantizer in numpy), the integer dot products in
   int64 and everything else in float64. What is left is the kernel's float32 rounding: one product
   (scale * d_act) and one add per 32-value sub-block and output, bounded by (K/32 + 8) * 2^-23 times the
   sum of the terms' magnitudes.
3. The routed matmul (n_tok > 16, the Q8_1 quantizer included) against numpy float64 products of the gguf
   dequantized weights with the unquantized activations; the difference is the activation rounding,
   |sum w_i (a1_i - x_i)| <= sum |w_i| d32_i E1 (test_matvec's derivation), plus the float term above.
   And test_matvec.check_matmul (its numpy model of the Q8_1 arithmetic, and the CPU ref_matmul).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_matvec import (E1, NAMES, Q4_K, Q5_K, Q6_K, Q8_0, IQ4_XS, check_matmul, dequant, make_weight, make_x,
                         quantize_q8_1_ref, q8_1_values, rng_for, silu)

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402

MMQ_TYPES = [Q4_K, Q5_K, Q6_K, Q8_0]
mmq_types = pytest.mark.parametrize("wtype", MMQ_TYPES, ids=[NAMES[t] for t in MMQ_TYPES])
GGUF_TYPE = {Q4_K: GGMLQuantizationType.Q4_K, Q5_K: GGMLQuantizationType.Q5_K, Q6_K: GGMLQuantizationType.Q6_K,
             Q8_0: GGMLQuantizationType.Q8_0}


# ---- 1. fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32 / mma.m16n8k16", .s8 / .u8) ------------
def _pack(vals) -> np.uint32:
    """Four int8 into one .b32, element 0 in the low byte."""
    return np.uint32(sum(int(np.uint8(np.int8(v))) << (8 * i) for i, v in enumerate(vals)))


def isa_fragments_k32(A: np.ndarray, B: np.ndarray):
    """A [16, 32] s8 and B [32, 8] s8 -> per-lane registers a [32, 4], b [32, 2] by the ISA formulas:
    a_i (i = 0..15): row = groupID for i < 4 or 8 <= i < 12, else groupID + 8;
                     col = threadID_in_group * 4 + (i & 3), + 16 for i >= 8;
    b_i (i = 0..7):  row = threadID_in_group * 4 + (i & 3), + 16 for i >= 4; col = groupID."""
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        ea = []
        for i in range(16):
            row = g if (i < 4 or 8 <= i < 12) else g + 8
            col = t * 4 + (i & 3) + (16 if i >= 8 else 0)
            ea.append(A[row, col])
        eb = [B[t * 4 + (i & 3) + (16 if i >= 4 else 0), g] for i in range(8)]
        a[lane] = [_pack(ea[4 * r:4 * r + 4]) for r in range(4)]
        b[lane] = [_pack(eb[4 * r:4 * r + 4]) for r in range(2)]
    return a, b


def isa_fragments_k16(A: np.ndarray, B: np.ndarray):
    """A [16, 16], B [16, 8] -> a [32, 4] (registers 2, 3 unused: zero), b [32, 2] (register 1 unused):
    a_i (i = 0..7): row = groupID for i < 4, else groupID + 8; col = threadID_in_group * 4 + (i & 3);
    b_i (i = 0..3): row = threadID_in_group * 4 + i; col = groupID."""
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        ea = [A[g if i < 4 else g + 8, t * 4 + (i & 3)] for i in range(8)]
        a[lane, 0], a[lane, 1] = _pack(ea[:4]), _pack(ea[4:])
        b[lane, 0] = _pack([B[t * 4 + i, g] for i in range(4)])
    return a, b


def isa_c_to_frag(C: np.ndarray) -> np.ndarray:
    """C [16, 8] -> c [32, 4]: c_i row = groupID for i < 2, else groupID + 8; col = threadID_in_group*2 + (i & 1)."""
    c = np.zeros((32, 4), np.int32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            c[lane, i] = C[g if i < 2 else g + 8, t * 2 + (i & 1)]
    return c


@pytest.mark.parametrize("k", [32, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mma_s8_fragment_layout(ops, k, seed):
    rng = rng_for("mma", k, seed)
    A = rng.integers(-128, 128, (16, k)).astype(np.int8)
    B = rng.integers(-128, 128, (k, 8)).astype(np.int8)
    C = rng.integers(-2**20, 2**20, (16, 8)).astype(np.int32)
    if seed == 2:  # the extremes: -128 * -128 summed over k
        A[:] = -128
        B[:] = -128
    a, b = isa_fragments_k32(A, B) if k == 32 else isa_fragments_k16(A, B)
    got = ops.mma_s8(a, b, isa_c_to_frag(C), k16=(k == 16))
    want = C.astype(np.int64) + A.astype(np.int64) @ B.astype(np.int64)
    np.testing.assert_array_equal(got, isa_c_to_frag(want.astype(np.int32)))


def test_mma_s8_rejects_bad_shapes(ops):
    with pytest.raises(ValueError):
        ops.mma_s8(np.zeros((32, 3), np.uint32), np.zeros((32, 2), np.uint32), np.zeros((32, 4), np.int32))


# ---- 2. exact integer reference ---------------------------------------------------------------------------------
def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16)[..., 0].astype(np.float64)


def int_weights(wtype: int, wbytes: np.ndarray, N: int, K: int):
    """(L, S, M): integer levels [N, K] (int64), scale per 16 values [N, K/16], min per 32 values [N, K/32]
    (float64, exact products of the fp16 fields and the integer scales), with w = S * L - M per value."""
    if wtype == Q8_0:
        blk = wbytes.reshape(N, K // 32, 34)
        L = blk[..., 2:].copy().view(np.int8).astype(np.int64).reshape(N, K)
        S = np.repeat(_f16(blk[..., 0:2]), 2, axis=-1)
        return L, S, np.zeros((N, K // 32))
    if wtype in (Q4_K, Q5_K):
        bb = 144 if wtype == Q4_K else 176
        blk = wbytes.reshape(N, K // 256, bb).astype(np.int64)
        d, dmin = _f16(wbytes.reshape(N, K // 256, bb)[..., 0:2]), _f16(wbytes.reshape(N, K // 256, bb)[..., 2:4])
        sc = blk[..., 4:16]
        qs = blk[..., 16:144] if wtype == Q4_K else blk[..., 48:176]
        L = np.zeros((N, K // 256, 8, 32), np.int64)
        S = np.zeros((N, K // 256, 8))
        M = np.zeros((N, K // 256, 8))
        for j in range(8):  # ggml's get_scale_min_k4, spelled out
            if j < 4:
                s_j, m_j = sc[..., j] & 63, sc[..., j + 4] & 63
            else:
                s_j = (sc[..., j + 4] & 0xF) | ((sc[..., j - 4] >> 6) << 4)
                m_j = (sc[..., j + 4] >> 4) | ((sc[..., j] >> 6) << 4)
            S[..., j], M[..., j] = d * s_j, dmin * m_j
            L[..., j, :] = (qs[..., 32 * (j // 2):32 * (j // 2) + 32] >> (4 * (j % 2))) & 0xF
            if wtype == Q5_K:
                L[..., j, :] |= ((blk[..., 16:48] >> j) & 1) << 4
        return L.reshape(N, K), np.repeat(S.reshape(N, -1), 2, axis=-1), M.reshape(N, -1)
    assert wtype == Q6_K
    raw = wbytes.reshape(N, K // 256, 210)
    blk = raw.astype(np.int64)
    ql, qh = blk[..., 0:128], blk[..., 128:192]
    scs = raw[..., 192:208].copy().view(np.int8).astype(np.float64)
    d = _f16(raw[..., 208:210])
    L = np.zeros((N, K // 256, 256), np.int64)
    for n in range(2):
        for k in range(4):  # values 128n + 32k + l
            lo = (ql[..., 64 * n + 32 * (k & 1):64 * n + 32 * (k & 1) + 32] >> (4 * (k >> 1))) & 0xF
            hi = (qh[..., 32 * n:32 * n + 32] >> (2 * k)) & 3
            L[..., 128 * n + 32 * k:128 * n + 32 * k + 32] = (lo | (hi << 4)) - 32
    # scale of values 128n + 32k + 16h + i: sc[8n + 2k + h], i.e. the 16-value groups in order
    S = d[..., None] * scs
    return L.reshape(N, K), S.reshape(N, -1), np.zeros((N, K // 32))


def exact_reference(L, S, M, qs, d):
    """(y, mag): y[t, r] = sum_g S[r,g] d[t,g/2] (L . q)_g - sum_b M[r,b] d[t,b] sum(q)_b in float64 with exact
    integer dots (g: 16-value groups, b: 32-value blocks); mag: the sum of the terms' magnitudes."""
    N, K = L.shape
    T = qs.shape[0]
    q = qs.astype(np.int64)
    dots = np.einsum("rgi,tgi->trg", L.reshape(N, K // 16, 16), q.reshape(T, K // 16, 16))  # exact
    d16 = np.repeat(d, 2, axis=-1)  # [T, K/16]
    terms = S[None, :, :] * d16[:, None, :] * dots
    sums = q.reshape(T, K // 32, 32).sum(-1)  # [T, K/32]
    mins = M[None, :, :] * (d * sums)[:, None, :]
    y = terms.sum(-1) - mins.sum(-1)
    mag = np.abs(terms).sum(-1) + np.abs(mins).sum(-1)
    return y, mag


def float_tol(K, mag):
    return (K / 32 + 8) * 2.0**-23 * mag + 1e-30


@mmq_types
def test_int_weights_parse_matches_gguf(wtype):
    """The integer parse behind the exact reference is the format gguf-py reads (an independent decoder)."""
    rng = rng_for("parse", wtype)
    N, K = 5, 512
    wb = make_weight(wtype, N, K, rng)
    L, S, M = int_weights(wtype, wb, N, K)
    w = np.repeat(S, 16, axis=-1) * L - np.repeat(M, 32, axis=-1)
    g = gguf_quants.dequantize(wb.reshape(N, -1), GGUF_TYPE[wtype]).astype(np.float64)
    np.testing.assert_allclose(w, g, rtol=2e-6, atol=1e-7 * np.abs(g).max())


SHAPES = [(17, 1, 256), (33, 63, 512), (100, 65, 768), (257, 130, 256), (64, 64, 1024)]


@mmq_types
@pytest.mark.parametrize("n_tok,N,K", SHAPES, ids=[f"t{t}-n{n}-k{k}" for t, n, k in SHAPES])
def test_mmq_exact_integer_reference(ops, wtype, n_tok, N, K):
    rng = rng_for("mmq-exact", wtype, n_tok, N, K)
    wb = make_weight(wtype, N, K, rng)
    x = make_x(rng, n_tok, K)
    x[0, :32] = 0.0  # an all-zero activation block: d = 0
    q = quantize_q8_1_ref(x)
    qs = q["qs"].reshape(n_tok, K)
    d = q["d"].astype(np.float64)
    ds = np.stack([q["d"].astype(np.float32), q["s"].astype(np.float32)], axis=-1)
    got = np.asarray(ops.mmq(wtype, wb, K, N, qs, ds))
    y, mag = exact_reference(*int_weights(wtype, wb, N, K), qs, d)
    err = np.abs(got - y)
    tol = float_tol(K, mag)
    assert np.all(err <= tol), f"{NAMES[wtype]}: worst err/tol = {np.max(err / tol):.3g}"


# ---- 3. the routed prefill matmul ----------------------------------------------------------------------------
def check_vs_float64(got, wtype, wb, x, N, K):
    w = gguf_quants.dequantize(wb.reshape(N, -1), GGUF_TYPE[wtype]).astype(np.float64)
    ref = x.astype(np.float64) @ w.T
    _, d32, _ = q8_1_values(x)
    a1, _, _ = q8_1_values(x)
    tol = E1 * d32 @ np.abs(w).T + float_tol(K, np.abs(a1) @ (np.abs(w) + 2 * _min_terms(wtype, wb, N, K)).T)
    err = np.abs(got - ref)
    assert np.all(err <= tol), f"{NAMES[wtype]} vs float64: worst err/tol = {np.max(err / tol):.3g}"


def _min_terms(wtype, wb, N, K):
    _, _, M = int_weights(wtype, wb, N, K)
    return np.repeat(M, 32, axis=-1)


@mmq_types
@pytest.mark.parametrize("n_tok,N,K", [(17, 70, 512), (40, 33, 256)])
def test_matmul_prefill_routes_through_mmq(ops, wtype, n_tok, N, K):
    assert ops.mmq_type_ok(wtype, K)
    rng = rng_for("mmq-routed", wtype, n_tok, N, K)
    wb = make_weight(wtype, N, K, rng)
    x = make_x(rng, n_tok, K)
    got = np.asarray(ops.matmul(wtype, wb, K, N, x))
    check_vs_float64(got, wtype, wb, x, N, K)
    check_matmul(got, wtype, wb, dequant(wtype, wb, N, K), x, f"{NAMES[wtype]} mmq n_tok={n_tok}")
    # the fp16 path is another computation: the answers differ (the switch really switched)
    ops._set_prefill_mmq_disabled(True)
    try:
        other = np.asarray(ops.matmul(wtype, wb, K, N, x))
    finally:
        ops._set_prefill_mmq_disabled(False)
    assert not np.array_equal(got, other)


@pytest.mark.parametrize("tg,tu", [(Q4_K, Q4_K), (Q4_K, Q6_K), (Q4_K, IQ4_XS)])
def test_matmul_swiglu_prefill(ops, tg, tu):
    """Both gate and up on MMQ (one quantization), and a pair with an IQ4_XS weight (the fp16 path for both)."""
    rng = rng_for("mmq-swiglu", tg, tu)
    n_tok, N, K = 20, 37, 512
    wg, wu = make_weight(tg, N, K, rng), make_weight(tu, N, K, rng)
    x = make_x(rng, n_tok, K)
    got = np.asarray(ops.matmul_swiglu(tg, wg, tu, wu, K, N, x))
    g = x.astype(np.float64) @ dequant(tg, wg, N, K).astype(np.float64).T
    u = x.astype(np.float64) @ dequant(tu, wu, N, K).astype(np.float64).T
    want = silu(g) * u
    # the activation rounding (~1e-2 relative per projection at most) bounds the difference
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2 * np.abs(want).max())


def test_mmq_type_ok(ops):
    assert all(ops.mmq_type_ok(t, 256) for t in MMQ_TYPES)
    assert not ops.mmq_type_ok(IQ4_XS, 256)
    assert not ops.mmq_type_ok(Q8_0, 96)  # K not a multiple of the kernel's 256-value step: fp16 path


@pytest.mark.parametrize("n_tok", [17, 33])
def test_matmul_q8_0_short_k_falls_back(ops, n_tok):
    """Q8_0 with K % 256 != 0 takes the fp16 path (still correct)."""
    rng = rng_for("mmq-q8short", n_tok)
    N, K = 9, 96
    wb = make_weight(Q8_0, N, K, rng)
    x = make_x(rng, n_tok, K)
    got = np.asarray(ops.matmul(Q8_0, wb, K, N, x))
    want = x.astype(np.float64) @ dequant(Q8_0, wb, N, K).astype(np.float64).T
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("wtype", [Q4_K, Q6_K], ids=["q4_K", "q6_K"])
def test_mmq_27b_depth(ops, wtype):
    """The 27B's deepest matmul, ffn_down (K = 17408: 68 K steps, 544 sub-blocks summed in float32), on a
    slice of its 5120 rows (the full 5120 x 17408 would take the emulator ~an hour; the rows are
    independent tiles), at 17 tokens: against the exact integer reference and float64."""
    rng = rng_for("mmq-27b", wtype)
    n_tok, N, K = 17, 80, 17408
    wb = make_weight(wtype, N, K, rng)
    x = make_x(rng, n_tok, K)
    q = quantize_q8_1_ref(x)
    qs = q["qs"].reshape(n_tok, K)
    ds = np.stack([q["d"].astype(np.float32), q["s"].astype(np.float32)], axis=-1)
    got = np.asarray(ops.mmq(wtype, wb, K, N, qs, ds))
    y, mag = exact_reference(*int_weights(wtype, wb, N, K), qs, q["d"].astype(np.float64))
    assert np.all(np.abs(got - y) <= float_tol(K, mag))
    check_vs_float64(np.asarray(ops.matmul(wtype, wb, K, N, x)), wtype, wb, x, N, K)


def test_matmul_prefill_large_activations(ops):
    """Rows of 1e5 and 3e6 (beyond fp16, the issue-10 ffn_down inputs): the Q8_1 blocks carry their own scale
    (d = amax/127 stays inside fp16 up to |x| ~ 8.3e6), so MMQ needs no row scaling."""
    rng = rng_for("mmq-range")
    n_tok, K, N = 20, 256, 48
    wb = make_weight(Q4_K, N, K, rng)
    x = rng.standard_normal((n_tok, K)).astype(np.float32)
    x[3] *= 5e4
    x[7] *= 6e5
    x[11, 5] = 70000.0
    got = np.asarray(ops.matmul(Q4_K, wb, K, N, x))
    assert np.isfinite(got).all()
    check_vs_float64(got, Q4_K, wb, x, N, K)


# ---- 4. the whole model ------------------------------------------------------------------------------------------
def test_q4_k_m_model_prefill_through_mmq(emu_ops, aligned_q4km, aligned_q4km_f32):
    """The 256-aligned Q4_K_M fixture (tests/fixtures/make_quant_fixture.py: Q4_K and Q6_K projections, K a
    multiple of 256, so every layer's prefill matmul takes MMQ), one 17-token chunk, logits of every row.

    Kernels, not the model, are compared first: the same forward with MMQ off and cuBLAS off runs every
    matmul through the decode kernel's passes -- the same Q8_1 activations, integer products and scales,
    the same GDN / attention prefill kernels, the same chunk -- so each matmul differs only by float
    summation order (a few float32 ulps of sum |w a|: test_matvec's model tolerance, which both kernels
    meet). This comparison is immune to the prefill drift of > 16-token chunks being fixed elsewhere. But
    every layer input is re-quantized to 8 bits, a discontinuous step: an ulp-level difference flips a
    rounding for ~0.2 % of the values (each by d = amax/127), and this random model amplifies the flips
    (observed: KL 2.3e-4, max |diff| 0.13 on logits of |x| <= ~6, every row touched). So the bar is
    statistical: KL < 2e-3, 13x below the quantization's own distance from the unquantized model (KL
    0.026 for either kernel), which any wrong level, scale or index would exceed by far; and the same
    argmax wherever the top-2 margin exceeds 0.3.

    Then the model: against the CPU backend on the same weights dequantized to F32 (no activation
    quantization at all). This random model amplifies activation rounding (test_model_emu.py's
    test_q4_k_m_model): the CPU's own Q8_K path lands at KL ~0.027 from it, MMQ's Q8_1 at ~0.025 (the fp16
    GEMM, with finer activations, at 3e-5). The bar: no further than 1.25 x the CPU's own quantized path.
    """
    tcq = pytest.importorskip("test_convert_quant")
    import pyqwen
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    q4, deq = aligned_q4km, aligned_q4km_f32
    prompt = [1, 5, 17, 300, 42, 7, 99, 1000, 3, 11, 250, 2400, 8, 64, 65, 66, 901]
    core = CudaCore.from_gguf(GGUFFile.open(str(q4)), 64, n_batch=32, module=emu_ops)
    t = emu_ops.testing
    got = core.forward(core.new_state(64), prompt, "all", 256)
    t._set_prefill_mmq_disabled(True)
    t._set_prefill_blas_disabled(True)
    try:
        mmv = core.forward(core.new_state(64), prompt, "all", 256)
    finally:
        t._set_prefill_mmq_disabled(False)
        t._set_prefill_blas_disabled(False)
    kl_kernels = tcq.kl_mean(got, mmv)
    assert kl_kernels < 2e-3, kl_kernels
    top2 = np.sort(mmv, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.3
    assert clear.sum() >= 8 and (got.argmax(1)[clear] == mmv.argmax(1)[clear]).all()

    cpu_q4 = pyqwen.Model.load(str(q4), n_ctx=64, backend="cpu")._core
    cpu_deq = pyqwen.Model.load(str(deq), n_ctx=64, backend="cpu")._core
    ids = np.array(prompt, np.int32)
    ref = cpu_deq.forward(cpu_deq.new_state(64, "f16"), ids, "all", 256)
    cq = cpu_q4.forward(cpu_q4.new_state(64, "f16"), ids, "all", 256)
    kl_gpu, kl_cpu = tcq.kl_mean(got, ref), tcq.kl_mean(cq, ref)
    assert kl_gpu <= 1.25 * max(kl_cpu, 1e-3), (kl_gpu, kl_cpu)
