"""Gated DeltaNet kernels (cuda/kernels/conv1d.cuh, gdn_common.cuh, gdn_decode.cuh, gdn_chunk.cuh) against the
C++ reference, run by the CPU emulator and, when a GPU is present, by pyqwen._cuda (the `ops` fixture).

- conv1d_silu vs pyqwen._core.testing.ref_conv1d_silu (csrc/gdn.cpp).
- gdn (the layer tail after the conv) vs a numpy transcription of csrc/model.cpp Model::gdn_layer after the
  projections, with the delta rule itself from pyqwen._core.testing.ref_delta_rule (csrc/gdn.cpp, per token,
  one head, transposed state): q/k L2 norms (double sums, as csrc/ops.cpp), g/beta, the tiled V -> QK head
  map (h % nk), gated RMSNorm.

Tolerances: the decode step (n == 1) follows the reference's per-token arithmetic up to summation order;
the chunked path (n > 1) is the same recurrence rearranged (WY/UT form, chunk 64), which in fp32 differs from
the token loop by ~1e-6..1e-5 on O(1) values (measured max |diff| ~1e-5 on `out`, ~1e-6 on the state). We
allow rtol 2e-4 / atol 5e-5 on `out` (values O(1); the gated RMSNorm divides by the head's rms) and rtol 1e-4
/ atol 2e-5 on the state (O(1)).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

core = pytest.importorskip("pyqwen._core")

F32 = np.float32
OUT_TOL = dict(rtol=2e-4, atol=5e-5)
STATE_TOL = dict(rtol=1e-4, atol=2e-5)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---- conv1d + SiLU ----------------------------------------------------------------------------------------------
def _conv_inputs(rng, n, C, K):
    x = rng.normal(0, 1, (n, C)).astype(F32)
    w = rng.normal(0, 0.5, (C, K)).astype(F32)
    st = rng.normal(0, 1, (C, K - 1)).astype(F32)
    return x, w, st


@pytest.mark.parametrize(
    "C,K,n",
    [(1, 4, 1), (37, 4, 1), (300, 4, 2), (37, 4, 3), (130, 4, 64), (300, 4, 65), (70, 4, 200), (37, 1, 5),
     (37, 2, 64), (37, 8, 130), (5, 8, 3), (5, 3, 1), (129, 5, 7)],
)
def test_conv1d_silu(ops, C, K, n):
    x, w, st = _conv_inputs(_rng("conv", C, K, n), n, C, K)
    y, st_new = ops.conv1d_silu(x, w, st)
    y_ref, st_ref = core.testing.ref_conv1d_silu(x, w, st)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    # the new state is a copy of raw inputs: exact
    np.testing.assert_array_equal(st_new, st_ref)


def test_conv1d_silu_in_pieces_equals_whole(ops):
    """Decode-style pieces (including n < K-1, where part of the old state survives) = one long call."""
    C, K = 45, 4
    x, w, st = _conv_inputs(_rng("conv pieces"), 140, C, K)
    y_ref, st_ref = core.testing.ref_conv1d_silu(x, w, st)
    ys, s, t = [], st, 0
    for m in (1, 2, 1, 70, 3, 63):
        y, s = ops.conv1d_silu(x[t:t + m], w, s)
        ys.append(y)
        t += m
    assert t == 140
    np.testing.assert_allclose(np.concatenate(ys), y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s, st_ref)


def test_conv1d_silu_no_tokens(ops):
    x, w, st = _conv_inputs(_rng("conv0"), 0, 8, 4)
    y, st_new = ops.conv1d_silu(x, w, st)
    assert y.shape == (0, 8)
    np.testing.assert_array_equal(st_new, st)


# ---- the layer tail: reference ------------------------------------------------------------------------------------
def _silu(x):
    return (x / (F32(1) + np.exp(-x))).astype(F32)


def gdn_ref(y, alpha, b, ssm_a, dt_bias, S, z, norm_w, nk, eps):
    """csrc/model.cpp gdn_layer from the conv output to the input of ssm_out; returns (out, new S)."""
    n, _ = y.shape
    nv, dv, dk = S.shape
    Dk = nk * dk
    y = y.astype(F32).copy()
    qk = y[:, :2 * Dk].reshape(n, 2 * nk, dk)
    ss = (qk.astype(np.float64) ** 2).sum(-1)
    scale = (1.0 / np.sqrt(ss + 1e-6)).astype(F32)  # csrc/ops.cpp l2_norm
    y[:, :2 * Dk] = (qk * scale[..., None]).reshape(n, 2 * Dk)
    x = (alpha + dt_bias).astype(F32)
    with np.errstate(over="ignore"):
        sp = np.where(x > 20, x, np.log1p(np.exp(x))).astype(F32)
    g = (ssm_a * sp).astype(F32)
    beta = (F32(1) / (F32(1) + np.exp(-b))).astype(F32)
    q_scale = float(F32(1) / np.sqrt(F32(dk)))
    out = np.zeros((n, nv * dv), F32)
    S_new = np.empty_like(S)
    for h in range(nv):
        kh = h % nk  # tiled V -> QK head map of the GGUF
        q = np.ascontiguousarray(y[:, kh * dk:(kh + 1) * dk])
        k = np.ascontiguousarray(y[:, Dk + kh * dk:Dk + (kh + 1) * dk])
        v = np.ascontiguousarray(y[:, 2 * Dk + h * dv:2 * Dk + (h + 1) * dv])
        o, S_new[h] = core.testing.ref_delta_rule(q, k, v, np.ascontiguousarray(g[:, h]), np.ascontiguousarray(beta[:, h]),
                                          np.ascontiguousarray(S[h]), q_scale)
        o64 = o.astype(np.float64)
        rs = (1.0 / np.sqrt((o64 ** 2).sum(-1) / dv + eps)).astype(F32)  # csrc/ops.cpp rms_norm
        out[:, h * dv:(h + 1) * dv] = o * rs[:, None] * norm_w * _silu(z[:, h * dv:(h + 1) * dv])
    return out, S_new


def _gdn_inputs(rng, n, nk, nv, dk, dv, state_scale=0.5, alpha_shift=0.0):
    C = 2 * nk * dk + nv * dv
    y = rng.normal(0, 1, (n, C)).astype(F32)
    alpha = (rng.normal(0, 1, (n, nv)) + alpha_shift).astype(F32)
    b = rng.normal(0, 1.5, (n, nv)).astype(F32)
    # decays from ~0.999 to ~0.01 per token: slow heads carry the state across many chunks
    ssm_a = (-np.exp(rng.uniform(-4, 1, nv))).astype(F32)
    dt_bias = rng.uniform(-3, 1, nv).astype(F32)
    S = rng.normal(0, state_scale, (nv, dv, dk)).astype(F32)
    z = rng.normal(0, 1, (n, nv * dv)).astype(F32)
    norm_w = rng.normal(1, 0.2, dv).astype(F32)
    return dict(y=y, alpha=alpha, b=b, ssm_a=ssm_a, dt_bias=dt_bias, S=S, z=z, norm_w=norm_w)


def _check(got, ref):
    np.testing.assert_allclose(got[0], ref[0], **OUT_TOL)
    np.testing.assert_allclose(got[1], ref[1], **STATE_TOL)


# (nk, nv, dk, dv) and token counts: 1 = decode kernel; 2..63 one partial chunk; 64 exactly one; 65, 130,
# 200 cross chunk boundaries. dk = dv = 128 with nv/nk = 3 is the 27B head (small n keeps the emulator fast);
# 48/24 and 200/40 exercise dims that are not multiples of the 32-wide tiles or of the 16-row scan blocks.
GDN_CASES = [
    ((1, 1, 16, 16), [1, 2, 5, 63, 64, 65, 200]),
    ((2, 4, 16, 16), [17, 22, 32, 40, 100, 129]),  # qwen35-r2-untied's heads at the chunk lengths of issue 10
    ((2, 6, 16, 32), [1, 64, 130]),
    ((2, 3, 48, 24), [1, 65]),
    ((1, 3, 128, 128), [1, 66]),
    ((4, 4, 32, 32), [33]),
    ((1, 1, 256, 16), [1, 70]),
    ((1, 2, 200, 40), [1, 3]),
]


@pytest.mark.parametrize("dims,n", [(d, n) for d, ns in GDN_CASES for n in ns],
                         ids=[f"{'x'.join(map(str, d))}-n{n}" for d, ns in GDN_CASES for n in ns])
def test_gdn_matches_reference(ops, dims, n):
    nk, nv, dk, dv = dims
    a = _gdn_inputs(_rng("gdn", dims, n), n, nk, nv, dk, dv)
    _check(ops.gdn(**a, nk=nk, eps=1e-6), gdn_ref(**a, nk=nk, eps=1e-6))


@pytest.mark.parametrize("n", [1, 70])
def test_gdn_zero_state_and_saturated_decay(ops, n):
    """Fresh sequence (S = 0), alpha + dt_bias > 20 on some tokens (softplus' linear branch: g << 0)."""
    nk, nv, dk, dv = 1, 2, 32, 16
    a = _gdn_inputs(_rng("gdn sat", n), n, nk, nv, dk, dv, state_scale=0.0)
    a["alpha"][::3] += 30.0
    _check(ops.gdn(**a, nk=nk, eps=1e-6), gdn_ref(**a, nk=nk, eps=1e-6))


def test_gdn_correlated_keys(ops):
    """Nearly identical keys, beta ~ 1, slow decay: A = I + tril(beta K K^T o Gamma) far from I (the
    stress case of the chunk's triangular inverse)."""
    nk, nv, dk, dv, n = 1, 2, 32, 16, 150
    rng = _rng("gdn corr")
    a = _gdn_inputs(rng, n, nk, nv, dk, dv)
    base = rng.normal(0, 1, dk).astype(F32)
    a["y"][:, dk:2 * dk] = base + F32(0.05) * rng.normal(0, 1, (n, dk)).astype(F32)
    a["y"][:, :dk] = base + F32(0.3) * rng.normal(0, 1, (n, dk)).astype(F32)
    a["b"][:] = 4.0
    a["ssm_a"][:] = -0.001
    _check(ops.gdn(**a, nk=nk, eps=1e-6), gdn_ref(**a, nk=nk, eps=1e-6))


def test_gdn_decode_after_chunked_prefill_equals_recurrent(ops):
    """Prefill 70 tokens (chunked) then 3 decode steps == 73 decode steps, and == the reference."""
    nk, nv, dk, dv = 1, 2, 16, 16
    n_pre, n_dec = 70, 3
    a = _gdn_inputs(_rng("gdn dec"), n_pre + n_dec, nk, nv, dk, dv)
    per_tok = ("y", "alpha", "b", "z")

    def part(t0, t1, S):
        d = {k: (v[t0:t1] if k in per_tok else v) for k, v in a.items()}
        d["S"] = S
        return d

    out_c, S = ops.gdn(**part(0, n_pre, a["S"]), nk=nk)
    outs = [out_c]
    for t in range(n_pre, n_pre + n_dec):
        o, S = ops.gdn(**part(t, t + 1, S), nk=nk)
        outs.append(o)
    chunked = (np.concatenate(outs), S)

    outs, S = [], a["S"]
    for t in range(n_pre + n_dec):
        o, S = ops.gdn(**part(t, t + 1, S), nk=nk)
        outs.append(o)
    recurrent = (np.concatenate(outs), S)

    _check(chunked, recurrent)
    _check(chunked, gdn_ref(**a, nk=nk, eps=1e-6))


def test_gdn_prefill_in_ubatches(ops):
    """Two chunked calls (100 + 37 tokens: the second starts mid-way, with a carried state) == one call."""
    nk, nv, dk, dv = 2, 4, 16, 16
    a = _gdn_inputs(_rng("gdn ub"), 137, nk, nv, dk, dv)
    first = {k: (v[:100] if k in ("y", "alpha", "b", "z") else v) for k, v in a.items()}
    out1, S1 = ops.gdn(**first, nk=nk)
    second = {k: (v[100:] if k in ("y", "alpha", "b", "z") else v) for k, v in a.items()}
    second["S"] = S1
    out2, S2 = ops.gdn(**second, nk=nk)
    _check((np.concatenate([out1, out2]), S2), gdn_ref(**a, nk=nk, eps=1e-6))


def test_gdn_rms_eps_is_used(ops):
    """eps reaches the gated norm: a head with o = 0 (v = 0, S = 0) gives 0, large eps shrinks the output."""
    nk, nv, dk, dv = 1, 1, 16, 16
    for n in (1, 5):
        a = _gdn_inputs(_rng("gdn eps", n), n, nk, nv, dk, dv)
        _check(ops.gdn(**a, nk=nk, eps=0.5), gdn_ref(**a, nk=nk, eps=0.5))


def test_gdn_scratch_bytes(ops):
    assert ops.gdn_scratch_bytes(16, 48, 128, 128, 1) == 0
    per_tok = ops.gdn_scratch_bytes(16, 48, 128, 128, 512) / 512
    assert 70 * 1024 < per_tok < 90 * 1024  # ~78 KiB per token on the 27B (ops_gdn.h)


def test_gdn_rejects_bad_shapes(ops):
    a = _gdn_inputs(_rng("gdn bad"), 2, 1, 1, 288, 16)  # dk > 256
    with pytest.raises(RuntimeError):
        ops.gdn(**a, nk=1)
