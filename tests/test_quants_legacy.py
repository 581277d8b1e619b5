"""The legacy 32-value formats Q4_0, Q4_1, Q5_0, Q5_1 (csrc/quants_legacy.cpp).

llama.cpp falls back to them when a row is not a multiple of 256 (Q4_K -> Q5_0, Q5_K -> Q5_1), and
community files use them wholesale, so the runtime reads them and our converter writes them.

References, as in test_quants.py:
- ``gguf.quants`` (numpy, from llama.cpp's gguf-py) for the dequantizers and, byte for byte, quantizers;
- llama.cpp's own ggml through ctypes (``tests/ggml_ref.py``) for the quantizers, the activation
  quantizers and the dot products; those tests skip with the reason when llama-cpp-python is absent.
"""

from __future__ import annotations

import ctypes as C
import zlib

import numpy as np
import pytest

gguf_quants = pytest.importorskip("gguf.quants")
core = pytest.importorskip("pyqwen._core")
if not hasattr(core, "quantize") or core.testing.quant_type_info(2) is None:
    pytest.skip("pyqwen._core was built without the legacy quant formats", allow_module_level=True)

from ggml_ref import REF, SKIP_REASON, first_diff  # noqa: E402  (tests/ is on sys.path under pytest)

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 2, 3, 6, 7, 8, 9
LEGACY = [Q4_0, Q4_1, Q5_0, Q5_1]
NAMES = {Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0", Q8_1: "Q8_1"}
BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q8_0: 34, Q8_1: 36}
# Byte offsets of fp16 fields: d (and m for the _1 formats).
FP16_FIELDS = {Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2]}
ACT = {Q4_0: Q8_0, Q5_0: Q8_0, Q4_1: Q8_1, Q5_1: Q8_1}  # ggml CPU vec_dot_type

needs_ggml = pytest.mark.skipif(REF is None, reason=f"ggml reference unavailable: {SKIP_REASON}")


def tname(t):
    return NAMES[t]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def random_blocks(t: int, nblocks: int, rng: np.random.Generator) -> np.ndarray:
    raw = rng.integers(0, 256, size=(nblocks, BLOCK_BYTES[t]), dtype=np.uint8)
    for off in FP16_FIELDS[t]:
        v = (rng.standard_normal(nblocks) * 10.0 ** rng.uniform(-6, 2, nblocks)).astype(np.float16)
        raw[:, off:off + 2] = v.view(np.uint8).reshape(nblocks, 2)
    return raw


def rows(kind: str, nrows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal((nrows, n))
    elif kind == "weights":
        x = rng.standard_t(5, (nrows, n)) * 0.02 * rng.uniform(0.2, 3.0, (nrows, 1))
    elif kind == "uniform_pos":  # offset formats: min > 0
        x = rng.uniform(0.1, 2.0, (nrows, n))
    elif kind == "uniform_neg":
        x = -rng.uniform(0.1, 2.0, (nrows, n))
    elif kind == "zeros":
        x = np.zeros((nrows, n))
    elif kind == "constant":  # max == min: d = 0 in the offset formats
        x = np.full((nrows, n), 0.37)
    elif kind == "huge":
        x = rng.standard_normal((nrows, n)) * 3e4
    elif kind == "very_huge":  # fp16 d/m overflow; max - min overflows fp32 for the offset formats
        x = rng.standard_normal((nrows, n)) * 1e37
    elif kind == "tiny":
        x = rng.standard_normal((nrows, n)) * 1e-6
    elif kind == "subnormal":  # 1/d overflows to inf
        x = rng.standard_normal((nrows, n)) * 1e-39
    elif kind == "outlier":
        x = rng.standard_normal((nrows, n)) * 0.01
        x[np.arange(nrows), rng.integers(0, n, nrows)] = -40.0
    elif kind == "grid":  # exact multiples: many rounding ties in x/d + 8.5 and friends
        x = rng.integers(-64, 65, (nrows, n)) / 8.0
    elif kind == "random_bits":
        x = rng.integers(0, 2**32, (nrows, n), dtype=np.uint64).astype(np.uint32).view(np.float32)
        x = np.where(np.isfinite(x), x, np.float32(0))
    elif kind == "wild_magnitudes":
        x = rng.standard_normal((nrows, n)) * 10.0 ** rng.uniform(-44, 37, (nrows, n))
    elif kind == "mixed_blocks":
        x = rng.standard_normal((nrows, n)) * 10.0 ** rng.integers(-8, 5, (nrows, n // 32)).repeat(32, axis=1)
    else:
        raise AssertionError(kind)
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x, dtype=np.float32)


KINDS = ["normal", "weights", "uniform_pos", "uniform_neg", "zeros", "constant", "huge", "very_huge", "tiny",
         "subnormal", "outlier", "grid", "random_bits", "wild_magnitudes", "mixed_blocks"]


def ggml_quantize(t: int, x: np.ndarray) -> np.ndarray:
    """ggml_quantize_chunk without imatrix (what llama-quantize writes: quantize_row_*_ref)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(x.shape[0] * x.shape[1] // 32 * BLOCK_BYTES[t], dtype=np.uint8)
    REF.base.ggml_quantize_chunk(t, C.c_void_p(x.ctypes.data), C.c_void_p(out.ctypes.data), 0, x.shape[0],
                                 x.shape[1], None)
    return out


def ggml_vec_dot(t: int, w: np.ndarray, act: np.ndarray, n: int, generic: bool) -> float:
    w, act = np.ascontiguousarray(w, np.uint8), np.ascontiguousarray(act, np.uint8)
    name = f"ggml_vec_dot_{NAMES[t].lower()}_{NAMES[ACT[t]].lower()}" + ("_generic" if generic else "")
    fn = getattr(REF.cpu, name)
    fn.restype = None
    fn.argtypes = [C.c_int, C.POINTER(C.c_float), C.c_size_t, C.c_void_p, C.c_size_t, C.c_void_p, C.c_size_t,
                   C.c_int]
    s = C.c_float(0.0)
    fn(n, C.byref(s), 0, w.ctypes.data, 0, act.ctypes.data, 0, 1)
    return s.value


# ---- block geometry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_type_info(t):
    info = core.testing.quant_type_info(t)
    assert info == {"type": t, "name": NAMES[t].lower(), "block_size": 32, "block_bytes": BLOCK_BYTES[t],
                    "vec_dot_type": ACT[t], "has_quantizer": True, "has_vec_dot": True}
    assert core.type_supported(t)  # the model loader accepts tensors of this type


# ---- dequantizers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_dequantize_matches_gguf(t):
    rng = np.random.default_rng(t)
    for nblocks in (1, 3, 64):
        raw = random_blocks(t, nblocks, rng)
        ours = core.dequantize(t, raw.reshape(-1), nblocks * 32)
        ref = gguf_quants.dequantize(raw, t).reshape(-1).astype(np.float32)
        assert np.array_equal(bits(ours), bits(ref)), f"{tname(t)}: dequantize differs from gguf"


@needs_ggml
@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_dequantize_matches_ggml(t):
    """ggml's dequantize_row_*. The offset formats compute q*d + m, which a compiler may contract to one
    FMA (llama-cpp-python builds with -ffp-contract=fast): allow one rounding of the product there."""
    rng = np.random.default_rng(100 + t)
    raw = random_blocks(t, 40, rng).reshape(-1)
    ours = core.dequantize(t, raw, 40 * 32)
    ref = REF.dequantize(t, raw, 40 * 32)
    if t in (Q4_0, Q5_0):
        assert np.array_equal(bits(ours), bits(ref))
    else:
        prod = np.abs(ours.astype(np.float64)) + 1e-30
        assert np.all(np.abs(ours.astype(np.float64) - ref) <= 2.0 ** -23 * prod * 2), "beyond one FMA rounding"


# ---- quantizers -------------------------------------------------------------------------------------

@needs_ggml
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_quantize_byte_identical_to_ggml(t, kind):
    rng = np.random.default_rng(zlib.crc32(f"{t}-{kind}".encode()))
    for nrows, n in ((1, 32), (3, 96), (7, 1280)):
        x = rows(kind, nrows, n, rng)
        ours = core.quantize(t, x)
        ref = ggml_quantize(t, x)
        assert ours.shape == ref.shape
        assert np.array_equal(ours, ref), f"{tname(t)} {kind} {nrows}x{n}: " + first_diff(ours, ref, BLOCK_BYTES[t])


@needs_ggml
@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_quantize_many_rows_threads_and_row_ref(t):
    rng = np.random.default_rng(7 + t)
    x = np.concatenate([rows(k, 16, 1024, rng) for k in ("normal", "weights", "outlier", "mixed_blocks")])
    ours = core.quantize(t, x, n_threads=2)
    assert np.array_equal(ours, ggml_quantize(t, x))
    assert np.array_equal(ours, REF.from_float_ref(t, x))  # the traits' quantize_row_*_ref, same bytes
    assert np.array_equal(core.quantize(t, x, n_threads=1), ours)


@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_quantize_matches_gguf_numpy_quantizer(t):
    """gguf-py's numpy quantizers reproduce ggml's references: a byte check that needs no llama_cpp."""
    rng = np.random.default_rng(3 + t)
    for kind in ("normal", "weights", "uniform_pos", "grid", "zeros", "outlier", "tiny"):
        x = rows(kind, 5, 96, rng)
        with np.errstate(all="ignore"):
            ref = gguf_quants.quantize(x, t).reshape(-1)
        assert np.array_equal(core.quantize(t, x), ref), kind


@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_quantize_roundtrip_error(t):
    rng = np.random.default_rng(5)
    x = rows("normal", 4, 1024, rng)
    y = core.dequantize(t, core.quantize(t, x), x.size).reshape(x.shape)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    assert rel < {Q4_0: 0.12, Q4_1: 0.10, Q5_0: 0.06, Q5_1: 0.05}[t], rel


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_quantize_rejects_non_finite(t, bad):
    x = np.ones((3, 64), np.float32)
    x[1, 40] = bad
    with pytest.raises(ValueError, match=r"non-finite.*row 1, column 40"):
        core.quantize(t, x)


def test_argument_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        core.quantize(Q4_0, np.zeros((2, 48), np.float32))
    w = core.quantize(Q5_1, np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError):
        core.dequantize(Q5_1, w[:-1], 128)
    with pytest.raises(ValueError):
        core.testing.quant_vec_dot(Q5_1, w, np.zeros(64, np.float32))  # w holds 2 rows


# ---- activation quantizer (Q8_1 is what Q4_1/Q5_1 dot with) -------------------------------------------

@needs_ggml
def test_q8_1_activations_match_ggml_cpu_backend():
    """Our Q8_1 (= ggml's quantize_row_q8_1_ref) against the SIMD quantizer the CPU backend really runs:
    the same bytes for ordinary activations (the SIMD version rounds ties to even, the reference away
    from zero; random normal data has no exact ties)."""
    rng = np.random.default_rng(11)
    for kind in ("normal", "outlier", "mixed_blocks", "tiny"):
        x = rows(kind, 1, 2048, rng)
        assert np.array_equal(core.quantize(Q8_1, x), REF.quantize_act(Q4_1, x)), kind
        assert np.array_equal(core.quantize(Q8_0, x), REF.quantize_act(Q4_0, x)), kind


# ---- dot products ---------------------------------------------------------------------------------------

def weights(t: int, n_out: int, n_in: int, rng: np.random.Generator) -> np.ndarray:
    return core.quantize(t, rows("weights", n_out, n_in, rng))


@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_simd_vec_dot_bit_identical_to_reference(t):
    """The SIMD path only sums the unpacked integer levels; its float steps are the reference's."""
    rng = np.random.default_rng(51 + t)
    vdt = ACT[t]
    n = 40 * 32
    nb = n // 32
    for trial in range(6):
        w = random_blocks(t, nb, rng).reshape(-1) if trial % 2 else weights(t, 1, n, rng)
        if trial < 4:
            act = core.quantize(vdt, rows("normal", 1, n, rng))
        else:  # raw bytes (activation values ggml never produces, e.g. -128) with sane fp16 d and s
            act = rng.integers(0, 256, (nb, BLOCK_BYTES[vdt]), dtype=np.uint8)
            act[:, 0], act[:, 1] = 0, 0x3C
            if vdt == Q8_1:
                act[:, 2], act[:, 3] = 0, 0x40
            if trial == 5:
                act[:, -32:] = 0x80
            act = act.reshape(-1)
        fast = core.testing.quant_vec_dot_q(t, w, act, n)
        ref = core.testing.quant_vec_dot_q(t, w, act, n, reference=True)
        assert np.float32(fast).view(np.uint32) == np.float32(ref).view(np.uint32), (core.testing.quant_simd(), trial)


# ggml_vec_dot_q5_0_q8_0_generic in llama-cpp-python 0.3.36's libggml-cpu returns wrong values (one weight
# of level 0 and one activation of 1 give -15 instead of 1; its own AVX2 kernel, the one the CPU backend
# runs, gives 1 like ours), so Q5_0 is checked against that kernel below instead.
@needs_ggml
@pytest.mark.parametrize("t", [Q4_0, Q4_1, Q5_1], ids=tname)
def test_vec_dot_matches_ggml_generic(t):
    """Same quantized inputs into ours and ggml_vec_dot_*_generic: identical integer parts and float
    order, so only FMA contraction in llama-cpp-python's build can differ (8 roundings of sum|w x|)."""
    rng = np.random.default_rng(21 + t)
    n = 2048
    w = weights(t, 8, n, rng).reshape(8, -1)
    for r in range(8):
        x = rows("normal", 1, n, rng)[0] * np.float32(10.0 ** (r - 4))
        act = core.quantize(ACT[t], x)
        ours = core.testing.quant_vec_dot_q(t, w[r], act, n)
        ref = ggml_vec_dot(t, w[r], act, n, generic=True)
        wf = core.dequantize(t, w[r], n).astype(np.float64)
        xf = core.dequantize(ACT[t], act, n).astype(np.float64)
        tol = 8 * 2.0 ** -24 * np.sum(np.abs(wf * xf))
        assert abs(ours - ref) <= tol, (r, ours, ref, tol)


@needs_ggml
@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_vec_dot_close_to_ggml_cpu_backend(t):
    """Against the SIMD kernel the CPU backend dispatches to here, fed its own activation quantizer."""
    rng = np.random.default_rng(31 + t)
    n = 4096
    w = weights(t, 4, n, rng).reshape(4, -1)
    for r in range(4):
        x = rows("normal", 1, n, rng)[0]
        act = REF.quantize_act(t, x)
        ref = ggml_vec_dot(t, w[r], act, n, generic=False)
        ours = core.testing.quant_vec_dot(t, w[r], x)
        wf = core.dequantize(t, w[r], n).astype(np.float64)
        xf = core.dequantize(ACT[t], act, n).astype(np.float64)
        assert abs(ours - ref) <= 1e-5 * np.sum(np.abs(wf * xf)), (ours, ref)


def _fp16_err(v: np.ndarray) -> np.ndarray:
    """Bound on |v - fp16(v)|: half an fp16 ulp, relative in the normal range, 2^-25 for subnormals."""
    return np.maximum(2.0 ** -11 * np.abs(v), 2.0 ** -25)


@pytest.mark.parametrize("t", LEGACY, ids=tname)
def test_quant_matmul_vs_float_matmul(t):
    """quant_matmul_ref against float64 W.x with the dequantized weights W, within a derived bound.

    Per 32-value block b the kernel computes d_w d_a S_b (+ m_b s_b for Q4_1/Q5_1), S_b the exact integer
    sum, s_b = fp16(d_a * sum(q_a)) and d_a the fp16 activation scale. The exact value of those
    operands, E = sum_b [...] in float64, differs from the kernel only by float32 rounding:
        |y - E| <= (nblocks + 8) * 2^-23 * sum_b |terms_b|.
    E differs from W.x by the activation quantization, W.(x - x') with x'_i = d_a q_a,i (the Q8_0 bound of
    test_quants._act_error_bound: |x_i - x'_i| <= d/2 + 127 * fp16err(d)), and for the offset formats by
    m_b (s_b - d_a sum q_a), which we evaluate exactly from the activation bytes.
    """
    rng = np.random.default_rng(41 + t)
    vdt = ACT[t]
    for n_in, n_out, T in ((32, 1, 1), (96, 7, 5), (480, 33, 16), (1024, 5, 3)):
        wq = weights(t, n_out, n_in, rng)
        W = core.dequantize(t, wq, n_out * n_in).reshape(n_out, n_in).astype(np.float64)
        x = (rows("normal", T, n_in, rng) * rng.uniform(0.01, 100, (T, 1))).astype(np.float32)
        y = core.testing.quant_matmul_ref(t, wq, n_in, n_out, x)
        assert y.shape == (T, n_out) and y.dtype == np.float32
        nb = n_in // 32

        act = np.stack([core.quantize(vdt, x[i]).reshape(nb, -1) for i in range(T)])  # [T, nb, bytes]
        da = act[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float64)  # [T, nb]
        qoff = 4 if vdt == Q8_1 else 2
        qa = act[:, :, qoff:qoff + 32].view(np.int8).astype(np.float64)  # [T, nb, 32]
        xq = (qa * da[..., None]).reshape(T, n_in)  # x' = what the integer dot multiplies
        E = xq @ W.T  # exact value of the quantized operands, with the offset folded as m * d_a sum(q)
        terms = np.abs(xq) @ np.abs(W).T
        if vdt == Q8_1:
            wb = wq.reshape(n_out, nb, BLOCK_BYTES[t])
            m = wb[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)  # [n_out, nb]
            s = act[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)  # [T, nb]
            ds = s - da * qa.sum(axis=2)  # stored s versus the sum it stands for
            E = E + ds @ m.T
            terms = terms + np.abs(s) @ np.abs(m).T
        assert np.all(np.abs(y - E) <= (nb + 8) * 2.0 ** -23 * terms + 1e-30), "float rounding bound"

        d = np.abs(x.reshape(T, nb, 32)).max(axis=2).astype(np.float64) / 127.0
        e = np.repeat(0.5 * d + 127 * _fp16_err(d), 32, axis=1) * 1.0001  # |x - x'| per element
        ref = x.astype(np.float64) @ W.T
        bound = e @ np.abs(W).T + (nb + 8) * 2.0 ** -23 * terms
        if vdt == Q8_1:
            bound = bound + np.abs(ds) @ np.abs(m).T
        err = np.abs(y - ref)
        assert np.all(err <= bound), f"{tname(t)} {n_in}x{n_out}: max err/bound {np.max(err / bound)}"
        scale = np.linalg.norm(x.astype(np.float64), axis=1)[:, None] * np.linalg.norm(W, axis=1)[None, :]
        assert np.max(err / scale) < 0.02
        assert np.array_equal(core.testing.quant_matmul_ref(t, wq, n_in, n_out, x, n_threads=1), y)
        assert core.testing.quant_vec_dot(t, wq.reshape(n_out, -1)[-1], x[-1]) == y[-1, -1]
