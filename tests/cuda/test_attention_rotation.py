"""The Hadamard rotation of a quantized KV cache in the CUDA attention kernels (kernels/hadamard.cuh;
csrc/common/model_spec.h kv_rotation_block, llama.cpp's default since its #21038), against references that
do not use our C++:

- the rotation itself: a float64 Sylvester Hadamard matrix (numpy) on random rows, block by block, and
  its own inverse; and bit identity with a float32 numpy transcription of the fast Walsh-Hadamard
  transform in csrc/ops.cpp hadamard()'s stage order (what the CPU backend stores);
- the attention core with kv_rotation (the model's choice of blocks: K by the largest power of two
  dividing D, V by 64, quantized rows only): the new cache rows are llama.cpp's quantization of the
  rotated k (the kernel's own k output, now rotated) and of the float32-FWHT-rotated v; the output is the
  float64 attention over the dequantized (rotated) cache with the rotated q, rotated back by the float64
  matrix before the sigmoid gate -- for decode (split-K combine kernel, the decode kernel's own combine,
  the decode graph's bucketed grid) and prefill (one split: the kernel's epilogue; several: the combine
  kernel). A kernel that forgot one rotation misses the reference by far more than the tolerance (asserted).

Tolerances: test_attention_kvq.py's (the rotation is exact up to float32 rounding of sums of D values).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_attention_kvq import (PREFILL_TOL, append_rows, cached_attention, check_cache, make_case,
                                plain_freqs, split_case, quantize_rows, reference as plain_reference, rms_norm, rope)

pytest.importorskip("gguf.quants")


def sylvester(n: int) -> np.ndarray:
    """The orthonormal Sylvester Hadamard matrix of order n (a power of two), float64."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotate64(x: np.ndarray, block: int) -> np.ndarray:
    """x [..., D] times the block-diagonal Hadamard matrix (blocks of `block`), float64. Symmetric: its own
    inverse."""
    if not block:
        return np.asarray(x, np.float64)
    s = x.shape
    return (np.asarray(x, np.float64).reshape(*s[:-1], s[-1] // block, block) @ sylvester(block)).reshape(s)


def fwht32(x: np.ndarray, block: int) -> np.ndarray:
    """csrc/ops.cpp hadamard() transcribed in numpy float32: stages h = 1, 2, .., block/2 of butterflies
    (a + c, a - c), then times float32(1 / sqrt(float32(block))): the CPU backend's stored floats."""
    y = np.array(x, np.float32).reshape(-1, block).copy()
    h = 1
    while h < block:
        z = y.reshape(y.shape[0], block // (2 * h), 2, h)
        a, c = z[:, :, 0, :].copy(), z[:, :, 1, :].copy()
        z[:, :, 0, :] = a + c
        z[:, :, 1, :] = a - c
        h *= 2
    scale = np.float32(1.0) / np.sqrt(np.float32(block))
    return (y * scale).astype(np.float32).reshape(np.shape(x))


def blocks(kt: str, vt: str, D: int) -> tuple[int, int]:
    """model_spec.h kv_rotation_block: quantized rows of D % 64 == 0 only; K the largest power of two
    dividing D, V 64."""
    k = (D & -D) if kt != "f16" and D % 64 == 0 else 0
    v = 64 if vt != "f16" and D % 64 == 0 else 0
    return k, v


# ---- the rotation helper -------------------------------------------------------------------------------------

@pytest.mark.parametrize("warp", [False, True])
@pytest.mark.parametrize("D,block", [(64, 64), (256, 256), (256, 64), (128, 128), (128, 32), (32, 2), (8, 8)])
def test_hadamard_matches_float64_sylvester(ops, warp, D, block):
    rng = np.random.default_rng([D, block, warp])
    x = rng.standard_normal((5, D)).astype(np.float32)
    x[1] *= 1e4  # magnitudes do not matter (one orthonormal matrix)
    x[2, ::7] = 30.0  # outliers: what the rotation is for
    y = ops.hadamard(x, block, warp=warp)
    ref = rotate64(x, block)
    mag = np.abs(x).max(-1, keepdims=True)  # float32 rounding scales with each row's magnitude
    np.testing.assert_allclose(y / mag, ref / mag, rtol=0, atol=2e-7 * np.log2(block) * np.sqrt(block))
    # csrc's float32 stage order, bit for bit (so the GPU stores the CPU backend's rows)
    np.testing.assert_array_equal(y.view(np.uint32), fwht32(x, block).view(np.uint32))
    # its own inverse, and an isometry
    back = ops.hadamard(y, block, warp=warp)
    np.testing.assert_allclose(back / mag, x / mag, rtol=0, atol=4e-7 * np.log2(block) * np.sqrt(block))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_hadamard_argument_errors(ops):
    x = np.zeros((2, 64), np.float32)
    for block in (0, 3, 48, 128):
        with pytest.raises(ValueError):
            ops.hadamard(x, block)
    with pytest.raises(ValueError):
        ops.hadamard(np.zeros((2, 512), np.float32), 512)


# ---- the attention core with a rotated cache ----------------------------------------------------------------

def rotated_reference(case, kt, vt, freqs, q8_query=None, eps=1e-6):
    """plain_reference in the rotated basis: q and k times H_k, v times H_v (float64 matrices), new rows
    quantized from the kernel-exact rotated floats (given by the caller in case), the output rotated back
    before the gate."""
    qg, k, pos0 = case["qg"], case["k"], case["pos0"]
    n, H, D2 = qg.shape
    D, Hkv = D2 // 2, k.shape[1]
    rk, rv = blocks(kt, vt, D)
    pos = np.arange(pos0, pos0 + n)
    q = rotate64(rope(rms_norm(qg[:, :, :D], case["q_norm"], eps), pos, freqs), rk)
    kc = append_rows(case["k_cache"], kt, case["k_rot"], pos0)
    vc = append_rows(case["v_cache"], vt, case["v_rot"], pos0)
    o = cached_attention(q, kc, vc, kt, vt, pos0, Hkv, q8_query)
    gate = 1.0 / (1.0 + np.exp(-qg[:, :, D:].astype(np.float64)))
    unrotated = (o * gate).reshape(n, H * D)  # what a kernel that forgot to rotate back would give
    return (rotate64(o, rv) * gate).reshape(n, H * D), q, unrotated


def run_rot(ops, case, kt, vt, n_rot, rotation=True, **tune):
    spec = kt if kt == vt else f"{kt},{vt}"
    args = {key: case[key] for key in ("qg", "k", "v", "q_norm", "k_norm", "k_cache", "v_cache", "pos0")}
    return ops.attention(**args, n_rot=n_rot, rope_base=1e6, eps=1e-6, kv_type=spec, kv_rotation=rotation, **tune)


ROT_PAIRS = [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16"), ("f16", "q4_0"), ("q4_0", "q8_0")]


def check_rotated(case, kt, vt, out, qg2, k2, kc, vc, n_rot, tol, q8=False):
    D = case["k"].shape[2]
    rk, rv = blocks(kt, vt, D)
    # k2: the kernel's k after norm + RoPE + rotation; the plain reference's k rotated by float64 H_k
    _, q_plain, k_plain, *_ = plain_reference(case, kt, vt, plain_freqs(n_rot, 1e6))
    np.testing.assert_allclose(k2, rotate64(k_plain, rk), rtol=0, atol=2e-5)
    np.testing.assert_allclose(qg2[:, :, :D], rotate64(q_plain, rk), rtol=0, atol=2e-5)
    # the cache rows: llama.cpp's quantizer on the kernel's rotated k and on v rotated in csrc's float32 order
    v_rot = fwht32(case["v"], rv) if rv else case["v"]
    check_cache({**case, "v": v_rot}, kc, vc, k2, kt, vt)
    ref, _, unrotated = rotated_reference({**case, "k_rot": k2, "v_rot": v_rot}, kt, vt, plain_freqs(n_rot, 1e6),
                                          q8_query=qg2[:, :, :D] if q8 else None)
    np.testing.assert_allclose(out, ref, **tol)
    if rv:  # the rotation back is really needed (and checked): without it the output is far off
        assert np.abs(unrotated - ref).max() > 50 * tol["atol"]
    return ref


@pytest.mark.parametrize("kt,vt", ROT_PAIRS)
@pytest.mark.parametrize("H,Hkv,D,pos0,split,fused", [
    (4, 2, 64, 37, 0, False),      # GQA 2, the combine kernel
    (4, 2, 64, 37, 0, True),       # the decode kernel's own combine
    (6, 1, 64, 200, 64, False),    # GQA 6, 4 splits, the last partial
    (6, 2, 128, 90, 32, False),    # NR = 3 rows per block; D = 128: K block 128
    (24, 4, 256, 300, 0, True),    # the 27B's heads: K block 256, V blocks of 64
])
def test_decode_rotated_cache(ops, kt, vt, H, Hkv, D, pos0, split, fused):
    case = make_case(1, H, Hkv, D, pos0, kt, vt)
    n_rot = min(D, 64)
    res = run_rot(ops, case, kt, vt, n_rot, decode_split=split, fused_combine=fused)
    check_rotated(case, kt, vt, *res, n_rot, dict(rtol=1e-4, atol=2e-5), q8=True)
    if fused and split == 0:  # the fused combine and the combine kernel: the same arithmetic, bit for bit
        other = run_rot(ops, case, kt, vt, n_rot)
        np.testing.assert_array_equal(res[0].view(np.uint32), other[0].view(np.uint32))
        graph = run_rot(ops, case, kt, vt, n_rot, graph_pos=case["pos0"], fused_combine=True)
        np.testing.assert_array_equal(res[0].view(np.uint32), graph[0].view(np.uint32))


@pytest.mark.parametrize("kt,vt", ROT_PAIRS)
@pytest.mark.parametrize("n,H,Hkv,D,pos0,split", [
    (17, 4, 2, 64, 0, 0),       # one 64-row tile partly used: the epilogue's rotation
    (40, 4, 2, 64, 61, 64),     # split-K: the combine kernel's rotation
    (3, 12, 2, 64, 200, 128),   # verification shape: few rows, long cache, 2 splits
    (3, 24, 4, 256, 5, 0),      # the 27B's heads
])
def test_prefill_rotated_cache(ops, kt, vt, n, H, Hkv, D, pos0, split):
    case = make_case(n, H, Hkv, D, pos0, kt, vt, seed=1)
    n_rot = min(D, 64)
    out, *rest = run_rot(ops, case, kt, vt, n_rot, prefill_split=split)
    ref = check_rotated(case, kt, vt, out, *rest, n_rot, PREFILL_TOL)
    assert np.abs(out - ref).mean() < 2e-4


def test_decode_after_rotated_prefill(ops):
    """A prefill of 6 then a decode of 1 on one rotated cache (q4_0 K, q8_0 V, D = 64) == the reference."""
    H, Hkv, D = 4, 2, 64
    full = make_case(7, H, Hkv, D, 0, "q4_0", "q8_0", seed=5)
    first, second = split_case(full, 6)
    _, _, k_a, kc, vc = run_rot(ops, first, "q4_0", "q8_0", 64)
    second.update(k_cache=kc, v_cache=vc)
    out, qg2, k_b, *_ = run_rot(ops, second, "q4_0", "q8_0", 64)
    q8 = np.zeros((7, H, D), np.float32)
    q8[6] = qg2[0, :, :D]
    full.update(k_rot=np.concatenate([k_a, k_b]), v_rot=fwht32(full["v"], 64))
    ref, _, _ = rotated_reference(full, "q4_0", "q8_0", plain_freqs(64, 1e6), q8_query=q8)
    np.testing.assert_allclose(out[0], ref[6], rtol=1e-4, atol=2e-5)


def test_rotation_off_and_unrotatable_shapes(ops):
    """kv_rotation=False stores the plain rows; D = 32 (not a multiple of 64) and fp16 rows never rotate."""
    for D, t in ((32, "q8_0"), (64, "f16")):
        case = make_case(1, 2, 1, D, 4, t, t)
        rotated, plain = run_rot(ops, case, t, t, D), run_rot(ops, case, t, t, D, rotation=False)
        for x, y in zip(rotated, plain):
            assert x.tobytes() == y.tobytes()
