"""The prefill GEMM on quantized weights (csrc/qgemm.cpp, simd/qgemm_*.cpp) against its spec.

The spec is the reference quantized dot (quants.h vec_dot_ref, itself checked against ggml and a
float64 dot in test_quants.py): every micro-kernel set this CPU supports ("ref", "avx2",
"avx512vnni") must give bit-identical results to it. For Q4_K/Q5_K/Q6_K the spec takes one exact int32
per (row, token, super-block) and a fixed sequence of fused multiply-adds into one float per (row,
token) (kx_vec_dot in csrc/quants_q4k_q5k.cpp), so any data layout that gets the integers right and
keeps those float steps is bit-identical. Shapes cover token counts that are not multiples of the
register block (1, 3, 7, 13), row counts that are not multiples of it nor of the 16/32-row panels, K of
1 to 21 super-blocks (also in K chunks), 1 to 4 threads, and the edge values: all-zero rows, huge and
tiny activations, ties for the largest activation, raw random blocks (any scale bytes, NaN/Inf
excluded), and the levels/scales that push the integer sums to their bound.
"""

from __future__ import annotations

import numpy as np
import pytest

core = pytest.importorskip("pyqwen._core")
T = core.testing
if not hasattr(T, "qgemm"):
    pytest.skip("pyqwen._core was built without qgemm", allow_module_level=True)

Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS = 2, 8, 12, 13, 14, 23
BLOCK_BYTES = {Q4_K: 144, Q5_K: 176, Q6_K: 210, Q8_0: 34, IQ4_XS: 136}
BLOCK_VALUES = {Q4_K: 256, Q5_K: 256, Q6_K: 256, Q8_0: 32, IQ4_XS: 256}
FP16_FIELDS = {Q4_K: [0, 2], Q5_K: [0, 2], Q6_K: [208], Q8_0: [0], IQ4_XS: [0]}
KERNELS = T.qgemm_kernels()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def raw_blocks(t: int, nblocks: int, rng) -> np.ndarray:
    """Random block bytes with finite fp16 scales (every level, scale and min pattern)."""
    b = rng.integers(0, 256, (nblocks, BLOCK_BYTES[t]), dtype=np.uint8)
    for off in FP16_FIELDS[t]:
        b[:, off:off + 2] = np.frombuffer(rng.uniform(-2, 2, nblocks).astype(np.float16).tobytes(),
                                          np.uint8).reshape(nblocks, 2)
    return b.reshape(-1)


def test_kernel_sets_listed():
    assert "ref" in KERNELS and T.qgemm_default() in KERNELS


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=["q4_K", "q5_K", "q6_K"])
@pytest.mark.parametrize("n_in,n_out,n_tok", [(256, 1, 1), (256, 5, 3), (512, 37, 13), (768, 16, 8),
                                              (2304, 19, 7), (1024, 64, 9)])
def test_qgemm_bit_identical(t, kernels, n_in, n_out, n_tok):
    rng = np.random.default_rng(n_in * 1000 + n_out * 10 + n_tok + t)
    w = core.quantize(t, rng.standard_normal((n_out, n_in)).astype(np.float32))
    x = (rng.standard_normal((n_tok, n_in)) * rng.uniform(0.01, 100, (n_tok, 1))).astype(np.float32)
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    for threads in (1, 3):
        assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, threads), ref), (kernels, threads)
    # Spot-check against the scalar reference dot itself (quant_matmul_ref may use the AVX2 dots).
    xq = core.quantize(15, x[n_tok - 1])
    row = w.reshape(n_out, -1)[n_out - 1]
    spec = T.quant_vec_dot_q(t, row, xq, n_in, True)
    assert same_bits(np.float32([spec]), ref[n_tok - 1, n_out - 1:n_out])


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=["q4_K", "q5_K", "q6_K"])
@pytest.mark.parametrize("nb,n_out,n_tok", [(4, 32, 4), (5, 33, 17), (8, 70, 5), (13, 31, 33), (21, 65, 2)])
def test_qgemm_k_chunks(t, kernels, nb, n_out, n_tok):
    """The AVX-512 tiles run over K in chunks of 4 super-blocks with their float sums kept between
    chunks, over 32-row panels: K of exactly one chunk, of a chunk plus one block, of two chunks and
    of several with a partial last one; rows around the panel (31, 33, 65, 70) and token counts
    around the 4-token tile (odd, one full tile, 17 and 33) on 1 to 4 threads."""
    rng = np.random.default_rng(nb * 7919 + n_out * 31 + n_tok + t)
    n_in = 256 * nb
    w = np.concatenate([core.quantize(t, rng.standard_normal((n_out - 2, n_in)).astype(np.float32)).reshape(-1),
                        raw_blocks(t, 2 * nb, rng)])
    x = (rng.standard_normal((n_tok, n_in)) * rng.uniform(0.01, 100, (n_tok, 1))).astype(np.float32)
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    for threads in (1, 2, 4):
        assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, threads), ref), (kernels, threads)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=["q4_K", "q5_K", "q6_K"])
def test_qgemm_edge_values(t, kernels):
    rng = np.random.default_rng(7)
    n_in, n_out = 512, 18
    w = raw_blocks(t, n_out * n_in // 256, rng)
    x = rng.standard_normal((6, n_in)).astype(np.float32)
    x[1] = 0                      # all-zero activation row
    x[2] *= 1e30                  # huge
    x[3] *= 1e-30                 # tiny
    x[4, ::7] = -x[4, ::7] * 1e4  # one dominant value per block
    x[5, 3], x[5, 10] = -50.0, 50.0  # a tie for the largest magnitude: the first one sets the scale
    x[5, 300], x[5, 260] = 50.0, -50.0
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, 2), ref)


def extreme_blocks(t: int, nblocks: int, rng) -> np.ndarray:
    """Blocks at the integer bound: every level at its largest (or, Q6_K, also its most negative) value
    and every scale/min at its largest magnitude, so that |isum| reaches 63*31*127*256 (Q5_K) and
    128*32*127*256 (Q6_K), above 2^24 (the conversion to float rounds) and below 2^31."""
    b = raw_blocks(t, nblocks, rng).reshape(nblocks, -1)
    if t in (Q4_K, Q5_K):
        b[:, 4:] = 0xFF                        # scales and mins 63, levels 15 (Q4_K) / 31 (Q5_K)
    else:
        b[:, :192] = np.where(np.arange(nblocks)[:, None] % 2, 0xFF, 0x00)  # levels 63 (+31) or 0 (-32)
        b[:, 192:208] = 0x80                   # scales -128
    return b.reshape(-1)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K], ids=["q4_K", "q5_K", "q6_K"])
def test_qgemm_integer_bound(t, kernels):
    """Extreme levels and scales against activations that quantize to +-127 everywhere (a constant row:
    every value is the block maximum), on 21 rows x 5 tokens, 1 and 2 threads."""
    rng = np.random.default_rng(13 + t)
    n_in, n_out, n_tok = 1024, 21, 5
    w = extreme_blocks(t, n_out * n_in // 256, rng)
    x = np.ones((n_tok, n_in), np.float32)
    x[1] *= -3.0
    x[2, 1::2] = -1.0   # alternating signs
    x[3] = rng.choice([-1.0, 1.0], n_in) * 1e20
    x[4, :256] = 0      # one all-zero block
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    assert np.all(np.isfinite(ref))
    for threads in (1, 2):
        assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, threads), ref), (kernels, threads)
        assert same_bits(T.qgemm(t, w, n_in, n_out, x[:2], kernels, threads, True), ref[:2]), (kernels, threads)


CHUNKED_SCRIPT = """
import numpy as np
from pyqwen import _core as core
T = core.testing
rng = np.random.default_rng(5)
bad = []
for t in (12, 13, 14):
    for nb, n_out, n_tok in ((1, 17, 3), (3, 33, 5), (7, 40, 9), (10, 16, 4)):
        n_in = 256 * nb
        w = core.quantize(t, rng.standard_normal((n_out, n_in)).astype(np.float32))
        x = (rng.standard_normal((n_tok, n_in)) * 3).astype(np.float32)
        ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
        for k in T.qgemm_kernels():
            for threads in (1, 3):
                y = T.qgemm(t, w, n_in, n_out, x, k, threads)
                if not np.array_equal(y.view(np.uint32), ref.view(np.uint32)):
                    bad.append((t, nb, n_out, n_tok, k, threads))
print("BAD", bad)
"""


@pytest.mark.parametrize("kc", ["1", "3"])
def test_qgemm_k_chunks_by_env(kc):
    """PYQWEN_QGEMM_KCK / PYQWEN_QGEMM_KC (read once per process, hence a subprocess) run the tiles over K
    in chunks with their float sums kept between chunks: the same bits, K a multiple of the chunk or not."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYQWEN_QGEMM_KCK=kc, PYQWEN_QGEMM_KC=kc)
    out = subprocess.run([sys.executable, "-P", "-c", CHUNKED_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]


def test_qgemm_rejects_bad_calls():
    w = core.quantize(Q4_K, np.ones((2, 256), np.float32))
    x = np.ones((3, 256), np.float32)
    for call in (lambda: T.qgemm(Q4_0, w, 256, 2, x),                # Q4_0: not a qgemm type
                 lambda: T.qgemm(Q4_K, w, 256, 3, x),                 # too few weight bytes
                 lambda: T.qgemm(Q4_K, w, 512, 1, x),                 # x rows != n_in
                 lambda: T.qgemm(Q4_K, w, 256, 2, x, "no-such-set"),
                 lambda: T.qgemm(Q4_K, w, 256, 2, x, "auto", 0)):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K, Q8_0, IQ4_XS], ids=["q4_K", "q5_K", "q6_K", "q8_0", "iq4_xs"])
@pytest.mark.parametrize("n_tok", [1, 2, 5, 8, 11])
def test_qgemv_bit_identical(t, kernels, n_tok):
    """The decode row kernels (sets that have one; the others fall back to the GEMM) against the spec.
    K = 1280: 5 super-blocks, 40 groups of 32 (the 32-value kernels' 16-group steps and a tail)."""
    rng = np.random.default_rng(100 + n_tok + t)
    n_in, n_out = 1280, 21
    if t == IQ4_XS:  # no quantizer here: raw blocks
        w = group_weights(t, n_out, n_in, rng)
    else:
        w = np.concatenate([core.quantize(t, rng.standard_normal((n_out - 1, n_in)).astype(np.float32)).reshape(-1),
                            raw_blocks(t, n_in // BLOCK_VALUES[t], rng)])
    x = (rng.standard_normal((n_tok, n_in)) * 5).astype(np.float32)
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    for threads in (1, 2):
        assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, threads, True), ref), (kernels, threads)


# ---- Q8_0 and IQ4_XS: the 32-value group path (PackedW8, tile8) ----

def group_weights(t: int, n_out: int, n_in: int, rng) -> np.ndarray:
    """Q8_0 from the quantizer plus one raw row (levels -128..127); IQ4_XS (no quantizer here) all raw."""
    raw = raw_blocks(t, n_out * n_in // BLOCK_VALUES[t], rng).reshape(n_out, -1)
    if t == Q8_0 and n_out > 1:
        raw[:-1] = core.quantize(t, rng.standard_normal((n_out - 1, n_in)).astype(np.float32)).reshape(n_out - 1, -1)
    return raw.reshape(-1)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q8_0, IQ4_XS], ids=["q8_0", "iq4_xs"])
@pytest.mark.parametrize("n_tok", [1, 3, 7, 13, 16, 33])
@pytest.mark.parametrize("n_in,n_out", [(256, 1), (768, 19), (2304, 37)])
def test_qgemm_group32_bit_identical(t, kernels, n_tok, n_in, n_out):
    """K of 8, 24 and 72 groups (no multiple of a tile), rows that fill neither the 16-row panel nor
    a register block, token counts around the 2-, 4- and 8-token tiles."""
    rng = np.random.default_rng(n_in + n_out * 7 + n_tok * 131 + t)
    w = group_weights(t, n_out, n_in, rng)
    x = (rng.standard_normal((n_tok, n_in)) * rng.uniform(0.01, 100, (n_tok, 1))).astype(np.float32)
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    for threads in (1, 2):
        assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, threads), ref), (kernels, threads)
    xq = core.quantize(Q8_0 if t == Q8_0 else 15, x[n_tok - 1])
    spec = T.quant_vec_dot_q(t, w.reshape(n_out, -1)[n_out - 1], xq, n_in, True)
    assert same_bits(np.float32([spec]), ref[n_tok - 1, n_out - 1:n_out])


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("t", [Q8_0, IQ4_XS], ids=["q8_0", "iq4_xs"])
def test_qgemm_group32_edge_values(t, kernels):
    rng = np.random.default_rng(11)
    n_in, n_out = 512, 18
    w = raw_blocks(t, n_out * n_in // BLOCK_VALUES[t], rng)
    x = rng.standard_normal((9, n_in)).astype(np.float32)
    x[1] = 0
    x[2] *= 1e30
    x[3] *= 1e-30
    x[4, ::7] = -x[4, ::7] * 1e4
    ref = T.quant_matmul_ref(t, w, n_in, n_out, x, 1)
    assert same_bits(T.qgemm(t, w, n_in, n_out, x, kernels, 2), ref)
