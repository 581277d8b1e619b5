"""Block formats, reference quantizers, dequantizers and quantized dot products (csrc/quants*.cpp).

References:
- ``gguf.quants.dequantize`` (pure numpy, from llama.cpp's gguf-py) for every dequantizer;
- llama.cpp's own ggml through ctypes (``tests/ggml_ref.py``) for byte identity of the quantizers and
  for the dot products; those tests skip with the reason when llama-cpp-python is not installed.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

gguf_quants = pytest.importorskip("gguf.quants")
core = pytest.importorskip("pyqwen._core")
if not hasattr(core, "quantize"):
    pytest.skip("pyqwen._core was built without the quant bindings (bind_quants)", allow_module_level=True)

from ggml_ref import REF, SKIP_REASON, first_diff  # noqa: E402  (tests/ is on sys.path under pytest)

Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS = 8, 9, 12, 13, 14, 15, 20, 23
WEIGHT_QUANTIZERS = [Q8_0, Q4_K, Q5_K, Q6_K]
ALL_WEIGHT_TYPES = [Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS]
NAMES = {Q8_0: "Q8_0", Q8_1: "Q8_1", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", Q8_K: "Q8_K", IQ4_NL: "IQ4_NL",
         IQ4_XS: "IQ4_XS"}
BLOCK = {Q8_0: (32, 34), Q8_1: (32, 36), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210), Q8_K: (256, 292),
         IQ4_NL: (32, 18), IQ4_XS: (256, 136)}
# Byte offsets of the fp16 scale fields in each block (random bytes there could be NaN/Inf).
FP16_FIELDS = {Q8_0: [0], Q4_K: [0, 2], Q5_K: [0, 2], Q6_K: [208], IQ4_NL: [0], IQ4_XS: [0]}

needs_ggml = pytest.mark.skipif(REF is None, reason=f"byte-identity reference unavailable: {SKIP_REASON}")


def tname(t):
    return NAMES[t]


def random_blocks(t: int, nblocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random block bytes whose fp16 scales are finite (signed, spread over many binades)."""
    bs, bb = BLOCK[t]
    raw = rng.integers(0, 256, size=(nblocks, bb), dtype=np.uint8)
    for off in FP16_FIELDS[t]:
        scale = (rng.standard_normal(nblocks) * 10.0 ** rng.uniform(-6, 2, nblocks)).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(nblocks, 2)
    return raw


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------------------------------------------
# Dequantizers: bit-exact with gguf-py's numpy implementation (which mirrors ggml's float arithmetic).


@pytest.mark.parametrize("t", ALL_WEIGHT_TYPES, ids=tname)
def test_dequantize_matches_gguf(t):
    rng = np.random.default_rng(t)
    bs, _ = BLOCK[t]
    for nblocks in (1, 3, 64):
        raw = random_blocks(t, nblocks, rng)
        ours = core.dequantize(t, raw.reshape(-1), nblocks * bs)
        ref = gguf_quants.dequantize(raw, t).reshape(-1).astype(np.float32)
        assert np.array_equal(bits(ours), bits(ref)), f"{tname(t)}: dequantize differs from gguf"


@needs_ggml
@pytest.mark.parametrize("t", ALL_WEIGHT_TYPES + [Q8_K], ids=tname)
def test_dequantize_matches_ggml(t):
    rng = np.random.default_rng(100 + t)
    bs, bb = BLOCK[t]
    if t == Q8_K:  # fp32 d, int8 qs, int16 bsums (ignored by to_float)
        raw = rng.integers(0, 256, size=(5, bb), dtype=np.uint8)
        raw[:, :4] = (rng.standard_normal(5).astype(np.float32) * 1e-2).view(np.uint8).reshape(5, 4)
    else:
        raw = random_blocks(t, 5, rng)
    ours = core.dequantize(t, raw.reshape(-1), 5 * bs)
    ref = REF.dequantize(t, raw.reshape(-1), 5 * bs)
    assert np.array_equal(bits(ours), bits(ref))


def test_dequantize_accepts_any_byte_buffer():
    rng = np.random.default_rng(1)
    raw = random_blocks(Q4_K, 2, rng).reshape(-1)
    ref = core.dequantize(Q4_K, raw, 512)
    for buf in (raw.tobytes(), bytearray(raw.tobytes()), memoryview(raw.tobytes()), raw.view(np.int8)):
        assert np.array_equal(core.dequantize(Q4_K, buf, 512), ref)


# ---------------------------------------------------------------------------------------------------
# Quantizers: byte-identical with ggml's quantize_row_*_ref (ggml_quantize_chunk without imatrix).


def _rows(kind: str, nrows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal((nrows, n))
    elif kind == "weights":  # realistic: small std, per-row scale variation, heavy-ish tails
        x = rng.standard_t(5, (nrows, n)) * 0.02 * rng.uniform(0.2, 3.0, (nrows, 1))
    elif kind == "uniform_pos":  # all positive: exercises the min clamp (min > 0 -> 0)
        x = rng.uniform(0.1, 2.0, (nrows, n))
    elif kind == "uniform_neg":
        x = -rng.uniform(0.1, 2.0, (nrows, n))
    elif kind == "zeros":
        x = np.zeros((nrows, n))
    elif kind == "constant":
        x = np.full((nrows, n), 0.37)
    elif kind == "constant_neg":
        x = np.full((nrows, n), -1.5)
    elif kind == "huge":
        x = rng.standard_normal((nrows, n)) * 3e4
    elif kind == "very_huge":  # fp16 scales overflow to inf; still must match ggml's bytes
        x = rng.standard_normal((nrows, n)) * 1e8
    elif kind == "tiny":
        x = rng.standard_normal((nrows, n)) * 1e-6
    elif kind == "subnormal":  # fp16 scales underflow; fp32 1/d overflows in Q8_0
        x = rng.standard_normal((nrows, n)) * 1e-39
    elif kind == "outlier":
        x = rng.standard_normal((nrows, n)) * 0.01
        x[:, rng.integers(0, n, nrows)] = 25.0
        x[np.arange(nrows), rng.integers(0, n, nrows)] = -40.0
    elif kind == "sparse":
        x = rng.standard_normal((nrows, n)) * (rng.uniform(size=(nrows, n)) < 0.05)
    elif kind == "grid":  # exact multiples of 1/8: many rounding ties in nearest_int/roundf
        x = rng.integers(-64, 65, (nrows, n)) / 8.0
    elif kind == "random_bits":  # every finite float32 bit pattern is fair game (NaN/Inf -> 0)
        x = rng.integers(0, 2**32, (nrows, n), dtype=np.uint64).astype(np.uint32).view(np.float32)
        x = np.where(np.isfinite(x), x, np.float32(0))
    elif kind == "wild_magnitudes":  # per-value magnitudes from subnormal to near FLT_MAX
        x = rng.standard_normal((nrows, n)) * 10.0 ** rng.uniform(-44, 37, (nrows, n))
    elif kind == "mixed_blocks":  # magnitudes change block to block inside a row
        x = rng.standard_normal((nrows, n)) * 10.0 ** rng.integers(-8, 5, (nrows, n // 32)).repeat(32, axis=1)
    else:
        raise AssertionError(kind)
    return np.ascontiguousarray(x, dtype=np.float32)


KINDS = ["normal", "weights", "uniform_pos", "uniform_neg", "zeros", "constant", "constant_neg", "huge",
         "very_huge", "tiny", "subnormal", "outlier", "sparse", "grid", "mixed_blocks", "random_bits",
         "wild_magnitudes"]


@needs_ggml
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", WEIGHT_QUANTIZERS, ids=tname)
def test_quantize_byte_identical_to_ggml(t, kind):
    rng = np.random.default_rng(zlib.crc32(f"{t}-{kind}".encode()))
    for nrows, n in ((1, 256), (3, 512), (7, 1280)):  # odd row counts, several blocks per row
        x = _rows(kind, nrows, n, rng)
        ours = core.quantize(t, x)
        ref = REF.quantize(t, x)
        assert ours.dtype == np.uint8 and ours.shape == ref.shape
        assert np.array_equal(ours, ref), f"{tname(t)} {kind} {nrows}x{n}: " + first_diff(ours, ref, BLOCK[t][1])


@needs_ggml
@pytest.mark.parametrize("t", WEIGHT_QUANTIZERS, ids=tname)
def test_quantize_byte_identical_many_random_rows(t):
    """Many rows of varied statistics: the k-quant searches have rare near-tie decisions."""
    rng = np.random.default_rng(7 + t)
    x = np.concatenate([_rows(k, 16, 1024, rng) for k in ("normal", "weights", "outlier", "mixed_blocks")])
    ours = core.quantize(t, x, n_threads=2)
    ref = REF.quantize(t, x)
    assert np.array_equal(ours, ref), first_diff(ours, ref, BLOCK[t][1])


def test_q8_0_matches_gguf_quantizer():
    """gguf-py's Q8_0 quantizer is bit-exact with ggml's: a byte check that needs no llama_cpp."""
    rng = np.random.default_rng(3)
    for kind in ("normal", "grid", "zeros", "outlier", "tiny"):
        x = _rows(kind, 5, 96, rng)
        ref = gguf_quants.quantize(x, Q8_0).reshape(-1)
        assert np.array_equal(core.quantize(Q8_0, x), ref), kind


@needs_ggml
@pytest.mark.parametrize("t", [Q8_K, Q8_1], ids=tname)
def test_activation_quantizers_match_ggml_ref(t):
    rng = np.random.default_rng(11)
    for kind in ("normal", "outlier", "grid", "huge", "tiny", "mixed_blocks"):
        x = _rows(kind, 1, 1024, rng)
        ours = core.quantize(t, x)
        ref = REF.from_float_ref(t, x)
        assert np.array_equal(ours, ref), f"{kind}: " + first_diff(ours, ref, BLOCK[t][1])
    # All-zero Q8_K block: ggml writes d = 0 and qs = 0 but leaves bsums untouched; we zero them.
    z = core.quantize(Q8_K, np.zeros(256, np.float32)) if t == Q8_K else None
    if z is not None:
        assert not z.any()


@pytest.mark.parametrize("t", WEIGHT_QUANTIZERS, ids=tname)
def test_quantize_roundtrip_error(t):
    """Sanity independent of ggml: dequantize(quantize(x)) is close to x for each format."""
    rng = np.random.default_rng(5)
    x = _rows("normal", 4, 1024, rng)
    y = core.dequantize(t, core.quantize(t, x), x.size).reshape(x.shape)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    limit = {Q8_0: 0.006, Q6_K: 0.02, Q5_K: 0.04, Q4_K: 0.08}[t]
    assert rel < limit, rel


@pytest.mark.parametrize("t", WEIGHT_QUANTIZERS + [Q8_K], ids=tname)
def test_quantize_independent_of_threads_and_row_split(t):
    rng = np.random.default_rng(9)
    x = _rows("weights", 13, 512, rng)
    one = core.quantize(t, x, n_threads=1)
    assert np.array_equal(core.quantize(t, x, n_threads=5), one)
    # Rows are independent: quantizing row by row gives the same bytes.
    assert np.array_equal(np.concatenate([core.quantize(t, r) for r in x]), one)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("t", WEIGHT_QUANTIZERS, ids=tname)
def test_quantize_rejects_non_finite(t, bad):
    x = np.ones((3, 512), np.float32)
    x[2, 300] = bad
    with pytest.raises(ValueError, match=r"non-finite.*row 2, column 300"):
        core.quantize(t, x, n_threads=2)


# ---------------------------------------------------------------------------------------------------
# Argument validation: every bad input is a Python exception, never a crash.


def test_argument_validation():
    x = np.zeros((2, 256), np.float32)
    w = core.quantize(Q4_K, x)
    bad_calls = [
        lambda: core.quantize(99, x),                                  # unknown type
        lambda: core.quantize(0, x),                                   # F32 is not a quantized type
        lambda: core.quantize(IQ4_XS, x),                              # read-only format
        lambda: core.quantize(Q4_K, x.astype(np.float64)),             # wrong dtype
        lambda: core.quantize(Q4_K, np.zeros((2, 100), np.float32)),   # not a block multiple
        lambda: core.quantize(Q4_K, np.zeros((2, 2, 256), np.float32)),  # 3-D
        lambda: core.dequantize(Q4_K, w, 513),                         # n not a block multiple
        lambda: core.dequantize(Q4_K, w, 256),                         # byte length mismatch
        lambda: core.dequantize(Q4_K, w, -256),                        # negative
        lambda: core.dequantize(Q4_K, w[:-1], 512),                    # truncated data
        lambda: core.dequantize(Q4_K, w.view(np.uint16), 512),         # not a byte buffer
        lambda: core.dequantize(Q4_K, np.zeros(288, np.uint8)[::2], 256),  # non-contiguous
        lambda: core.dequantize(1, w, 512),                            # F16: not handled here
        lambda: core.testing.quant_vec_dot(Q4_K, w, np.zeros(512, np.float64)),
        lambda: core.testing.quant_vec_dot(Q4_K, w, np.zeros(256, np.float32)),  # w holds 2 rows
        lambda: core.testing.quant_vec_dot(Q8_K, core.quantize(Q8_K, x[0]), x[0]),  # activation format
        lambda: core.testing.quant_vec_dot(Q4_K, w[:144], np.zeros((1, 256), np.float32)),  # x must be 1-D
        lambda: core.testing.quant_vec_dot_q(Q4_K, w[:144], np.zeros(291, np.uint8), 256),
        lambda: core.testing.quant_matmul_ref(Q4_K, w, 256, 3, x),             # n_out inconsistent
        lambda: core.testing.quant_matmul_ref(Q4_K, w, 512, 1, x),             # x rows != n_in
        lambda: core.testing.quant_matmul_ref(Q4_K, w, 0, 0, x),               # n_in must be > 0
        lambda: core.testing.quant_matmul_ref(Q4_K, w, 256, -2, x),
        lambda: core.testing.quant_matmul_ref(Q4_K, w, 1 << 62, 2, x),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {i} did not raise")
    # Objects that are not byte buffers at all are a TypeError (pybind11's argument conversion).
    with pytest.raises(TypeError):
        core.dequantize(Q4_K, [0] * 288, 512)
    # Empty inputs are fine.
    assert core.quantize(Q4_K, np.zeros((0, 256), np.float32)).size == 0
    assert core.dequantize(Q6_K, b"", 0).size == 0


def test_type_info():
    info = core.testing.quant_type_info(Q4_K)
    assert info == {"type": Q4_K, "name": "q4_K", "block_size": 256, "block_bytes": 144, "vec_dot_type": Q8_K,
                    "has_quantizer": True, "has_vec_dot": True}
    assert core.testing.quant_type_info(IQ4_NL)["vec_dot_type"] == Q8_0
    assert core.testing.quant_type_info(Q8_K)["has_vec_dot"] is False
    assert core.testing.quant_type_info(0) is None


# ---------------------------------------------------------------------------------------------------
# Dot products.


def _weights(t: int, n_out: int, n_in: int, rng: np.random.Generator) -> np.ndarray:
    """Realistic quantized weight rows: our quantizer where we have one, ggml's (IQ4) or random blocks."""
    if t in WEIGHT_QUANTIZERS:
        return core.quantize(t, _rows("weights", n_out, n_in, rng))
    if REF is not None:
        return REF.quantize(t, _rows("weights", n_out, n_in, rng))
    return random_blocks(t, n_out * n_in // BLOCK[t][0], rng).reshape(-1)


@pytest.mark.parametrize("t", ALL_WEIGHT_TYPES, ids=tname)
def test_simd_vec_dot_bit_identical_to_reference(t):
    """The SIMD kernels (AVX2 where the CPU has it: core.testing.quant_simd()) compute only the integer
    sums and leave the float steps to the reference code, so they must agree to the bit, also for
    activation bytes our quantizer never produces (-128) and for random weight bytes."""
    rng = np.random.default_rng(51 + t)
    vdt = core.testing.quant_type_info(t)["vec_dot_type"]
    n = 8 * BLOCK[t][0]
    nb_act = n // BLOCK[vdt][0]
    for trial in range(6):
        w = random_blocks(t, n // BLOCK[t][0], rng).reshape(-1) if trial % 2 else _weights(t, 1, n, rng)
        if trial < 4:
            act = core.quantize(vdt, _rows("normal", 1, n, rng))
        else:  # raw random activation bytes with sane scales (bsums need not match qs: dot uses both)
            act = rng.integers(0, 256, (nb_act, BLOCK[vdt][1]), dtype=np.uint8)
            act[:, :2] = 0  # keep the scale finite and small: fp16 d or low bytes of fp32 d
            act[:, 1] = 0x3C if vdt == Q8_0 else 0
            if vdt == Q8_K:
                act[:, :4] = np.full(nb_act, 1e-3, np.float32).view(np.uint8).reshape(nb_act, 4)
            if trial == 5:  # extreme: every activation -128
                act[:, (2 if vdt == Q8_0 else 4):(34 if vdt == Q8_0 else 260)] = 0x80
            act = act.reshape(-1)
        fast = core.testing.quant_vec_dot_q(t, w, act, n)
        ref = core.testing.quant_vec_dot_q(t, w, act, n, reference=True)
        assert np.float32(fast).view(np.uint32) == np.float32(ref).view(np.uint32), (core.testing.quant_simd(), trial)


@needs_ggml
@pytest.mark.parametrize("t", ALL_WEIGHT_TYPES, ids=tname)
def test_vec_dot_matches_ggml_generic(t):
    """Same quantized inputs into our vec_dot and ggml's scalar ggml_vec_dot_*_generic.

    Q8_0 and IQ4 follow ggml's float order (bit-equal when both are compiled without FMA contraction;
    llama-cpp-python builds ggml-cpu with -march=native and GCC's default -ffp-contract=fast, so its
    "scalar" kernel may fuse `sums += d*isum`). The k-quants' spec is not ggml's order: one exact int32
    per super-block and one or two fused multiply-adds into one float (kx_vec_dot), where ggml keeps
    8 float lane sums; both round each super-block's terms and their running sum a few times, on 8
    super-blocks here. Tolerance: 8 float32 roundings of the sum of absolute block contributions, i.e.
    8 * 2^-24 * sum|w||x| (a bound the difference stays far below: the roundings do not line up).
    """
    rng = np.random.default_rng(21 + t)
    vdt = core.testing.quant_type_info(t)["vec_dot_type"]
    n = 2048
    w = _weights(t, 8, n, rng).reshape(8, -1)
    for r in range(8):
        x = _rows("normal", 1, n, rng)[0] * (10.0 ** (r - 4))
        act = REF.quantize_act(t, x) if vdt == Q8_0 else REF.from_float_ref(vdt, x)
        ours = core.testing.quant_vec_dot_q(t, w[r], act, n)
        ref = REF.vec_dot(t, w[r], act, n, generic=True)
        wf = core.dequantize(t, w[r], n).astype(np.float64)
        xf = core.dequantize(vdt, act, n).astype(np.float64)
        tol = 8 * 2.0 ** -24 * np.sum(np.abs(wf * xf))
        assert abs(ours - ref) <= tol, (r, ours, ref, tol)


def _kx_scales_mins(raw: np.ndarray):
    """Q4_K/Q5_K: the 8 (scale, min) pairs of each block from its 12 scale bytes (ggml get_scale_min_k4)."""
    q = raw[:, 4:16].astype(np.int64)
    sc = np.empty((raw.shape[0], 8), np.int64)
    m = np.empty_like(sc)
    for j in range(8):
        if j < 4:
            sc[:, j], m[:, j] = q[:, j] & 63, q[:, j + 4] & 63
        else:
            sc[:, j] = (q[:, j + 4] & 0xF) | ((q[:, j - 4] >> 6) << 4)
            m[:, j] = (q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4)
    return sc, m


@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=tname)
def test_kquant_dot_spec_vs_float64(t):
    """The k-quant reference dot (the spec of every SIMD kernel and the GEMM) against an independent
    float64 dot of gguf-py's dequantized weights and the exactly dequantized Q8_K activations (d * q,
    exact in float64), within a derived bound.

    Let w_i = d sc q_i - dmin m (exact) and a_i = d_a q8_i. The spec's integers are exact, so it differs
    from E = sum_i w_i a_i only by float rounding: per super-block the products d_w d_a and dmin_w d_a
    and the conversion of isum (up to 2^27: not exact in float32) round once each (relative 2^-24), and
    each of the <= 2 nb fused multiply-adds rounds the running sum once, which is at most S = sum_i
    (|d sc q_i| + |dmin m|) |a_i|; so |spec - E| <= (2 nb + 3) 2^-24 S. gguf-py's float32 dequantizer
    rounds d*sc, its product with q, dmin*m and the difference: |W_i - w_i| <= 3 * 2^-24 (|d sc q_i| +
    |dmin m|), adding 3 * 2^-24 S. Bound: (2 nb + 6) * 2^-24 * S * 1.01. S is computed from the blocks'
    own fields (|d sc q_i| <= |W_i| + |dmin m| up to that rounding); Q6_K has no min: S = sum |W_i a_i|.
    """
    rng = np.random.default_rng(61 + t)
    n, rows = 2048, 12
    nb = n // 256
    w = np.concatenate([_weights(t, rows // 2, n, rng).reshape(-1),
                        random_blocks(t, rows // 2 * nb, rng).reshape(-1)]).reshape(rows, -1)
    for r in range(rows):
        x = _rows("normal", 1, n, rng)[0] * np.float32(10.0 ** (r % 5 - 2))
        if r == rows - 1:
            x = np.abs(x)  # activations of one sign: no cancellation in the min term
        act = core.quantize(Q8_K, x)
        ab = act.reshape(nb, BLOCK[Q8_K][1])
        a = (ab[:, :4].copy().view(np.float32).astype(np.float64) * ab[:, 4:260].view(np.int8)).reshape(-1)
        W = gguf_quants.dequantize(w[r].reshape(nb, -1), t).reshape(-1).astype(np.float64)
        if t == Q6_K:
            S = np.sum(np.abs(W * a))
        else:
            raw = w[r].reshape(nb, -1)
            _, m = _kx_scales_mins(raw)
            dmin = raw[:, 2:4].copy().view(np.float16).astype(np.float64)
            ml = np.repeat(np.abs(dmin * m), 32, axis=1).reshape(-1)
            S = np.sum((np.abs(W) + 2 * ml) * np.abs(a))
        spec = core.testing.quant_vec_dot_q(t, w[r], act, n, reference=True)
        exact = float(np.dot(W, a))
        bound = (2 * nb + 6) * 2.0 ** -24 * S * 1.01
        assert abs(spec - exact) <= bound, (r, spec, exact, bound)
        # The SIMD dot of quants.h is the spec's bits.
        assert np.float32(core.testing.quant_vec_dot_q(t, w[r], act, n)).view(np.uint32) == \
            np.float32(spec).view(np.uint32)


@needs_ggml
@pytest.mark.parametrize("t", ALL_WEIGHT_TYPES, ids=tname)
def test_vec_dot_close_to_ggml_cpu_backend(t):
    """Against the kernels ggml's CPU backend actually runs here (AVX2/AVX512, own activation quantizer):
    different summation order and FMA, so compare at 1e-5 of sum|w||x| plus the activation quantizers'
    possible one-level differences (checked separately: same bytes in the normal case)."""
    rng = np.random.default_rng(31 + t)
    vdt = core.testing.quant_type_info(t)["vec_dot_type"]
    n = 4096
    w = _weights(t, 4, n, rng).reshape(4, -1)
    for r in range(4):
        x = _rows("normal", 1, n, rng)[0]
        act_ggml = REF.quantize_act(t, x)
        act_ours = core.quantize(vdt, x)
        if vdt == Q8_K:  # SIMD Q8_K quantizer vs reference: compare d and qs (bsums follow from qs)
            same = np.array_equal(act_ggml.reshape(-1, 292)[:, :260], act_ours.reshape(-1, 292)[:, :260])
        else:
            same = np.array_equal(act_ggml, act_ours)
        assert same, "activation quantizer differs from ggml's CPU backend"
        ref = REF.vec_dot(t, w[r], act_ggml, n, generic=False)
        ours = core.testing.quant_vec_dot(t, w[r], x)
        wf = core.dequantize(t, w[r], n).astype(np.float64)
        xf = core.dequantize(vdt, act_ours, n).astype(np.float64)
        assert abs(ours - ref) <= 1e-5 * np.sum(np.abs(wf * xf)), (ours, ref)


def _act_error_bound(t: int, x: np.ndarray) -> np.ndarray:
    """Per-element bound on |x - dequant(quantize_act(x))| for the activation format of weight type t.

    Q8_K (k-quants, IQ4_XS): blocks of 256, d = amax/127 kept in fp32, q = round(x/d), so the error is
    at most d/2 (plus a few fp32 ulps of d*q, covered by the factor 1.0001).
    Q8_0 (Q8_0, IQ4_NL): blocks of 32, q = round(x * (1/d)) with the fp32 d = amax/127, but values are
    decoded with fp16(d). |x - fp16(d) q| <= |x - d q| + |d - fp16(d)| |q| <= d/2 + 127 * e16(d), where
    e16(d) <= max(2^-11 d, 2^-25) is the fp16 rounding error (relative in the normal range, absolute
    2^-25 for fp16 subnormals).
    """
    bs = 256 if core.testing.quant_type_info(t)["vec_dot_type"] == Q8_K else 32
    xb = x.reshape(x.shape[0], -1, bs).astype(np.float64)
    d = np.abs(xb).max(axis=2, keepdims=True) / 127.0
    if bs == 256:
        e = 0.5 * d * 1.0001
    else:
        e = (0.5 * d + 127 * np.maximum(2.0 ** -11 * d, 2.0 ** -25)) * 1.0001
    return np.broadcast_to(e, xb.shape).reshape(x.shape)


@pytest.mark.parametrize("t", ALL_WEIGHT_TYPES, ids=tname)
def test_quant_matmul_vs_float_matmul(t):
    """quant_matmul_ref against float64 matmul with the dequantized weights, within a hard bound.

    Derivation. Let W be the dequantized weights (exactly the values the integer dot represents: for
    the k-quants d*sc*q - dmin*m, the min term folded in through Q8_K's bsums) and x' the dequantized
    activations. The integer accumulation is exact, so the result is sum_i W_i x'_i up to float32
    rounding of the per-block scale products and the block sums. Hence
        |y_q - W.x| <= sum_i |W_i| |x_i - x'_i|  +  float32 rounding
                    <= sum_i |W_i| e_i           +  (nblocks + 16) * 2^-23 * sum_i |W_i x'_i|,
    with e_i from _act_error_bound (half an activation quantization step, plus Q8_0's fp16 d). The
    second term bounds the relative error of summing nblocks per-block partial results (each itself
    rounded a few times) in float32; the dominant term is the first one.
    """
    rng = np.random.default_rng(41 + t)
    bs = BLOCK[t][0]
    for n_in, n_out, T in ((bs, 1, 1), (3 * bs, 7, 5), (5 * bs, 33, 64), (2 * bs, 3, 17), (8 * bs, 5, 2)):
        if bs == 32:
            n_in *= 3
        wq = _weights(t, n_out, n_in, rng)
        W = core.dequantize(t, wq, n_out * n_in).reshape(n_out, n_in).astype(np.float64)
        x = _rows("normal", T, n_in, rng) * rng.uniform(0.01, 100, (T, 1)).astype(np.float32)
        x = x.astype(np.float32)
        y = core.testing.quant_matmul_ref(t, wq, n_in, n_out, x)
        assert y.shape == (T, n_out) and y.dtype == np.float32
        ref = x.astype(np.float64) @ W.T
        e = _act_error_bound(t, x)
        nblocks = n_in // bs
        bound = e @ np.abs(W).T + (nblocks + 16) * 2.0 ** -23 * (np.abs(x) * 1.01) @ np.abs(W).T
        err = np.abs(y - ref)
        assert np.all(err <= bound), f"{tname(t)} {n_in}x{n_out} T={T}: max err/bound {np.max(err / bound)}"
        # The bound is not vacuous: errors are small against the Cauchy-Schwarz scale |x_t| |W_o|.
        scale = np.linalg.norm(x.astype(np.float64), axis=1)[:, None] * np.linalg.norm(W, axis=1)[None, :]
        assert np.max(err / scale) < 0.01
        # Same as per-row vec_dot, and independent of the thread count.
        assert np.array_equal(core.testing.quant_matmul_ref(t, wq, n_in, n_out, x, n_threads=1), y)
        w_rows = wq.reshape(n_out, -1)
        assert core.testing.quant_vec_dot(t, w_rows[n_out - 1], x[T - 1]) == y[T - 1, n_out - 1]
    # 1-D activation gives a 1-D result.
    assert core.testing.quant_matmul_ref(t, wq, n_in, n_out, x[0]).shape == (n_out,)
