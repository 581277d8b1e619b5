"""The CUDA backend's whole forward pass (cuda/model/model.cu through every kernel family) against the
CPU backend, run on the CPU by the emulator -- and the device sampler, and the memory plan against the
model's allocations.

Model: tests/fixtures/hf/qwen35-r2-untied converted to F16 (8 layers: 6 DeltaNet + 2 attention, hidden
64, vocab 2432). The emulator runs every launch with one fiber per CUDA thread, so each forward costs
seconds: the scenarios are few tokens long but cover both matmul paths (<= 16 tokens: quantized/float
mmv kernels; > 16: fp16 GEMM), the chunked and recurrent GDN, prefill and decode attention, chunk
boundaries (state carried across prefill chunks), on-device greedy feedback (decode(-1)), device
snapshots with and without KV rows, and the errors; and the memory plan against what the model allocates.

Tolerances: chunks of <= 16 tokens (float weights: float activations, mmv kernels) stay within 2e-2
absolute of the CPU logits (|logits| <= ~5, std ~1; observed ~5e-4: the chunked delta rule and the
attention kernels sum in other orders). Chunks of > 16 tokens go through the fp16 GEMM; before float
weights got hi + lo fp16 activations (kernels/gemm.cuh) their single fp16 rounding, amplified by this
small random model, gave max 0.19, mean ~0.01 here, so the GEMM bound stayed at max 0.4, mean 0.03 and the
same argmax in every row -- kept because tests/gpu shares it (cuBLAS, nvcc's FMAs and fast intrinsics are
not measured yet); the emulated GEMM path is held to the tight bounds in test_model_emu_prefill.py.
Decode steps replay CUDA graphs (the emulator's, cuda/emu/emu_graph.h) as on a GPU.
Greedy tokens must be identical (the CPU's top-1 margins on these prompts are > 0.02 and the errors on
the top logits are far smaller).

The same checks run on a real GPU in tests/gpu/test_model_gpu.py (with CUDA graphs on).
"""

from __future__ import annotations

import numpy as np
import pytest

ATOL = 2e-2
PROMPT = [1, 5, 17, 300, 42, 7, 99, 1000, 3, 11, 250, 2400, 8, 64, 65, 66, 901, 13, 2, 77]  # 20 tokens
SHORT = PROMPT[:6]


def assert_logits_close(got: np.ndarray, ref: np.ndarray, gemm: bool = False) -> None:
    """Tight for the float-activation paths; for the fp16-activation GEMM path see the module doc."""
    if not gemm:
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    else:
        err = np.abs(got - ref)
        assert err.max() < 0.4 and err.mean() < 0.03, (err.max(), err.mean())
    assert (got.reshape(-1, ref.shape[-1]).argmax(-1) == ref.reshape(-1, ref.shape[-1]).argmax(-1)).all()


def load_cuda_core(mod, path, n_batch: int, n_ctx: int = 64):
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    seen = []
    core = CudaCore.from_gguf(GGUFFile.open(path), n_ctx, n_batch=n_batch, module=mod,
                              progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] == core.weight_bytes  # progress reached the end
    return core


# ---- scenarios (shared with tests/gpu) -----------------------------------------------------------------

def check_prefill_decode_snapshot(core, cpu, prompt, n_decode: int = 2) -> None:
    """Prefill (logits 'all'), greedy decode on the device, snapshot/restore; everything vs the CPU."""
    gemm = min(core.n_batch, len(prompt)) > 16
    cs, gs = cpu._core.new_state(64, "f16"), core.new_state(64)
    ref = cpu._core.forward(cs, np.array(prompt, np.int32), "all", 256)
    got = core.forward(gs, prompt, "all", 256)
    assert got.shape == ref.shape and gs.pos == cs.pos == len(prompt)
    assert_logits_close(got, ref, gemm)

    csnap, gsnap = cpu._core.snapshot(cs, True), core.snapshot(gs, True)
    gsnap_rec = core.snapshot(gs, False)
    assert gsnap.pos == len(prompt) and gsnap.has_kv and not gsnap_rec.has_kv
    assert gsnap.nbytes > gsnap_rec.nbytes > 0

    # greedy: CPU feeds its argmax back; the device keeps its choice on the GPU (token -1)
    first = int(ref[-1].argmax())
    want, tok = [], first
    for _ in range(n_decode):
        tok = int(cpu._core.forward(cs, np.array([tok], np.int32), "last", 256).argmax())
        want.append(tok)
    have = [core.decode(gs, first)] + [core.decode(gs, -1) for _ in range(n_decode - 1)]
    assert have == want
    assert gs.pos == cs.pos == len(prompt) + n_decode

    # back to the end of the prompt: the next logits are the CPU's again (KV rows restored as well)
    core.restore(gs, gsnap)
    cpu._core.restore(cs, csnap)
    assert gs.pos == len(prompt)
    a = core.forward(gs, [first], "last", 256)
    b = cpu._core.forward(cs, np.array([first], np.int32), "last", 256)
    assert_logits_close(a, b, gemm)

    # a recurrent-only snapshot restores pos and the recurrent state (KV rows past pos are rewritten)
    core.restore(gs, gsnap_rec)
    assert gs.pos == len(prompt)
    c = core.forward(gs, [first], "last", 256)
    np.testing.assert_allclose(c, a, atol=1e-4, rtol=0)


def check_gemm_prefill(core, cpu, prompt) -> None:
    """A chunk of > 16 tokens (the fp16 GEMM path), then one more token; logits 'last' and 'none'."""
    assert min(core.n_batch, len(prompt)) > 16
    cs, gs = cpu._core.new_state(64, "f16"), core.new_state(64)
    ref = cpu._core.forward(cs, np.array(prompt, np.int32), "last", 256)
    got = core.forward(gs, prompt, "last", 256)
    assert got.shape == (cpu.n_vocab,)
    assert_logits_close(got, ref, gemm=True)
    assert core.forward(gs, [3], "none", 256) is None and gs.pos == len(prompt) + 1


def check_sampling_decode(core) -> None:
    """decode() with sampling: a valid token, reproducible for the same (seed, counter)."""
    from pyqwen.sampling import SamplingParams

    p = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, seed=7)
    gs = core.new_state(16)
    core.forward(gs, PROMPT[:2], "none", 256)
    snap = core.snapshot(gs)
    t1 = core.decode(gs, 5, p, counter=3)
    core.restore(gs, snap)
    t2 = core.decode(gs, 5, p, counter=3)
    assert t1 == t2 and 0 <= t1 < core.config["n_vocab"]
    assert 0 <= core.decode(gs, t2, p, counter=4) < core.config["n_vocab"] and gs.pos == 4


def check_errors(core) -> None:
    from pyqwen.sampling import SamplingParams

    gs = core.new_state(4)
    with pytest.raises(ValueError):  # context overflow (std::length_error)
        core.forward(gs, [1, 2, 3, 4, 5], "last", 256)
    with pytest.raises(IndexError):
        core.forward(gs, [core.config["n_vocab"]], "last", 256)
    with pytest.raises(ValueError):  # no previous device choice for this state
        core.decode(gs, -1)
    with pytest.raises(ValueError):
        core.new_state(8, "f32")
    with pytest.raises(ValueError):
        core.decode(gs, 1, SamplingParams(repetition_penalty=1.1))  # penalties need the host sampler
    assert gs.pos == 0


# ---- the emulated runs ---------------------------------------------------------------------------------

def test_forward_decode_snapshot_match_cpu(emu_ops, tiny_f16, cpu_model):
    # 6 tokens in chunks of 4 + 2 (state carried across the chunk boundary), 2 greedy steps on the device
    core = load_cuda_core(emu_ops, tiny_f16, n_batch=4)
    assert core.graphs_enabled  # the emulator's CUDA graphs (cuda/emu/emu_graph.h)
    check_prefill_decode_snapshot(core, cpu_model, SHORT)
    # the model's first decode body ran directly, the later ones (and the restored steps) were replays
    assert core.graph_stats["direct"] == 1 and core.graph_stats["launches"] >= 3


def test_gemm_prefill_and_errors(emu_ops, tiny_f16, cpu_model):
    core = load_cuda_core(emu_ops, tiny_f16, n_batch=32)  # 20 tokens in one GEMM chunk
    check_gemm_prefill(core, cpu_model, PROMPT)
    check_errors(core)


def test_sampling_decode(emu_ops, tiny_f16):
    core = load_cuda_core(emu_ops, tiny_f16, n_batch=8, n_ctx=16)
    check_sampling_decode(core)


def test_state_belongs_to_its_model(emu_ops, tiny_f16):
    a = load_cuda_core(emu_ops, tiny_f16, n_batch=4, n_ctx=8)
    b = load_cuda_core(emu_ops, tiny_f16, n_batch=4, n_ctx=8)
    st = a.new_state(8)
    with pytest.raises(ValueError):
        b.forward(st, [1], "last", 256)
    with pytest.raises(ValueError):
        b.restore(b.new_state(8), a.snapshot(st))
    assert st.nbytes > 0 and st.kv_type == "f16"
    st.reset()
    assert st.pos == 0


def test_memory_plan_refuses_before_allocating(emu_ops, tiny_f16, monkeypatch):
    from pyqwen.cuda_backend import CudaCore, OutOfGPUMemory
    from pyqwen.gguf_file import GGUFFile

    from pyqwen.memory_plan import CUDA_RUNTIME_RESERVE_BYTES

    class Small:  # the emulated module with a small device: room for the weights, not for 4096 tokens
        def __getattr__(self, k):  # (about 3 MiB of fixed buffers, 0.13 MiB of them the verification log)
            return getattr(emu_ops, k)

        def mem_get_info(self):
            return (CUDA_RUNTIME_RESERVE_BYTES + 4 * 2**20, 256 * 2**20)

    import gc

    gc.collect()  # models and states other tests left to the collector must not be freed mid-test
    live = emu_ops.live_allocations()
    with pytest.raises(OutOfGPUMemory) as e:
        CudaCore.from_gguf(GGUFFile.open(tiny_f16), 4096, module=Small())
    assert 0 < e.value.plan.max_ctx < 4096
    assert f"n_ctx={e.value.plan.max_ctx}" in str(e.value)
    assert emu_ops.live_allocations() == live
    # at the context the message names, it loads
    core = CudaCore.from_gguf(GGUFFile.open(tiny_f16), e.value.plan.max_ctx, n_batch=4, module=Small())
    assert core.plan.fits


# ---- device sampler --------------------------------------------------------------------------------------

def kept_set(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> set[int]:
    """The tokens pyqwen.sampling.Sampler can draw (its top-k / top-p / min-p filters, no penalties)."""
    n = logits.size
    k = top_k if 0 < top_k < n else n
    idx = np.argsort(-logits, kind="stable")[:k]
    cand = logits[idx].astype(np.float64)
    probs = np.exp(cand - cand[0])
    probs /= probs.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        idx, probs = idx[:cut], probs[:cut]
    if min_p > 0.0:
        keep = probs >= min_p * probs[0]
        idx = idx[keep]
    return {int(i) for i in idx}


@pytest.mark.parametrize("top_k,top_p,min_p", [(5, 1.0, 0.0), (0, 0.8, 0.0), (0, 1.0, 0.1), (8, 0.9, 0.05)])
def test_sampler_draws_only_what_the_host_sampler_keeps(emu_ops, top_k, top_p, min_p):
    rng = np.random.default_rng(top_k * 7 + int(top_p * 10))
    logits = (rng.normal(size=40) * 2).astype(np.float32)
    allowed = kept_set(logits, top_k, top_p, min_p)
    draws = [emu_ops.testing.sample_logits(logits, 0.7, top_k, top_p, min_p, 11, c) for c in range(8)]
    assert set(draws) <= allowed, (sorted(set(draws)), sorted(allowed))
    # the same (seed, counter) gives the same draw; a huge temperature still respects the filters
    assert emu_ops.testing.sample_logits(logits, 0.7, top_k, top_p, min_p, 11, 3) == draws[3]
    assert emu_ops.testing.sample_logits(logits, 50.0, top_k, top_p, min_p, 11, 0) in allowed


def test_sampler_distribution_and_extremes(emu_ops):
    # two tokens far above the rest: at T=1 the draw follows softmax over {a, b}
    logits = np.full(24, -40.0, np.float32)
    logits[3], logits[17] = 2.0, 2.0 + np.log(3.0)  # p(17) = 0.75
    draws = [emu_ops.testing.sample_logits(logits, 1.0, 0, 1.0, 0.0, 5, c) for c in range(30)]
    assert set(draws) <= {3, 17}
    assert 14 <= draws.count(17) <= 29  # binomial(30, 0.75): mean 22.5, sd 2.4
    # tiny temperature: the argmax; ties go to the smaller index
    logits2 = np.zeros(24, np.float32)
    logits2[9] = logits2[4] = 1.0
    assert emu_ops.testing.sample_logits(logits2, 1e-4, 1, 1.0, 0.0, 1, 0) in (4, 9)
    # NaNs are never drawn
    logits3 = np.full(24, np.nan, np.float32)
    logits3[6] = 0.0
    assert emu_ops.testing.sample_logits(logits3, 1.0, 0, 1.0, 0.0, 1, 0) == 6


def test_sampler_whole_row_fallback(emu_ops):
    # cap 4 < the candidates: the selection runs over the whole row (the path very high temperatures take)
    rng = np.random.default_rng(3)
    logits = rng.normal(size=40).astype(np.float32)
    allowed = kept_set(logits, 6, 0.9, 0.0)
    draws = {emu_ops.testing.sample_logits(logits, 0.9, 6, 0.9, 0.0, 2, c, cap=4) for c in range(2)}
    assert draws <= allowed


# ---- the memory plan is what the CUDA model allocates ------------------------------------------------------

@pytest.mark.parametrize("n_batch,n_ctx", [(1, 16), (8, 100), (32, 64)])
def test_memory_plan_is_what_the_model_allocates(emu_ops, tiny_f16, n_batch, n_ctx):
    """The plan (pyqwen._core, no GPU) against the emulated CUDA model's real allocations: weight arena,
    workspace, and one state (its KV rows and recurrent part, each region 256-byte aligned)."""
    from pyqwen.gguf_file import GGUFFile
    from pyqwen.memory_plan import plan

    gf = GGUFFile.open(tiny_f16)
    p = plan(gf, n_ctx, n_batch=n_batch)
    core = load_cuda_core(emu_ops, tiny_f16, n_batch=n_batch, n_ctx=n_ctx)
    assert core.weight_bytes == p.weights
    assert core.workspace == p.workspace
    st = core.new_state(n_ctx)
    regions = 1 + 2 * p.n_attn_layers
    assert 0 <= st.nbytes - (p.recurrent + p.kv_cache) < 256 * regions
    assert p.kv_per_token == 2 * p.n_attn_layers * gf.hparams.n_head_kv * gf.hparams.head_dim * 2  # K, V in fp16


# ---- a k-quant model: Q4_K / Q6_K weights end to end ------------------------------------------------------

def test_q4_k_m_model(emu_ops, aligned_q4km, aligned_q4km_f32):
    """The 256-aligned fixture (tests/fixtures/make_quant_fixture.py) as Q4_K_M (Q4_K embedding and
    projections, Q6_K LM head / ffn_down / attn_qkv): every k-quant weight goes through get_rows, the
    fp16 GEMM (prefill) and the Q8_1 mmv kernels (decode).

    The bar (see tests/test_convert_quant.py::check_agreement for why a random model needs one): the CPU
    quantizes activations to Q8_K before each k-quant dot product, the GPU to Q8_1 (decode) or fp16
    (prefill GEMM), and a random model amplifies those roundings to logit differences of ~1. So both are
    compared with the same weights dequantized to F32 on the CPU (no activation quantization at all):
    the GEMM prefill must match it closely (observed KL 2.5e-5, same top-1 everywhere); the Q8_1 decode
    steps must be no further from it than the CPU's own Q8_K path is (observed KL 3e-3 vs 7e-2).
    """
    tcq = pytest.importorskip("test_convert_quant")
    import pyqwen

    q4, deq = aligned_q4km, aligned_q4km_f32
    cpu_q4 = pyqwen.Model.load(str(q4), n_ctx=64, backend="cpu")._core
    cpu_deq = pyqwen.Model.load(str(deq), n_ctx=64, backend="cpu")._core
    core = load_cuda_core(emu_ops, q4, n_batch=32)

    prompt = PROMPT[:17]
    gs, cs, ds = core.new_state(64), cpu_q4.new_state(64, "f16"), cpu_deq.new_state(64, "f16")
    emu_ops.testing._set_prefill_mmq_disabled(True)  # the fp16 GEMM prefill (MMQ: tests/cuda/test_mmq.py)
    try:
        got = core.forward(gs, prompt, "all", 256)
    finally:
        emu_ops.testing._set_prefill_mmq_disabled(False)
    ref = cpu_deq.forward(ds, np.array(prompt, np.int32), "all", 256)
    cpu_q4.forward(cs, np.array(prompt, np.int32), "none", 256)
    assert tcq.kl_mean(got, ref) < 1e-3
    assert (got.argmax(1) == ref.argmax(1)).all()

    G, C, D = [], [], []
    for t in (5, 901):
        G.append(core.forward(gs, [t], "last", 256))
        C.append(cpu_q4.forward(cs, np.array([t], np.int32), "last", 256))
        D.append(cpu_deq.forward(ds, np.array([t], np.int32), "last", 256))
    G, C, D = map(np.array, (G, C, D))
    kl_gpu, kl_cpu = tcq.kl_mean(G, D), tcq.kl_mean(C, D)
    assert kl_gpu < 0.02 and kl_gpu <= max(kl_cpu, 1e-3), (kl_gpu, kl_cpu)
