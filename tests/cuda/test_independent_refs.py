"""CUDA kernels against references that share no code with our C++: the `gguf` package's numpy
dequantizers (gguf.quants.dequantize, llama.cpp's own Python port) and numpy arithmetic.

The other CUDA tests compare with pyqwen._core (the CPU backend), which shares csrc/common/formats.h with
the kernels: a block-layout bug there (e.g. Q4_K scale unpacking) moves both sides together and passes
them. Here the weights' values come from gguf.quants, the activations' Q8_1 rounding from ggml's
quantize_row_q8_1_ref written out in numpy below.

Matmul tolerance: y = sum_i w_i a_i with a = the Q8_1-rounded activations (exactly what the kernel
multiplies); what remains is float32 rounding inside the kernel: 5e-7 * sum_i m_i |a_i| with m_i = |w_i|
plus twice the largest |w| of its 32-value block (covering the per-block offset terms of the formats with
a min, whose partial products cancel). A wrong scale, level or nibble moves y by ~|w||a| on at least a
sub-block: thousands of times that tolerance.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

QUANT = [T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.IQ4_XS, T.IQ4_NL, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
FLOATS = [T.F16, T.BF16, T.F32]
# byte offsets of the fp16 scale fields in each block: made finite and moderate, the rest is random bytes
SCALE_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.IQ4_NL: [0],
                T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.IQ4_XS: [0]}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_weight(wtype, N, K, rng):
    """N x K weight bytes: every byte random except the fp16 scales (random sign and size in range)."""
    if wtype in FLOATS:
        w = rng.normal(0, 0.05, (N, K)).astype(np.float32)
        if wtype == T.F32:
            return w.view(np.uint8).reshape(-1)
        if wtype == T.F16:
            return w.astype(np.float16).view(np.uint8).reshape(-1)
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(-1)
    bv, bb = gguf.GGML_QUANT_SIZES[wtype]
    b = rng.integers(0, 256, (N, K // bv, bb), dtype=np.uint8)
    for off in SCALE_FIELDS[wtype]:
        d = rng.uniform(1e-4, 2e-3, (N, K // bv))
        if wtype not in (T.Q4_K, T.Q5_K):   # super-block d/dmin of the k-quants are unsigned by design
            d *= rng.choice([-1.0, 1.0], d.shape)
        b[..., off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(N, K // bv, 2)
    return b.reshape(-1)


def gguf_values(wtype, wb, N, K) -> np.ndarray:
    """The weights as the gguf package decodes them, float64 [N, K]."""
    if wtype == T.F32:
        return wb.view(np.float32).reshape(N, K).astype(np.float64)
    return dequantize(wb.reshape(N, -1), wtype).reshape(N, K).astype(np.float64)


def q8_1_activations(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_1_ref, values only: d = amax/127 (float32), q = round-half-away(x/d),
    a = fp16(d) * q. Float64 [T, K]."""
    xb = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    d = (np.abs(xb).max(-1) / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    v = (xb * inv[..., None]).astype(np.float32).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return (q * d.astype(np.float16).astype(np.float64)[..., None]).reshape(x.shape)


@pytest.mark.parametrize("wtype", QUANT + FLOATS, ids=lambda t: t.name)
def test_get_rows_equal_gguf_dequantize(ops, wtype):
    N, K = 7, 512
    wb = make_weight(wtype, N, K, _rng("rows", int(wtype)))
    want = gguf_values(wtype, wb, N, K)
    ids = np.array([3, 0, 6, 3], np.int32)
    got = np.asarray(ops.get_rows(int(wtype), wb, K, ids), np.float64)
    # float32 results of the same products: equal up to the last bit of each value
    np.testing.assert_allclose(got, want[ids], rtol=2e-7, atol=0)


# Q4_1 / Q5_1 kernels add m * s with s = fp16(d * sum q) per 32-block (as ggml does) rather than
# m * sum(a): their weights' values are checked through get_rows above.
MATMUL_TYPES = [t for t in QUANT + FLOATS if t not in (T.Q4_1, T.Q5_1)]


@pytest.mark.parametrize("n_tok", [1, 3, 16])
@pytest.mark.parametrize("wtype", MATMUL_TYPES, ids=lambda t: t.name)
def test_matmul_against_numpy_and_gguf(ops, wtype, n_tok):
    N, K = 40, 768
    rng = _rng("mm", int(wtype), n_tok)
    wb = make_weight(wtype, N, K, rng)
    w = gguf_values(wtype, wb, N, K)
    x = rng.normal(0, 1, (n_tok, K)).astype(np.float32)
    a = x.astype(np.float64) if wtype in FLOATS else q8_1_activations(x)
    want = a @ w.T
    blockmax = np.repeat(np.abs(w).reshape(N, -1, 32).max(-1), 32, axis=-1)
    tol = 5e-7 * (np.abs(a) @ (np.abs(w) + 2 * blockmax).T) + 1e-30
    got = np.asarray(ops.matmul(int(wtype), wb, K, N, x), np.float64)
    err = np.abs(got - want)
    assert np.all(err <= tol), f"{wtype.name}: worst err/tol {np.max(err / tol):.3g}"
