"""The several-row F16/BF16 matmul kernels (csrc/simd/dot_avx512.cpp and dot_avx2.cpp rows_*) against the
one-token dot of the same kernel set.

Decode feeds one token, a speculative verification k + 1: both go through matmul, which hands a thread's
block of rows to the kernel set's rows_* kernel (blocks of rows x tokens, sums folded four at a time).
Verification == decode bit for bit needs every (row, token) summed exactly as the one-token dot of the
same kernel set sums it; these tests hold it to that on random and edge shapes (rows not a multiple of
the block, 1..8 and 16+ tokens, K not a multiple of 16/32, 1 and 2 threads), and to the float64 dot
within the rounding of a float sum (so a kernel that is merely self-consistent cannot pass).
"""

import numpy as np
import pytest

from pyqwen import _core

T = _core.testing


def _sets():
    out = []
    for name in ("avx512", "avx2", "ref"):
        if _core.set_simd(name):
            out.append(name)
    _core.set_simd("auto")
    return out


SETS = _sets()


@pytest.fixture(params=SETS)
def kernel_set(request):
    assert _core.set_simd(request.param)
    yield request.param
    _core.set_simd("auto")


def _weights(rng, n, k, bf16):
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.5
    if bf16:
        bits = w.view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return w.astype(np.float16).view(np.uint16)


def _as_float(w, bf16):
    return (w.astype(np.uint32) << 16).view(np.float32) if bf16 else w.view(np.float16).astype(np.float32)


SHAPES = [(1, 32), (3, 31), (4, 256), (5, 257), (7, 33), (9, 768), (13, 15), (2, 1), (6, 48), (11, 100)]


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("n_rows,k", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_kernel_equals_one_token_dot(kernel_set, bf16, n_rows, k, threads):
    rng = np.random.default_rng(n_rows * 1000 + k + 7 * bf16)
    w = _weights(rng, n_rows, k, bf16)
    for n_tok in (1, 2, 3, 4, 5, 6, 7, 8, 9, 17):
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        got = T.float_matmul(w, x, bf16, threads)
        one = T.float_dots_one(w, x, bf16)
        np.testing.assert_array_equal(got, one, err_msg=f"{kernel_set} {n_tok} tokens")
        # each token alone through matmul (a decode step) gives the same bits as inside the batch
        for t in (0, n_tok - 1):
            np.testing.assert_array_equal(T.float_matmul(w, x[t:t + 1], bf16, threads)[0], got[t])
        exact = x.astype(np.float64) @ _as_float(w, bf16).astype(np.float64).T
        bound = 4 * k * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(_as_float(w, bf16)).T + 1e-30)
        assert np.all(np.abs(got - exact) <= bound)


def test_rows_kernel_edge_values(kernel_set):
    # zeros, huge/tiny magnitudes, cancellation and an infinity: still the one-token dot's bits
    k = 64 + 5
    w = np.zeros((6, k), np.float16)
    w[0] = 65504.0
    w[1, ::2] = 1.0
    w[1, 1::2] = -1.0
    w[2] = np.float16(6e-8)  # a subnormal half
    w[3, 3] = np.inf
    w[4] = np.linspace(-3, 3, k)
    w = w.view(np.uint16)
    x = np.ones((5, k), np.float32)
    x[1] *= -1e-3
    x[2, ::3] = 1e30
    x[3] = np.linspace(-1, 1, k)
    got = T.float_matmul(w, x, False, 2)
    np.testing.assert_array_equal(got, T.float_dots_one(w, x, False))


def test_simd_sets_take_the_rows_kernel(kernel_set):
    # the checks above are on the rows_* kernels, not on the per-row dots matmul falls back to without one
    assert T.float_rows_kernel() == (kernel_set != "ref")


def _matmul_with(name, w, x, bf16=False):
    assert _core.set_simd(name)
    try:
        return T.float_matmul(w, x, bf16, 1)
    finally:
        _core.set_simd("auto")


@pytest.mark.parametrize("fast", ["avx512", "avx2"])
def test_rows_kernel_is_not_another_order(fast):
    # the bit-equality checks above can fail: each SIMD set's fold order (16 lanes, 8 lanes) gives other
    # bits than the scalar reference's and than the other set's, on rows long enough to round differently
    if fast not in SETS:
        pytest.skip(f"no {fast} here")
    rng = np.random.default_rng(3)
    w = _weights(rng, 8, 512, False)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    got = _matmul_with(fast, w, x)
    for other in SETS:
        if other != fast:
            assert not np.array_equal(got, _matmul_with(other, w, x)), other


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError):
        T.float_matmul(np.zeros((2, 4), np.uint16), np.zeros((1, 5), np.float32), False, 1)
