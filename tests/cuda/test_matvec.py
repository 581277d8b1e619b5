"""Quantized matrix-vector products (decode path, n_tok <= 16) and the embedding gather: cuda/ops_matvec.h
run through the emulator (and pyqwen._cuda on a GPU), against the C++ reference and a numpy model.

Two references per product:

1. ``pyqwen._core.testing.ref_matmul`` (the CPU forward pass's matmul). It quantizes the activations the way
   ggml's CPU backend does: Q8_K (one float scale per 256 values) for the k-quants and IQ4_XS, Q8_0 (per
   32) for Q8_0/IQ4_NL/Q4_0/Q5_0, Q8_1 (per 32, with s) for Q4_1/Q5_1, none for F16/BF16/F32. The GPU
   always uses Q8_1 per 32 values. Tolerance derivation, for output y = sum_i w_i x_i with exact
   dequantized weights w_i (both sides decode the same integer levels and scales):

     y_gpu - y_cpu = sum_i w_i (a1_i - a2_i) + (float rounding of both sums),

   where a1 / a2 are the activations as the GPU / CPU dequantize them. For the GPU, a1_i = fp16(d) * q_i
   with d = amax32/127 and q_i = round(x_i/d), so |a1_i - x_i| <= d/2 + |fp16(d) - d| * 127
   <= d * (1/2 + 127 * 2^-11) =: e1_i. For Q8_K, a2_i = d256 * q_i with a float32 d256 = amax256/127,
   |a2_i - x_i| <= d256/2 =: e2_i. Hence

     |y_gpu - y_cpu| <= sum_i |w_i| (e1_i + e2_i) + (K/32 + 32) * 2^-23 * sum_i m_i |x_i|,

   m_i being the magnitude of the weight's terms before cancellation (|w_i| plus twice the block's offset
   term, e.g. dmin*m for Q4_K); the last term bounds the float32 rounding of both sides' sums (the CPU
   adds one float per 32-value block in sequence). When the CPU uses the same
   32-value quantizer (Q8_0-activation and Q8_1-activation types) a1 == a2 bit for bit and only the float
   term remains: a sharp check that the GPU activations equal the CPU's.

2. A numpy model of exactly the GPU arithmetic: Q8_1 activations a1 (quantize_q8_1_ref, bit-exact), exact
   integer dot products, the same scale products; evaluated in float64 as y = sum_i w_i a1_i (plus, for
   Q4_1/Q5_1, m * (s - sum a1) per block, since the kernel uses the fp16 block sum s there as the CPU
   does). The only difference left is float32 rounding inside the kernel, so the tolerance is
   5e-7 * sum_i m_i |a1_i| (8 float32 ulps of the magnitude; observed errors stay ~100x below it): any
   wrong level, scale, nibble order or block index shows up orders of magnitude above it (the difference
   between the Q8_1 and Q8_K activations alone is ~500x this tolerance).

get_rows must equal pyqwen._core.dequantize bit for bit (float types: the exact float16/bfloat16 ->
float32 conversions).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from pyqwen import _core

# GGUF type ids
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, BF16 = 12, 13, 14, 20, 23, 30

NAMES = {F32: "f32", F16: "f16", Q4_0: "q4_0", Q4_1: "q4_1", Q5_0: "q5_0", Q5_1: "q5_1", Q8_0: "q8_0",
         Q4_K: "q4_K", Q5_K: "q5_K", Q6_K: "q6_K", IQ4_NL: "iq4_nl", IQ4_XS: "iq4_xs", BF16: "bf16"}
QUANT_TYPES = [Q4_K, Q5_K, Q6_K, Q8_0, IQ4_XS, IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1]
FLOAT_TYPES = [F16, BF16, F32]
ALL_TYPES = QUANT_TYPES + FLOAT_TYPES
# (block values, block bytes)
GEOMETRY = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34), IQ4_NL: (32, 18),
            Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210), IQ4_XS: (256, 136),
            F32: (1, 4), F16: (1, 2), BF16: (1, 2)}
# activation format of the CPU reference: "q8_k" per 256, "q8_32" per 32 (same as the GPU's), None: float
CPU_ACT = {Q4_K: "q8_k", Q5_K: "q8_k", Q6_K: "q8_k", IQ4_XS: "q8_k", Q8_0: "q8_32", IQ4_NL: "q8_32",
           Q4_0: "q8_32", Q5_0: "q8_32", Q4_1: "q8_32", Q5_1: "q8_32", F16: None, BF16: None, F32: None}
type_ids = pytest.mark.parametrize("wtype", ALL_TYPES, ids=[NAMES[t] for t in ALL_TYPES])

Q8_1 = np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", (32,))])


def _cpu_has(wtype: int) -> bool:
    """Whether pyqwen._core can dequantize (and so ref_matmul) this type (the legacy 32-value formats are
    being added to the CPU side separately)."""
    if wtype in FLOAT_TYPES:
        return True
    try:
        _core.dequantize(wtype, np.zeros(GEOMETRY[wtype][1], np.uint8), GEOMETRY[wtype][0])
        return True
    except (ValueError, RuntimeError):
        return False


def need_cpu(wtype: int) -> None:
    if not _cpu_has(wtype):
        pytest.skip(f"pyqwen._core has no {NAMES[wtype]} support yet")


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---- weights ------------------------------------------------------------------------------------------------
def _f16_field(vals) -> np.ndarray:
    return np.asarray(vals, np.float16).view(np.uint8).reshape(*np.shape(vals), 2)


def make_weight(wtype: int, N: int, K: int, rng: np.random.Generator) -> np.ndarray:
    """Random weight bytes (N rows of K values): random levels/scales bytes with finite fp16 scale fields,
    so every bit pattern of the packed formats is exercised. Returns a uint8 array of N * row_bytes; skips
    the test when the CPU reference lacks the type."""
    need_cpu(wtype)
    if wtype in FLOAT_TYPES:
        w = rng.normal(0, 0.05, (N, K)).astype(np.float32)
        if wtype == F32:
            return w.view(np.uint8).reshape(-1)
        if wtype == F16:
            return w.astype(np.float16).view(np.uint8).reshape(-1)
        bits = w.view(np.uint32)
        bf = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        return bf.view(np.uint8).reshape(-1)
    bv, bb = GEOMETRY[wtype]
    nb = K // bv
    b = rng.integers(0, 256, (N, nb, bb), dtype=np.uint8)
    shape = (N, nb)
    d = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    if wtype in (Q4_K, Q5_K):
        b[..., 0:2] = _f16_field(np.abs(d) * 1e-3)          # d
        b[..., 2:4] = _f16_field(np.abs(d[:, ::-1]) * 5e-4)  # dmin
    elif wtype == Q6_K:
        b[..., 208:210] = _f16_field(d * 2e-4)
    elif wtype == IQ4_XS:
        b[..., 0:2] = _f16_field(d * 4e-4)
    elif wtype in (Q4_1, Q5_1):
        b[..., 0:2] = _f16_field(np.abs(d) * 4e-3)
        b[..., 2:4] = _f16_field(rng.normal(0, 0.03, shape))
    else:  # Q8_0, Q4_0, Q5_0, IQ4_NL
        scale = {Q8_0: 4e-4, Q4_0: 6e-3, Q5_0: 3e-3, IQ4_NL: 4e-4}[wtype]
        b[..., 0:2] = _f16_field(d * scale)
    return b.reshape(-1)


def dequant(wtype: int, wbytes: np.ndarray, N: int, K: int) -> np.ndarray:
    """float32 [N, K]: the CPU dequantizer (quant types) or the exact float conversions."""
    if wtype == F32:
        return wbytes.view(np.float32).reshape(N, K)
    if wtype == F16:
        return wbytes.view(np.float16).astype(np.float32).reshape(N, K)
    if wtype == BF16:
        return (wbytes.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(N, K)
    return np.asarray(_core.dequantize(wtype, wbytes, N * K)).reshape(N, K)


def offset_terms(wtype: int, wbytes: np.ndarray, N: int, K: int) -> np.ndarray:
    """|offset| of each weight value's decoding (x = scale*q + offset), float64 [N, K]: the term that cancels
    against scale*q, e.g. dmin*m of a Q4_K sub-block or 8*d for Q4_0. Zero for the symmetric formats."""
    out = np.zeros((N, K))
    if wtype in (Q4_K, Q5_K):
        bb = GEOMETRY[wtype][1]
        blk = wbytes.reshape(N, K // 256, bb)
        dmin = blk[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        sc = blk[..., 4:16].astype(np.int64)
        m = np.empty((N, K // 256, 8))
        for j in range(8):
            m[..., j] = (sc[..., j + 4] & 63) if j < 4 else ((sc[..., j + 4] >> 4) | ((sc[..., j] >> 6) << 4))
        out = np.repeat(np.abs(dmin[..., None] * m), 32, axis=-1).reshape(N, K)
    elif wtype in (Q4_0, Q5_0, Q4_1, Q5_1):
        bb = GEOMETRY[wtype][1]
        blk = wbytes.reshape(N, K // 32, bb)
        if wtype in (Q4_0, Q5_0):
            d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
            off = np.abs(d) * (8 if wtype == Q4_0 else 16)
        else:
            off = np.abs(blk[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64))
        out = np.repeat(off[..., None], 32, axis=-1).reshape(N, K)
    return out


def block_m(wtype: int, wbytes: np.ndarray, N: int, K: int) -> np.ndarray:
    """m (fp16 at offset 2) of every 32-block of a Q4_1/Q5_1 weight, float64 [N, K/32]."""
    blk = wbytes.reshape(N, K // 32, GEOMETRY[wtype][1])
    return blk[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)


# ---- activations ---------------------------------------------------------------------------------------------
def quantize_q8_1_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_1_ref in float32 (the GPU's quantize_q8_1, bit-exact); rows of K % 32 == 0."""
    rows, n = x.shape
    xb = x.astype(np.float32).reshape(rows, n // 32, 32)
    amax = np.abs(xb).max(axis=-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (xb * inv[..., None]).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)).astype(np.int8)
    out = np.zeros((rows, n // 32), Q8_1)
    out["d"] = d.astype(np.float16)
    out["s"] = (q.astype(np.int32).sum(-1).astype(np.float32) * d).astype(np.float16)
    out["qs"] = q
    return out


def q8_1_values(x: np.ndarray):
    """(a1, d32, s): the GPU's dequantized activations [T, K] (float64), their per-value block scale
    (float32 d before the fp16 rounding) and the fp16 block sums s [T, K/32]."""
    q = quantize_q8_1_ref(x)
    a1 = q["qs"].astype(np.float64) * q["d"].astype(np.float64)[..., None]
    d32 = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1).astype(np.float32) / np.float32(127)
    return a1.reshape(x.shape), np.repeat(d32.astype(np.float64), 32, axis=-1), q["s"].astype(np.float64)


def q8_k_scale(x: np.ndarray) -> np.ndarray:
    """Per-value d256 = amax/127 of the CPU's Q8_K blocks, [T, K]."""
    amax = np.abs(x.reshape(x.shape[0], -1, 256)).max(-1).astype(np.float64)
    return np.repeat(amax / 127.0, 256, axis=-1)


# ---- expectations --------------------------------------------------------------------------------------------
E1 = 0.5 + 127 * 2.0**-11  # GPU Q8_1 rounding per value, in units of d32 (see the module docstring)
MODEL_RTOL = 5e-7


def gpu_model(wtype, wbytes, w, x):
    """(y_model, tol): numpy model of the decode kernel's arithmetic and its float32 tolerance."""
    N, K = w.shape
    mag = np.abs(w.astype(np.float64)) + 2 * offset_terms(wtype, wbytes, N, K)
    if wtype in FLOAT_TYPES:
        a = x.astype(np.float64)
        return a @ w.T.astype(np.float64), MODEL_RTOL * (np.abs(a) @ mag.T) + 1e-30
    a1, _, s = q8_1_values(x)
    y = a1 @ w.T.astype(np.float64)
    if wtype in (Q4_1, Q5_1):  # kernel: m * s instead of m * sum(a1) per block
        blk_sum = a1.reshape(x.shape[0], -1, 32).sum(-1)
        y += (s - blk_sum) @ block_m(wtype, wbytes, N, K).T
    return y, MODEL_RTOL * (np.abs(a1) @ mag.T) + 1e-30


def ref_tolerance(wtype, wbytes, w, x):
    """Bound on |y_gpu - ref_matmul| from the two activation roundings (module docstring)."""
    N, K = w.shape
    aw = np.abs(w.astype(np.float64))
    mag = aw + 2 * offset_terms(wtype, wbytes, N, K)
    tol = (K / 32 + 32) * 2.0**-23 * (np.abs(x.astype(np.float64)) @ mag.T) + 1e-30
    if CPU_ACT[wtype] == "q8_k":
        _, d32, _ = q8_1_values(x)
        tol += (E1 * d32 + 0.5 * q8_k_scale(x)) @ aw.T
    return tol


def check_matmul(got, wtype, wbytes, w, x, what=""):
    N, K = w.shape
    y_model, tol_model = gpu_model(wtype, wbytes, w, x)
    err = np.abs(got - y_model)
    assert np.all(err <= tol_model), (
        f"{what}: vs GPU-arithmetic model, worst err/tol = {np.max(err / tol_model):.3g}")
    ref = np.asarray(_core.testing.ref_matmul(wtype, wbytes, K, N, x))
    tol_ref = ref_tolerance(wtype, wbytes, w, x)
    err = np.abs(got - ref)
    assert np.all(err <= tol_ref), f"{what}: vs ref_matmul, worst err/tol = {np.max(err / tol_ref):.3g}"


def make_x(rng, n_tok, K):
    # mixed magnitudes per token and a few outliers, as real activations
    x = rng.normal(0, 1, (n_tok, K)) * rng.choice([0.05, 1.0, 8.0], (n_tok, 1))
    x[:, rng.integers(0, K, 3)] *= 20
    return x.astype(np.float32)


# ---- tests ---------------------------------------------------------------------------------------------------
def _k_for(wtype):
    return 512 if GEOMETRY[wtype][0] == 256 else 320


@pytest.mark.parametrize("n_tok,K", [(1, 32), (3, 256), (8, 5120), (2, 96)])
def test_quantize_act_bit_exact(ops, n_tok, K):
    """The decode path's Q8_1 activations (split layout) equal ggml's quantize_row_q8_1_ref bit for bit."""
    rng = rng_for("act", n_tok, K)
    x = make_x(rng, n_tok, K)
    x[0, :32] = 0.0  # an all-zero block: d = 0, q = 0
    qs, ds = ops.quantize_act(x)
    ref = quantize_q8_1_ref(x)
    np.testing.assert_array_equal(qs, ref["qs"].reshape(n_tok, K))
    np.testing.assert_array_equal(ds[..., 0], ref["d"].astype(np.float32))
    np.testing.assert_array_equal(ds[..., 1], ref["s"].astype(np.float32))


@type_ids
def test_get_rows_bit_exact(ops, wtype):
    rng = rng_for("get_rows", wtype)
    N, K = 13, _k_for(wtype) * 2
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    ids = np.array([0, N - 1, 5, 5, 2, N - 1, 7], np.int32)
    np.testing.assert_array_equal(ops.get_rows(wtype, wb, K, ids), w[ids])


def test_get_rows_empty(ops):
    wb = make_weight(Q4_K, 3, 256, rng_for("empty"))
    assert ops.get_rows(Q4_K, wb, 256, np.zeros(0, np.int32)).shape == (0, 256)


@type_ids
@pytest.mark.parametrize("n_tok", [1, 2, 3, 4, 5, 6, 7, 8])
def test_matmul_decode(ops, wtype, n_tok):
    rng = rng_for("decode", wtype, n_tok)
    N, K = 37, _k_for(wtype)
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_matmul(ops.matmul(wtype, wb, K, N, x), wtype, wb, w, x, f"{NAMES[wtype]} n_tok={n_tok}")


@type_ids
@pytest.mark.parametrize("N,K256,n_tok", [(1, 1, 4), (7, 3, 2), (67, 5, 7), (5, 18, 3)])
def test_matmul_decode_shapes(ops, wtype, N, K256, n_tok):
    """Odd N (not a multiple of the rows per CTA), K = 256 * K256 (chunks of 32 units not filling the row;
    K = 4608: 4 warps per row, 4.5 chunks per row for the 32-value formats, 18 for the float ones)."""
    rng = rng_for("shapes", wtype, N, K256, n_tok)
    K = 256 * K256
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_matmul(ops.matmul(wtype, wb, K, N, x), wtype, wb, w, x, f"{NAMES[wtype]} N={N} K={K} n_tok={n_tok}")


@pytest.mark.parametrize("wtype,N,K,n_tok", [(Q6_K, 2051, 256, 3), (Q4_K, 2049, 512, 1), (F32, 2050, 256, 2),
                                             (Q6_K, 8195, 256, 2), (Q8_0, 8193, 64, 2)],
                         ids=["q6_K-2051", "q4_K-2049", "f32-2050", "q6_K-8195", "q8_0-8193"])
def test_matmul_row_split(ops, wtype, N, K, n_tok):
    """2048 <= N < 8192 runs two warps per row, N >= 8192 one (the big projections and the output matrix);
    smaller N (the other tests) four."""
    rng = rng_for("wide", wtype, N, K)
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_matmul(ops.matmul(wtype, wb, K, N, x), wtype, wb, w, x, f"{NAMES[wtype]} N={N}")


@type_ids
@pytest.mark.parametrize("n_tok", [9, 12, 16])
def test_matmul_two_passes(ops, wtype, n_tok):
    """9..16 tokens: two decode launches (8 + the rest)."""
    rng = rng_for("passes", wtype, n_tok)
    N, K = 29, _k_for(wtype)
    wb = make_weight(wtype, N, K, rng)
    w = dequant(wtype, wb, N, K)
    x = make_x(rng, n_tok, K)
    check_matmul(ops.matmul(wtype, wb, K, N, x), wtype, wb, w, x, f"{NAMES[wtype]} n_tok={n_tok}")


def test_matmul_zero_rows_and_tokens(ops):
    wb = make_weight(Q4_K, 5, 256, rng_for("zero"))
    assert ops.matmul(Q4_K, wb, 256, 5, np.zeros((0, 256), np.float32)).shape == (0, 5)
    assert ops.matmul(Q4_K, np.zeros(0, np.uint8), 256, 0, np.ones((3, 256), np.float32)).shape == (3, 0)


def test_matmul_zero_activations(ops):
    """An all-zero block gives d = 0 (no division by zero anywhere): exact zeros out."""
    for wtype in (Q4_K, Q6_K, Q4_1, IQ4_XS):
        wb = make_weight(wtype, 9, 512, rng_for("zeros", wtype))
        y = ops.matmul(wtype, wb, 512, 9, np.zeros((2, 512), np.float32))
        assert not np.any(y), NAMES[wtype]


@pytest.mark.parametrize("bad", ["type", "k"])
def test_matmul_rejects(ops, bad):
    wb = make_weight(Q4_K, 2, 256, rng_for("bad"))
    x = np.ones((1, 256), np.float32)
    with pytest.raises(RuntimeError):
        if bad == "type":
            ops.matmul(10, wb, 256, 2, x)  # Q2_K: not supported
        else:
            ops.matmul(Q4_K, wb[: 2 * 72], 128, 2, np.ones((1, 128), np.float32))  # K not a multiple of 256


# ---- fused SwiGLU ----------------------------------------------------------------------------------------------
def silu(v):
    with np.errstate(over="ignore"):  # exp(-v) -> inf for very negative v gives silu = -0, as wanted
        return v / (1.0 + np.exp(-v))


def check_swiglu(got, tg, wgb, tu, wub, x, N, K):
    wg, wu = dequant(tg, wgb, N, K), dequant(tu, wub, N, K)
    g, tol_g = gpu_model(tg, wgb, wg, x)
    u, tol_u = gpu_model(tu, wub, wu, x)
    expect = silu(g) * u
    # |d silu/dg| <= 1.1; a relative 1e-6 covers float32 silu/exp
    tol = 1.1 * tol_g * (np.abs(u) + tol_u) + np.abs(silu(g)) * tol_u + 1e-6 * np.abs(expect) + 1e-30
    err = np.abs(got - expect)
    assert np.all(err <= tol), f"swiglu vs model, worst err/tol = {np.max(err / tol):.3g}"


@pytest.mark.parametrize("tg,tu", [(Q4_K, Q4_K), (Q6_K, Q6_K), (Q8_0, Q8_0), (IQ4_XS, IQ4_XS), (Q5_1, Q5_1),
                                   (F16, F16), (Q4_K, Q6_K), (F16, Q4_K)],
                         ids=lambda t: NAMES[t])
@pytest.mark.parametrize("n_tok", [1, 3, 8, 11])
def test_matmul_swiglu_decode(cuda_module, ops, tg, tu, n_tok):
    rng = rng_for("swiglu", tg, tu, n_tok)
    N, K = 45, 512
    wgb, wub = make_weight(tg, N, K, rng), make_weight(tu, N, K, rng)
    x = make_x(rng, n_tok, K)
    got = ops.matmul_swiglu(tg, wgb, tu, wub, K, N, x)
    check_swiglu(got, tg, wgb, tu, wub, x, N, K)
    if cuda_module.emulated:
        # the fused kernel does the per-row arithmetic of two separate products and swiglu_f32's silu: bit
        # for bit under the emulator (on a GPU, FMA contraction may differ between the instantiations)
        g = ops.matmul(tg, wgb, K, N, x)
        u = ops.matmul(tu, wub, K, N, x)
        np.testing.assert_array_equal(got, ops.swiglu(g, u))
