"""Gated attention on CUDA (cuda/ops_attention.h) against the C++ reference (pyqwen._core.testing.ref_*).

The reference is a numpy transcription of csrc/model.cpp attn_layer after the projections: per-head q/k
RMSNorm (ref_rms_norm), NEOX RoPE on the first n_rot dims (ref_rope_neox), fp16 append of k/v to the
cache, causal GQA attention over the fp16 cache (ref_attention), sigmoid output gate. Cache rows past
pos0 + n hold fp16 NaN, so reading one would show.

Tolerances (random unit-scale inputs, |out| <~ 1):
- q, k after norm + RoPE: |d| <= 5e-6 (1 ulp of the float norm scale, <= 5e-7 on cos/sin, see
  cuda/kernels/rope.cuh), checked up to pos 2^24 - 1;
- the cache: v bit-exact; k bit-exact against fp16 of the kernel's own k and within 1 fp16 ulp of fp16 of
  the reference k (a float k 1 ulp away may round the other way);
- decode (fp32 q, fp16 K/V, fp32 softmax): |d| <= 2e-5 + 1e-4 |ref| (the emulator gives ~1e-6; the
  GPU adds exp2f's 2 ulp and FMA contraction);
- prefill (q and p rounded to fp16 for the tensor-core MMA, as llama.cpp's FA kernels do, fp32
  accumulation): |d| <= 2e-3 + 5e-3 |ref| and mean |d| < 2e-4 (the emulator gives max ~5e-4, mean
  ~4e-5 on |ref| up to ~3).
"""

from __future__ import annotations

import numpy as np
import pytest

core = pytest.importorskip("pyqwen._core")

F16_NAN = np.float16(np.nan)


def _rng(*seed):
    return np.random.default_rng(list(seed))


def _sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def ref_norm_rope(x, w, pos, n_rot, base, eps):
    """x [n, heads, D] -> RMSNorm (w) + NEOX RoPE at positions pos[t] (the CPU reference ops)."""
    n, heads, D = x.shape
    y = core.testing.ref_rms_norm(np.ascontiguousarray(x.reshape(n * heads, D)), w, eps)
    y = core.testing.ref_rope_neox(y, n_rot, np.repeat(np.asarray(pos, np.int64), heads), base)
    return y.reshape(n, heads, D)


def ref_attention_core(qg, k, v, q_norm, k_norm, k_cache, v_cache, pos0, n_rot, base, eps):
    """csrc/model.cpp attn_layer between the projections and attn_output; returns (out, q, k, kc, vc)."""
    n, H, D2 = qg.shape
    D = D2 // 2
    pos = np.arange(pos0, pos0 + n)
    q = ref_norm_rope(qg[:, :, :D], q_norm, pos, n_rot, base, eps)
    kk = ref_norm_rope(k, k_norm, pos, n_rot, base, eps)
    kc, vc = k_cache.copy(), v_cache.copy()
    kc[pos0:pos0 + n] = kk.astype(np.float16)
    vc[pos0:pos0 + n] = v.astype(np.float16)
    o = core.testing.ref_attention(q, kc[:pos0 + n], vc[:pos0 + n], pos0)
    out = (o * _sigmoid(qg[:, :, D:])).reshape(n, H * D)
    return out, q, kk, kc, vc


def make_case(n, H, Hkv, D, pos0, n_ctx=None, seed=0, q_gain=1.0):
    rng = _rng(n, H, Hkv, D, pos0, seed)
    n_ctx = n_ctx or pos0 + n + 3
    qg = rng.normal(0, 1, (n, H, 2 * D)).astype(np.float32)
    qg[:, :, :D] *= q_gain
    k = rng.normal(0, 1, (n, Hkv, D)).astype(np.float32)
    v = rng.normal(0, 1, (n, Hkv, D)).astype(np.float32)
    q_norm = rng.normal(1, 0.2, D).astype(np.float32)
    k_norm = rng.normal(1, 0.2, D).astype(np.float32)
    k_cache = np.full((n_ctx, Hkv, D), F16_NAN, np.float16)
    v_cache = np.full((n_ctx, Hkv, D), F16_NAN, np.float16)
    # earlier tokens: normed-key-like rows
    k_cache[:pos0] = (rng.normal(0, 1, (pos0, Hkv, D)) * q_norm).astype(np.float16)
    v_cache[:pos0] = rng.normal(0, 1, (pos0, Hkv, D)).astype(np.float16)
    return dict(qg=qg, k=k, v=v, q_norm=q_norm, k_norm=k_norm, k_cache=k_cache, v_cache=v_cache, pos0=pos0)


def _ulp_f16_diff(a, b):
    ia = a.view(np.int16).astype(np.int32)
    ib = b.view(np.int16).astype(np.int32)
    ia = np.where(ia < 0, -32768 - ia, ia)  # sign-magnitude -> ordered
    ib = np.where(ib < 0, -32768 - ib, ib)
    return np.abs(ia - ib)


PREFILL_TOL = dict(out_atol=2e-3, out_rtol=5e-3)


def run_and_check(ops, case, n_rot, base=1e7, eps=1e-6, out_atol=2e-5, out_rtol=1e-4, **tune):
    out, qg2, k2, kc2, vc2 = ops.attention(**case, n_rot=n_rot, rope_base=base, eps=eps, **tune)
    r_out, r_q, r_k, r_kc, r_vc = ref_attention_core(case["qg"], case["k"], case["v"], case["q_norm"],
                                                     case["k_norm"], case["k_cache"], case["v_cache"],
                                                     case["pos0"], n_rot, base, eps)
    D = case["k"].shape[2]
    n, pos0 = case["qg"].shape[0], case["pos0"]
    # pre-processing, in place
    np.testing.assert_allclose(qg2[:, :, :D], r_q, rtol=0, atol=5e-6)
    np.testing.assert_array_equal(qg2[:, :, D:], case["qg"][:, :, D:])
    np.testing.assert_allclose(k2, r_k, rtol=0, atol=5e-6)
    # cache: rows pos0..pos0+n-1 written, everything else untouched (bit patterns: NaN == NaN)
    rows = slice(pos0, pos0 + n)
    for got, exp in ((kc2, r_kc), (vc2, r_vc)):
        mask = np.ones(got.shape[0], bool)
        mask[rows] = False
        np.testing.assert_array_equal(got[mask].view(np.uint16), exp[mask].view(np.uint16))
    np.testing.assert_array_equal(vc2[rows].view(np.uint16), r_vc[rows].view(np.uint16))
    np.testing.assert_array_equal(kc2[rows].view(np.uint16), k2.astype(np.float16).view(np.uint16))
    ulps = _ulp_f16_diff(kc2[rows], r_kc[rows])
    assert ulps.max() <= 1, f"k cache off by {ulps.max()} fp16 ulp"
    assert (ulps > 0).mean() < 0.01
    # output
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, r_out, rtol=out_rtol, atol=out_atol)
    return out, r_out


# ---- step 1 alone: RMSNorm + RoPE phase accuracy -----------------------------------------------------------
@pytest.mark.parametrize("D,n_rot,base", [(256, 64, 1e7), (32, 32, 1e4), (64, 40, 5e5), (64, 0, 1e4),
                                          (128, 128, 1e6)])
@pytest.mark.parametrize("pos0", [0, 1, 4093, 262141, (1 << 23) + 5, (1 << 24) - 3])
def test_norm_rope(ops, D, n_rot, base, pos0):
    n, H, Hkv = 3, 3, 1
    rng = _rng(D, n_rot, pos0)
    qg = rng.normal(0, 1, (n, H, 2 * D)).astype(np.float32)
    k = rng.normal(0, 3, (n, Hkv, D)).astype(np.float32)
    v = rng.normal(0, 1, (n, Hkv, D)).astype(np.float32)
    qw = rng.normal(1, 0.2, D).astype(np.float32)
    kw = rng.normal(1, 0.2, D).astype(np.float32)
    q2, k2 = ops.attention_prepare(qg, k, v, qw, kw, pos0, n_rot, base, 1e-6)
    pos = np.arange(pos0, pos0 + n)
    np.testing.assert_allclose(q2[:, :, :D], ref_norm_rope(qg[:, :, :D], qw, pos, n_rot, base, 1e-6), rtol=0,
                               atol=5e-6)
    np.testing.assert_array_equal(q2[:, :, D:], qg[:, :, D:])
    np.testing.assert_allclose(k2, ref_norm_rope(k, kw, pos, n_rot, base, 1e-6), rtol=0, atol=5e-6)


def test_rope_phase_error_bound(ops):
    """cos/sin error <= 5e-7 at any position: x = (a, 0) in every rotated pair, norm scale exactly 1."""
    D, n_rot, base = 64, 64, 1e7
    half = n_rot // 2
    x = np.zeros((1, 1, D), np.float32)
    x[..., :half] = np.sqrt(np.float32(2))  # mean(x^2) == 1 (to 1 ulp): the outputs are a*cos, a*sin
    a = np.float64(x[0, 0, 0])
    qg = np.concatenate([x, np.zeros_like(x)], axis=-1)
    w = np.ones(D, np.float32)
    worst = 0.0
    for pos0 in [0, 7, 99991, 262143, 1000003, (1 << 24) - 1]:
        q2, _ = ops.attention_prepare(qg, x.copy(), x.copy(), w, w, pos0, n_rot, base, 0.0)
        c, s = q2[0, 0, :half].astype(np.float64) / a, q2[0, 0, half:n_rot].astype(np.float64) / a
        theta = pos0 * base ** (-2.0 * np.arange(half) / n_rot)
        worst = max(worst, np.abs(c - np.cos(theta)).max(), np.abs(s - np.sin(theta)).max())
    assert worst <= 5e-7, worst


# ---- decode (n == 1) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("H,Hkv,D,pos0,split", [
    (2, 1, 32, 0, 0),        # first token
    (2, 2, 32, 1, 0),        # GQA ratio 1
    (4, 2, 64, 37, 0),       # ratio 2
    (6, 1, 32, 200, 64),     # ratio 6, 4 splits, the last one partial (201 keys)
    (12, 2, 64, 517, 0),     # ratio 6, automatic split (5 splits of 128, last partial)
    (6, 1, 64, 300, 32),     # 10 splits of 32 keys (every warp of a split but one idle)
    (6, 1, 64, 700, 320),    # 3 splits, 10 chunks of 32 keys in a full split: 2-3 chunks per warp
    (3, 3, 32, 130, 0),      # ratio 1 with 3 heads (NR = 1 path), 2 splits
    (5, 1, 32, 90, 32),      # ratio 5: not an instantiated group size -> NR = 1 (K/V read 5 times)
    (16, 2, 128, 70, 0),     # ratio 8, D = 128
    (24, 4, 256, 300, 0),    # the model's heads: 3 splits of 128 keys, the last partial
])
def test_decode(ops, H, Hkv, D, pos0, split):
    case = make_case(1, H, Hkv, D, pos0)
    run_and_check(ops, case, n_rot=min(D, 64), decode_split=split)


@pytest.mark.parametrize("H,Hkv,D,pos0,graph_pos", [
    (24, 4, 256, 299, 260),  # the model's heads; 257..512 keys: a grid of 4 splits, 3 live, 1 neutral
    (6, 1, 64, 130, 128),    # 129..256 keys: 2 splits, both live
    (6, 1, 32, 40, 3),       # one split
])
def test_decode_graph_reads_the_position_from_device(ops, H, Hkv, D, pos0, graph_pos):
    """attention_decode_graph (what a recorded decode graph replays): launched for graph_pos, with pos0 in
    device memory -- bit-identical with the by-value decode at pos0 (output, roped q/k, cache rows), and
    checked against the C++ reference like every decode case. The grid is graph_pos's bucket; splits past
    the live keys write neutral partials."""
    case = make_case(1, H, Hkv, D, pos0, n_ctx=600)
    n_rot = min(D, 64)
    direct = ops.attention(**case, n_rot=n_rot, rope_base=1e4, eps=1e-6)
    graphed = ops.attention(**case, n_rot=n_rot, rope_base=1e4, eps=1e-6, graph_pos=graph_pos)
    for a, b in zip(direct, graphed):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    run_and_check(ops, case, n_rot=n_rot, base=1e4)
    with pytest.raises(ValueError):  # another bucket: the launch's grid would not cover pos0's keys
        ops.attention(**case, n_rot=n_rot, rope_base=1e4, eps=1e-6, graph_pos=100 if pos0 > 200 else 300)


@pytest.mark.parametrize("H,Hkv,D,pos0,graph_pos", [
    (24, 4, 256, 299, 260),  # the model's heads; a grid of 4 splits, 3 live, 1 neutral (graph)
    (24, 4, 256, 517, -1),   # 5 live splits, by value
    (12, 2, 64, 300, -1),    # ratio 6, 3 splits
    (5, 1, 32, 150, -1),     # NR = 1: five blocks per KV head, each its own counter
    (6, 1, 32, 40, 3),       # one split: the only block is the last
    (6, 1, 64, 130, 128),    # 2 splits, both live (graph)
])
def test_decode_combine_in_the_last_split_block(ops, H, Hkv, D, pos0, graph_pos):
    """The split-K combine run by the decode kernel's last split block of each head group (a counter per
    group, left zero: the binding checks) instead of attn_combine_kernel: the same arithmetic
    (attn_combine_raw, attn_gate), so the output, roped q/k and cache rows are bit-identical."""
    case = make_case(1, H, Hkv, D, pos0, n_ctx=600)
    kw = dict(n_rot=min(D, 64), rope_base=1e4, eps=1e-6, graph_pos=graph_pos)
    separate = ops.attention(**case, **kw)
    fused = ops.attention(**case, **kw, fused_combine=True)
    for a, b in zip(separate, fused):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_decode_sharp_softmax(ops):
    """Large scores (q x 8): one key dominates; online softmax across chunks, warps and splits."""
    case = make_case(1, 6, 1, 64, 333, seed=3, q_gain=8.0)
    run_and_check(ops, case, n_rot=64, decode_split=64)
    run_and_check(ops, case, n_rot=64, decode_split=1024)  # one split: 11 chunks over 4 warps


def test_decode_through_prefill_kernel(ops):
    case = make_case(1, 6, 2, 32, 77)
    run_and_check(ops, case, n_rot=32, force_prefill=True, **PREFILL_TOL)


# ---- prefill (n > 1) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,H,Hkv,D,pos0,split", [
    (2, 2, 1, 32, 0, 0),
    (5, 2, 2, 32, 0, 0),      # ratio 1
    (17, 4, 2, 64, 0, 0),     # ratio 2, one 64-row tile partly used
    (70, 6, 1, 32, 0, 0),     # ratio 6: 420 rows = 7 tiles, the last partial; 3 key tiles, last partial
    (33, 6, 1, 64, 0, 64),    # split over keys: 64-key splits of a 33-key causal range
    (9, 6, 1, 32, 150, 0),    # existing cache, automatic split (159 keys)
    (40, 4, 2, 64, 61, 64),   # existing cache, 2 splits of 64 + a partial one
    (3, 12, 2, 32, 200, 128), # speculative-verify shape: few rows, long cache, 2 splits
    (23, 3, 3, 64, 10, 0),    # ratio 1 with 3 heads
    (70, 2, 2, 32, 0, 64),    # 2 tiles per KV head; tile 0 ends at key 63: its second split is empty
    (11, 5, 1, 32, 3, 0),     # ratio 5 (rows of a tile span tokens unevenly)
])
def test_prefill(ops, n, H, Hkv, D, pos0, split):
    case = make_case(n, H, Hkv, D, pos0, seed=1)
    out, ref = run_and_check(ops, case, n_rot=min(D, 64), prefill_split=split, **PREFILL_TOL)
    assert np.abs(out - ref).mean() < 2e-4


def test_prefill_model_heads(ops):
    """H = 24, Hkv = 4, D = 256 (the model's attention), n_rot = 64, base 1e7, on an existing cache."""
    case = make_case(3, 24, 4, 256, 5, seed=2)
    out, ref = run_and_check(ops, case, n_rot=64, **PREFILL_TOL)
    assert np.abs(out - ref).mean() < 2e-4


def test_prefill_sharp_softmax(ops):
    case = make_case(12, 6, 1, 64, 40, seed=4, q_gain=8.0)
    run_and_check(ops, case, n_rot=64, prefill_split=64, **PREFILL_TOL)


def test_prefill_then_decode_matches_one_shot(ops):
    """Prefill 6 tokens, then decode 1 on the returned cache == the reference over the 7 tokens."""
    H, Hkv, D = 6, 1, 32
    full = make_case(7, H, Hkv, D, 0, n_ctx=9, seed=5)
    first = {key: (val[:6] if key in ("qg", "k", "v") else val) for key, val in full.items()}
    _, _, _, kc, vc = ops.attention(**first, n_rot=32, rope_base=1e4, eps=1e-6)
    second = {key: (val[6:] if key in ("qg", "k", "v") else val) for key, val in full.items()}
    second.update(k_cache=kc, v_cache=vc, pos0=6)
    out, *_ = ops.attention(**second, n_rot=32, rope_base=1e4, eps=1e-6)
    r_out, *_ = ref_attention_core(full["qg"], full["k"], full["v"], full["q_norm"], full["k_norm"],
                                   full["k_cache"], full["v_cache"], 0, 32, 1e4, 1e-6)
    np.testing.assert_allclose(out[0], r_out[6], rtol=1e-4, atol=2e-5)


# ---- launcher contract ----------------------------------------------------------------------------------------
def test_scratch_bytes(ops):
    # the model: decode partials of up to 128 splits x 24 heads x (256 + 2) floats
    dec = ops.attention_scratch_bytes(24, 4, 256, 1, 262144)
    assert dec == 128 * 24 * (256 * 4 + 8)
    sizes = [ops.attention_scratch_bytes(24, 4, 256, n, 262144) for n in (1, 2, 8, 64, 256, 512)]
    assert sizes == sorted(sizes)  # one buffer sized for the largest batch serves every smaller call
    assert sizes[-1] < 64 << 20
    assert ops.attention_scratch_bytes(24, 4, 48, 4, 100) == 0  # unsupported D


def test_invalid_shapes(ops):
    case = make_case(2, 4, 2, 32, 0)
    with pytest.raises(RuntimeError):
        ops.attention(**{**case, "pos0": 4}, n_rot=32, rope_base=1e4, eps=1e-6)  # pos0 + n > n_ctx
    with pytest.raises(RuntimeError):
        ops.attention(**case, n_rot=33, rope_base=1e4, eps=1e-6)  # odd n_rot
    bad = make_case(2, 3, 2, 32, 0)  # H not a multiple of Hkv
    with pytest.raises(RuntimeError):
        ops.attention(**bad, n_rot=32, rope_base=1e4, eps=1e-6)
    odd = make_case(1, 2, 1, 48, 0)  # D = 48 not supported
    with pytest.raises(RuntimeError):
        ops.attention(**odd, n_rot=32, rope_base=1e4, eps=1e-6)
