"""Quantized KV caches (q8_0 / q4_0, K and V independent) and scaled RoPE (YaRN) in the CUDA attention
kernels, against references that do not use our C++:

- cache bytes: llama.cpp's own quantize_row_*_ref through ctypes (tests/ggml_ref.py) applied to the
  kernel's own normed+roped k and to v -- byte identity (the kernels quantize with formats.h, which the
  CPU core uses too); where llama.cpp's library is missing, gguf-py's numpy quantizer (exact except on
  rounding ties, which random normal data does not hit);
- attention output: numpy in float64 over caches dequantized by ``gguf.quants.dequantize``, q/k from the
  float64 transcription of RMSNorm + NEOX RoPE below (YaRN frequencies from transformers'
  ``_compute_yarn_parameters`` where it is tested);
- the new rows of the reference cache are quantized from the reference's k (a value 1 ulp away may land on
  the other side of a rounding boundary: one level in a few values, far inside the tolerances).

Decode against a quantized K quantizes q to Q8_0 as the CPU backend does (the reference too: llama.cpp's
quantizer, gguf's dequantizer); prefill keeps q in fp16 for the tensor cores (llama.cpp's CUDA mma path).
Tolerances: decode reads the cache into fp32 registers (fp32 softmax): |d| <= 2e-5 + 1e-4 |ref|, as the
fp16 cache's test; prefill rounds q, p and the dequantized K/V to fp16 for the tensor cores:
|d| <= 2e-3 + 5e-3 |ref|, mean < 2e-4 (tests/cuda/test_attention.py's bounds).
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType as QT  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: ggml_ref
from ggml_ref import REF  # noqa: E402

TYPES = {"q8_0": QT.Q8_0, "q4_0": QT.Q4_0}
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18}
PREFILL_TOL = dict(atol=2e-3, rtol=5e-3)


def _rng(*seed):
    # crc32, not hash(): str hashes change with every interpreter (PYTHONHASHSEED), and a case whose data
    # changes from run to run is a flaky test
    return np.random.default_rng([zlib.crc32(str(s).encode()) for s in seed])


def quantize_rows(x: np.ndarray, t: str) -> np.ndarray:
    """[rows, n] float -> [rows, n/32 * block bytes] uint8 with llama.cpp's reference quantizer."""
    x = np.ascontiguousarray(x, np.float32).reshape(x.shape[0], -1)
    if REF is not None:
        return np.stack([REF.from_float_ref(int(TYPES[t]), r) for r in x]).reshape(x.shape[0], -1)
    return gguf_quants.quantize(x, TYPES[t]).reshape(x.shape[0], -1)


def dequantize_rows(b: np.ndarray, t: str) -> np.ndarray:
    if t == "f16":
        return b.astype(np.float64)
    return gguf_quants.dequantize(np.ascontiguousarray(b), TYPES[t]).astype(np.float64)


def rms_norm(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, pos, freqs, mscale=1.0):
    """NEOX RoPE on the first 2 len(freqs) dims of x [n, heads, D] at positions pos [n], float64."""
    half = len(freqs)
    y = x.astype(np.float64).copy()
    th = np.asarray(pos, np.float64)[:, None] * np.asarray(freqs, np.float64)[None, :]
    c, s = (np.cos(th) * mscale)[:, None, :], (np.sin(th) * mscale)[:, None, :]
    a, b = y[..., :half].copy(), y[..., half:2 * half].copy()
    y[..., :half] = a * c - b * s
    y[..., half:2 * half] = b * c + a * s
    return y


def plain_freqs(n_rot, base):
    return base ** (-2.0 * np.arange(n_rot // 2) / n_rot)


def make_case(n, H, Hkv, D, pos0, kt, vt, seed=0):
    """Inputs, and a cache whose rows < pos0 hold quantized random rows (rows >= pos0: 0xFF bytes)."""
    rng = _rng(n, H, Hkv, D, pos0, kt, vt, seed)
    n_ctx = pos0 + n + 2
    case = dict(qg=rng.normal(0, 1, (n, H, 2 * D)).astype(np.float32),
                k=rng.normal(0, 1, (n, Hkv, D)).astype(np.float32),
                v=rng.normal(0, 1, (n, Hkv, D)).astype(np.float32),
                q_norm=rng.normal(1, 0.2, D).astype(np.float32),
                k_norm=rng.normal(1, 0.2, D).astype(np.float32), pos0=pos0)
    for name, t, scale in (("k_cache", kt, case["q_norm"]), ("v_cache", vt, 1.0)):
        old = (rng.normal(0, 1, (pos0, Hkv, D)) * scale).astype(np.float32)
        if t == "f16":
            c = np.full((n_ctx, Hkv, D), np.float16(np.nan), np.float16)
            c[:pos0] = old.astype(np.float16)
        else:
            c = np.full((n_ctx, Hkv * D // 32 * BLOCK_BYTES[t]), 0xFF, np.uint8)
            if pos0:
                c[:pos0] = quantize_rows(old.reshape(pos0, Hkv * D), t)
        case[name] = c
    return case


def split_case(full: dict, at: int) -> tuple[dict, dict]:
    """A case of n new tokens cut into its first `at` tokens and the rest (at position pos0 + at; the
    caller gives the second part the cache the first one left)."""
    new = ("qg", "k", "v")
    first = {key: (val[:at] if key in new else val) for key, val in full.items()}
    second = {key: (val[at:] if key in new else val) for key, val in full.items()}
    second["pos0"] = full["pos0"] + at
    return first, second


def append_rows(cache: np.ndarray, t: str, new: np.ndarray, pos0: int) -> np.ndarray:
    """A copy of the cache with the n new rows [n, Hkv, D] stored at pos0 in type t (f16, or llama.cpp's
    quantization of each row)."""
    c, n = cache.copy(), new.shape[0]
    c[pos0:pos0 + n] = new.astype(np.float16) if t == "f16" else quantize_rows(new.reshape(n, -1), t)
    return c


def cached_attention(q, kc, vc, kt, vt, pos0, Hkv, q8_query=None):
    """float64 causal GQA attention of the n new queries q [n, H, D] (positions pos0..) over the
    dequantized cache rows 0..pos0+n; with q8_query, a quantized K cache sees the query as the kernel
    does: quantized to q8_0."""
    n, H, D = q.shape
    L = pos0 + n
    K = dequantize_rows(kc[:L], kt).reshape(L, Hkv, D)
    V = dequantize_rows(vc[:L], vt).reshape(L, Hkv, D)
    G = H // Hkv
    if q8_query is not None and kt != "f16":
        q = dequantize_rows(quantize_rows(q8_query.reshape(n * H, D), "q8_0"), "q8_0").reshape(n, H, D)
    out = np.zeros((n, H, D))
    for t in range(n):
        for h in range(H):
            s = K[:pos0 + t + 1, h // G] @ q[t, h] / np.sqrt(D)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ V[:pos0 + t + 1, h // G]
    return out


def reference(case, kt, vt, freqs, mscale=1.0, eps=1e-6, q8_query=None):
    """(out [n, H*D], q, k, k_cache, v_cache) with the new rows quantized from the reference's k and v.
    q8_query: the kernel's normed + roped q [n, H, D]; scores against a quantized K then use it quantized to
    Q8_0 (what the decode kernel and the CPU backend do; llama.cpp's reference quantizer, dequantized by
    gguf). The kernel's float32 q, not the reference's float64 one: a value 1 ulp away can round to the
    other Q8_0 level, and one level in one element moves a whole head's output by ~1e-4 (the q itself is
    checked against the reference separately)."""
    qg, k, v, pos0 = case["qg"], case["k"], case["v"], case["pos0"]
    n, H, D2 = qg.shape
    D, Hkv = D2 // 2, k.shape[1]
    pos = np.arange(pos0, pos0 + n)
    q = rope(rms_norm(qg[:, :, :D], case["q_norm"], eps), pos, freqs, mscale)
    kk = rope(rms_norm(k, case["k_norm"], eps), pos, freqs, mscale)
    kc, vc = append_rows(case["k_cache"], kt, kk, pos0), append_rows(case["v_cache"], vt, v, pos0)
    out = cached_attention(q, kc, vc, kt, vt, pos0, Hkv, q8_query)
    gate = 1.0 / (1.0 + np.exp(-qg[:, :, D:].astype(np.float64)))
    return (out * gate).reshape(n, H * D), q, kk, kc, vc


def run(ops, case, kt, vt, n_rot, base=1e6, freqs=None, mscale=1.0, **tune):
    spec = kt if kt == vt else f"{kt},{vt}"
    extra = {} if freqs is None else dict(rope_freqs=np.asarray(freqs, np.float64), mscale=mscale)
    return ops.attention(**case, n_rot=n_rot, rope_base=base, eps=1e-6, kv_type=spec, **extra, **tune)


def check_cache(case, got_kc, got_vc, k2, kt, vt):
    """New rows: exactly llama.cpp's quantization of the kernel's k and of v; other rows untouched."""
    n, pos0 = case["k"].shape[0], case["pos0"]
    rows = slice(pos0, pos0 + n)
    for got, orig, t, new in ((got_kc, case["k_cache"], kt, k2), (got_vc, case["v_cache"], vt, case["v"])):
        mask = np.ones(got.shape[0], bool)
        mask[rows] = False
        assert got[mask].tobytes() == orig[mask].tobytes()
        if t == "f16":
            np.testing.assert_array_equal(got[rows].view(np.uint16), new.astype(np.float16).view(np.uint16))
        else:
            assert got[rows].tobytes() == quantize_rows(new.reshape(n, -1), t).tobytes(), t


KV_PAIRS = [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0"), ("q4_0", "f16"), ("f16", "q8_0")]


@pytest.mark.parametrize("kt,vt", KV_PAIRS)
@pytest.mark.parametrize("H,Hkv,D,pos0,split", [
    (2, 1, 32, 0, 0),         # first token
    (4, 2, 64, 37, 0),        # GQA 2
    (6, 1, 32, 200, 64),      # GQA 6, 4 splits, the last partial
    (5, 1, 32, 90, 32),       # NR = 1 path
    (16, 2, 128, 70, 0),      # D = 128
    (24, 4, 256, 300, 0),     # the model's heads: 3 splits
])
def test_decode_quantized_cache(ops, kt, vt, H, Hkv, D, pos0, split):
    case = make_case(1, H, Hkv, D, pos0, kt, vt)
    n_rot = min(D, 64)
    out, qg2, k2, kc, vc = run(ops, case, kt, vt, n_rot, decode_split=split)
    check_cache(case, kc, vc, k2, kt, vt)
    q2 = qg2[:, :, :D]
    ref, *_ = reference(case, kt, vt, plain_freqs(n_rot, 1e6), q8_query=q2)
    plain, q_ref, *_ = reference(case, kt, vt, plain_freqs(n_rot, 1e6))
    np.testing.assert_allclose(q2, q_ref, rtol=0, atol=5e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
    if kt != "f16" and pos0 > 0:  # the query's Q8_0 rounding shows (one key: softmax 1, q unseen)
        assert np.abs(plain - ref).max() > 1e-4


@pytest.mark.parametrize("kt,vt", KV_PAIRS)
@pytest.mark.parametrize("n,H,Hkv,D,pos0,split", [
    (5, 2, 2, 32, 0, 0),
    (17, 4, 2, 64, 0, 0),      # one 64-row tile partly used
    (40, 4, 2, 64, 61, 64),    # existing cache, split-K over keys (2 splits + a partial one)
    (3, 12, 2, 32, 200, 128),  # verification shape: few rows, long cache, 2 splits
    (3, 24, 4, 256, 5, 0),     # the model's heads
])
def test_prefill_quantized_cache(ops, kt, vt, n, H, Hkv, D, pos0, split):
    case = make_case(n, H, Hkv, D, pos0, kt, vt, seed=1)
    n_rot = min(D, 64)
    out, _, k2, kc, vc = run(ops, case, kt, vt, n_rot, prefill_split=split)
    check_cache(case, kc, vc, k2, kt, vt)
    ref, *_ = reference(case, kt, vt, plain_freqs(n_rot, 1e6))
    np.testing.assert_allclose(out, ref, **PREFILL_TOL)
    assert np.abs(out - ref).mean() < 2e-4


@pytest.mark.parametrize("t", ["q8_0", "q4_0"])
@pytest.mark.parametrize("kind", ["grid", "huge", "tiny", "subnormal", "outlier", "zeros"])
def test_append_quantizer_matches_llama_cpp(ops, t, kind):
    """V rows are quantized as given: rounding ties, fp16 scale overflow/underflow, all-zero blocks."""
    if REF is None:
        pytest.skip("llama.cpp's ggml library is not available (byte identity on edge cases needs it)")
    rng = _rng(t, kind)
    n, H, Hkv, D = 4, 2, 2, 64
    case = make_case(n, H, Hkv, D, 3, "f16", t, seed=2)
    v = {"grid": rng.integers(-64, 65, (n, Hkv, D)) / 8.0, "huge": rng.normal(0, 3e4, (n, Hkv, D)),
         "tiny": rng.normal(0, 1e-6, (n, Hkv, D)), "subnormal": rng.normal(0, 1e-39, (n, Hkv, D)),
         "outlier": np.where(rng.uniform(size=(n, Hkv, D)) < 0.03, 40.0, rng.normal(0, 0.01, (n, Hkv, D))),
         "zeros": np.zeros((n, Hkv, D))}[kind]
    case["v"] = np.ascontiguousarray(v, np.float32)
    _, _, k2, kc, vc = run(ops, case, "f16", t, 64)
    check_cache(case, kc, vc, k2, "f16", t)


def test_decode_matches_prefill_on_same_quantized_cache(ops):
    """A prefill of 6 then a decode of 1 == the reference over 7 tokens (q4_0 K, q8_0 V)."""
    H, Hkv, D = 6, 1, 32
    full = make_case(7, H, Hkv, D, 0, "q4_0", "q8_0", seed=5)
    first, second = split_case(full, 6)
    _, _, _, kc, vc = run(ops, first, "q4_0", "q8_0", 32)
    second.update(k_cache=kc, v_cache=vc)
    out, qg2, *_ = run(ops, second, "q4_0", "q8_0", 32)
    _, q_ref, *_ = reference(full, "q4_0", "q8_0", plain_freqs(32, 1e6))
    q_ref[6:] = qg2[:, :, :D]  # only the decoded row's output is compared
    ref, *_ = reference(full, "q4_0", "q8_0", plain_freqs(32, 1e6), q8_query=q_ref)
    np.testing.assert_allclose(out[0], ref[6], rtol=1e-4, atol=2e-5)


def test_cache_argument_errors(ops):
    case = make_case(1, 2, 1, 32, 4, "q8_0", "q8_0")
    with pytest.raises(ValueError):
        run(ops, {**case, "k_cache": case["k_cache"][:, :10]}, "q8_0", "q8_0", 32)  # wrong row bytes
    with pytest.raises(ValueError):
        ops.attention(**case, n_rot=32, rope_base=1e4, eps=1e-6, kv_type="q5_0")
    with pytest.raises(ValueError):
        ops.attention(**case, n_rot=32, rope_base=1e4, eps=1e-6, kv_type="f32")


# ---- YaRN: the frequency table and magnitude the kernel is given -------------------------------------------

def transformers_yarn(n_rot, base, factor, orig_ctx):
    """(inv_freq, attention_factor) from transformers' own YaRN implementation."""
    tr = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import PretrainedConfig

    cfg = PretrainedConfig()
    cfg.head_dim = n_rot
    cfg.hidden_size = n_rot
    cfg.num_attention_heads = 1
    cfg.max_position_embeddings = orig_ctx * factor
    cfg.rope_parameters = {"rope_type": "yarn", "rope_theta": base, "factor": float(factor),
                           "original_max_position_embeddings": orig_ctx}
    try:
        inv_freq, attn = tr._compute_yarn_parameters(cfg, "cpu")
    except (TypeError, KeyError, AttributeError) as e:
        pytest.skip(f"transformers' YaRN helper has another interface ({e})")
    return inv_freq.double().numpy(), float(attn)


@pytest.mark.parametrize("decode", [True, False])
def test_yarn_rope_in_attention(ops, decode):
    """q/k roped with transformers' YaRN frequencies and scaled by its attention factor, positions far past
    the original context; the attention output over an f16 cache follows."""
    n_rot, D, base, factor, orig = 64, 128, 1e7, 4, 1024
    freqs, mscale = transformers_yarn(n_rot, base, factor, orig)
    n, pos0 = (1, 3000) if decode else (5, 1500)
    case = make_case(n, 4, 2, D, pos0, "f16", "f16", seed=7)
    out, q2, k2, kc, vc = run(ops, case, "f16", "f16", n_rot, base=base, freqs=freqs, mscale=mscale)
    ref, rq, rk, *_ = reference(case, "f16", "f16", freqs, mscale)
    # float32 frequencies from torch: theta ~ pos * f carries ~1e-7 relative phase error at pos ~1e4
    np.testing.assert_allclose(q2[:, :, :D], rq, rtol=0, atol=5e-5)
    np.testing.assert_allclose(k2, rk, rtol=0, atol=5e-5)
    tol = dict(rtol=1e-4, atol=2e-5) if decode else PREFILL_TOL
    np.testing.assert_allclose(out, ref, **{k: v * 5 for k, v in tol.items()})
