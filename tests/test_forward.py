"""The C++ forward pass against independent references.

transformers: tiny random Qwen3.5 models (tests/fixtures/make_references.py wrote their HF checkpoints
and transformers' logits / greedy continuations), converted by our converter, run by our loader.
llama.cpp: the same GGUF through llama-cpp-python.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen
from pq_testutil import HF_MODELS, load_reference


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute deviation, relative to the reference's logit scale (its largest magnitude)."""
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", HF_MODELS)
def test_f32_logits_match_transformers(gguf_cache, name):
    ref = load_reference(name)
    model = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f32", threads=2)
    logits = model.eval(ref["prompt_ids"].tolist())
    assert logits.shape == ref["logits"].shape
    err = rel_err(logits, ref["logits"])
    assert err < 1e-3, f"{name}: F32 logits deviate from transformers by {err:.2e} (relative)"
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()


@pytest.mark.parametrize("out_type", ["f16", "bf16"])
@pytest.mark.parametrize("name", HF_MODELS)
def test_half_precision_logits_close(gguf_cache, name, out_type):
    # Fixture weights are BF16, so both conversions are nearly lossless; the F16 KV cache adds the rest.
    ref = load_reference(name)
    model = pyqwen.Model.load(gguf_cache(name, out_type), kv_type="f16", threads=2)
    logits = model.eval(ref["prompt_ids"].tolist())
    err = rel_err(logits, ref["logits"])
    assert err < 1e-2, f"{name}/{out_type}: logits deviate by {err:.2e} (relative)"
    agree = (logits.argmax(1) == ref["logits"].argmax(1)).mean()
    assert agree >= 0.95


@pytest.mark.parametrize("name", HF_MODELS)
def test_greedy_continuation_matches_transformers(gguf_cache, name):
    ref = load_reference(name)
    model = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f32", threads=2)
    want = ref["greedy_ids"].tolist()
    gen = model.generate(ref["prompt_ids"].tolist(), max_tokens=len(want), temperature=0)
    got = [t for chunk in gen for t in chunk.token_ids]
    assert got == want
    assert gen.stats.generated_tokens == len(want)


@pytest.mark.parametrize("name", HF_MODELS[:1])
@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0", "q4_0"])
def test_decode_equals_prefill(gguf_cache, name, kv_type):
    """Token-by-token decode, chunked prefill and one-shot prefill give the same logits."""
    ids = load_reference(name)["prompt_ids"].tolist()
    model = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type=kv_type, threads=2)
    full = model.eval(ids)
    st = model.new_state()
    step = np.stack([model.forward(st, [t]) for t in ids])
    np.testing.assert_allclose(step, full, rtol=0, atol=1e-4)
    st2 = model.new_state()
    parts = [model.forward(st2, ids[a:b], logits="all") for a, b in [(0, 5), (5, 37), (37, len(ids))]]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=0, atol=1e-4)


def test_batch_size_does_not_change_results(gguf_cache):
    name = HF_MODELS[0]
    ids = load_reference(name)["prompt_ids"].tolist()
    a = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f32", n_batch=7, threads=1).eval(ids)
    b = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f32", n_batch=512, threads=2).eval(ids)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("with_kv", [False, True])
def test_snapshot_restore(gguf_cache, with_kv):
    """Restoring a snapshot and decoding gives the logits of never having moved."""
    name = HF_MODELS[0]
    ids = load_reference(name)["prompt_ids"].tolist()
    model = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f32", threads=2)
    st = model.new_state()
    model.forward(st, ids[:40])
    snap = model.snapshot(st, with_kv=with_kv)
    assert snap.pos == 40 and snap.nbytes > 0
    straight = model.forward(st, ids[40:50], logits="all")
    # Wander off: different tokens overwrite recurrent state and KV rows >= 40.
    model.forward(st, ids[::-1][:12])
    if with_kv:  # a snapshot with KV also restores into a brand-new state
        st = model.new_state()
    model.restore(st, snap)
    assert st.pos == 40
    again = model.forward(st, ids[40:50], logits="all")
    np.testing.assert_array_equal(again, straight)


def test_context_overflow_is_a_clear_error(gguf_cache):
    model = pyqwen.Model.load(gguf_cache(HF_MODELS[0], "f32"), n_ctx=16, threads=1)
    ids = list(range(10, 30))
    with pytest.raises(pyqwen.ContextOverflowError):
        model.generate(ids, max_tokens=4)
    st = model.new_state()
    model.forward(st, ids[:10])
    with pytest.raises(pyqwen.ContextOverflowError):
        model.forward(st, ids[:10])
    assert st.pos == 10  # nothing was consumed by the failed call
    with pytest.raises(ValueError):
        model.forward(st, [model.n_vocab])
    # Generation stops at the context end instead of overflowing.
    gen = model.generate(ids[:12], max_tokens=100, temperature=0)
    list(gen)
    assert gen.stats.generated_tokens == 4 and gen.finish_reason == "length"


def test_simd_kernels_match_reference():
    """The AVX2 float dot products (used by every F32/F16/BF16 matmul) against the plain reference."""
    from pyqwen import _core
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(0)
    for ne0, ne1, n_tok in [(1, 1, 1), (15, 3, 2), (64, 33, 5), (1000, 7, 17), (4096, 3, 1)]:
        w = rng.standard_normal((ne1, ne0)).astype(np.float32)
        x = rng.standard_normal((n_tok, ne0)).astype(np.float32)
        for typ, data in [(T.F32, w.view(np.uint8)), (T.F16, w.astype(np.float16).view(np.uint8)),
                          (T.BF16, (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8))]:
            assert _core.set_simd("ref")
            ref = _core.testing.ref_matmul(int(typ), data.reshape(-1), ne0, ne1, x)
            levels = [lv for lv in ("avx2", "avx512") if _core.set_simd(lv)]
            if not levels:
                _core.set_simd("auto")
                pytest.skip("no AVX2 on this CPU")
            for lv in levels:
                assert _core.set_simd(lv)
                fast = _core.testing.ref_matmul(int(typ), data.reshape(-1), ne0, ne1, x, n_threads=2)
                scale = np.abs(w).max() * np.abs(x).sum(1).max()
                np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-6 * scale, err_msg=lv)
            _core.set_simd("auto")


def test_multi_token_float_dots_equal_one_token_dots():
    """A weight row against several tokens at once gives each token's one-token result bit for bit (what
    makes speculative verification batches reproduce decode steps), for every float type and shape."""
    from pyqwen import _core
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(3)
    levels = [lv for lv in ("ref", "avx2", "avx512") if _core.set_simd(lv)]
    for ne0, lv in [(ne0, lv) for ne0 in (1, 15, 16, 40, 256, 1000) for lv in levels]:
        assert _core.set_simd(lv)
        w = rng.standard_normal((9, ne0)).astype(np.float32)
        x = rng.standard_normal((11, ne0)).astype(np.float32)
        for typ, data in [(T.F32, w.view(np.uint8)), (T.F16, w.astype(np.float16).view(np.uint8)),
                          (T.BF16, (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8))]:
            one = np.stack([_core.testing.ref_matmul(int(typ), data.reshape(-1), ne0, 9, x[t:t + 1])[0]
                            for t in range(11)])
            for n_tok in (2, 3, 4, 5, 8, 9, 11):
                many = _core.testing.ref_matmul(int(typ), data.reshape(-1), ne0, 9, x[:n_tok], n_threads=2)
                assert np.array_equal(many, one[:n_tok]), (lv, typ, ne0, n_tok)
    _core.set_simd("auto")


def test_simd_delta_rule_matches_reference():
    """The vectorised gated delta rule against the plain reference loop (summation order differs)."""
    from test_gdn_avx512 import delta_rule_inputs

    from pyqwen import _core

    rng = np.random.default_rng(4)
    for n, dk, dv in [(1, 128, 128), (7, 128, 128), (5, 72, 40), (3, 20, 8), (4, 7, 5)]:
        q, k, v, g, beta, S = delta_rule_inputs(rng, n, dk, dv)
        assert _core.set_simd("ref")
        o_ref, s_ref = _core.testing.ref_delta_rule(q, k, v, g, beta, S, dk ** -0.5)
        if not _core.set_simd("avx2"):
            _core.set_simd("auto")
            pytest.skip("no AVX2 on this CPU")
        o, s = _core.testing.ref_delta_rule(q, k, v, g, beta, S, dk ** -0.5)
        _core.set_simd("auto")
        np.testing.assert_allclose(o, o_ref, rtol=0, atol=2e-5 * np.abs(o_ref).max())
        np.testing.assert_allclose(s, s_ref, rtol=0, atol=2e-5 * np.abs(s_ref).max())
        assert not np.array_equal(o, o_ref) or dk < 16  # the vector path ran (it sums in another order)


def test_simd_conv_and_silu_match_reference():
    """The vectorised causal conv + SiLU (across channels, Cephes exp) against the scalar reference, and
    the whole forward with every activation on the vector path against the reference kernel set."""
    from pyqwen import _core

    rng = np.random.default_rng(6)
    for n, C, K in [(1, 1280, 4), (5, 37, 4), (9, 8, 2), (3, 20, 1)]:
        x = (3 * rng.standard_normal((n, C))).astype(np.float32)
        x[0, :4] = [-90.0, 90.0, 0.0, -1e-30][:min(4, C)]  # exp's clamps and a denormal-sized input
        w = rng.standard_normal((C, K)).astype(np.float32)
        st = rng.standard_normal((C, K - 1)).astype(np.float32)
        assert _core.set_simd("ref")
        y_ref, s_ref = _core.testing.ref_conv1d_silu(x, w, st)
        levels = [lv for lv in ("avx2", "avx512") if _core.set_simd(lv)]
        for lv in levels:
            assert _core.set_simd(lv)
            y, s = _core.testing.ref_conv1d_silu(x, w, st)
            np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6, err_msg=lv)
            assert np.array_equal(s, s_ref)  # the window is a copy of inputs, never rounded
        _core.set_simd("auto")


def test_simd_attention_matches_reference():
    """Attention over f16/f32 KV rows (AVX2 dot and axpy) against the plain reference loops."""
    from pyqwen import _core

    rng = np.random.default_rng(1)
    n, H, Hkv, D, pos0 = 5, 6, 2, 72, 37
    q = rng.standard_normal((n, H, D)).astype(np.float32)
    for dt in (np.float32, np.float16):
        K = rng.standard_normal((pos0 + n, Hkv, D)).astype(dt)
        V = rng.standard_normal((pos0 + n, Hkv, D)).astype(dt)
        assert _core.set_simd("ref")
        ref = _core.testing.ref_attention(q, K, V, pos0)
        if not _core.set_simd("avx2"):
            _core.set_simd("auto")
            pytest.skip("no AVX2 on this CPU")
        fast = _core.testing.ref_attention(q, K, V, pos0)
        _core.set_simd("auto")
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)


def test_against_llama_cpp(gguf_cache):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (.ci/run installs it)")
    from pyqwen.llama_cpp_peer import open_llama

    for name in HF_MODELS:
        path = gguf_cache(name, "f32")
        ids = load_reference(name)["prompt_ids"].tolist()
        ours = pyqwen.Model.load(path, kv_type="f32", threads=2).eval(ids)
        llm = open_llama(path, n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2)
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        del llm
        assert (ours.argmax(1) == theirs.argmax(1)).all(), f"{name}: top-1 differs from llama.cpp"
        err = rel_err(ours, theirs)
        # llama.cpp's CPU path differs in reduction order and in its chunked/fused delta-net kernels.
        assert err < 2e-3, f"{name}: logits deviate from llama.cpp by {err:.2e} (relative)"
