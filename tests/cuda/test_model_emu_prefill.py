"""The emulated CUDA backend's multi-token prefill (chunks of > 16 tokens: the fp16 GEMM, the chunked Gated
DeltaNet, flash prefill attention) against the CPU backend and transformers, with tolerances near the observed
error -- issue 10 part A.

Before the fix these chunks drifted: max |dlogit| vs the CPU 0.063 at a 20-token chunk, 0.55 at 32 (rows
22-23), 1.77 at 40, and the decode steps after a 40-token prefill were off by 0.6-1.56. Cause: the GEMM's
activations rounded to fp16 (11 bits), which the fixture's Gated DeltaNet amplifies -- transformers in
float64 with only in_proj_qkv's input rounded to fp16 moves a 32-token prefill by 0.55 (every linear input
rounded: 0.59, the same rows). Float weights now get hi + lo fp16 activations (kernels/gemm.cuh).

Model: qwen35-r2-untied, F16 (logit scale 4.7), F16 KV on both backends. Observed after the fix (load ~13):
  - one 64-token chunk (the GDN's whole first chunk): 1.8e-3 absolute vs the CPU, 4.3e-4 relative to the
    logit scale vs transformers;
  - chunks of 20, 32, 12 tokens in turn (state and KV carried): 1.8e-3 / 4.0e-4;
  - a 40-token chunk, then 8 single-token decode steps: prefill 1.8e-3 / 4.0e-4, decode <= 7.3e-4 / 3.3e-4;
  the same as the <= 16-token path (test_model_emu_tight.py: 1.6e-3 / 3.1e-4). Bounds: 4e-3 absolute vs
  the CPU, 8e-4 relative vs transformers (those of test_model_emu_tight.py).
  - one 100-token chunk (crosses the GDN's 64-token chunk boundary; the prompt is the 64 reference tokens
    and its first 36 again; transformers run here in float64): 7.0e-3 vs the CPU, 1.6e-3 relative vs
    transformers, both on row 67 only (every other row <= 2.5e-3 / 5e-4). That row is sensitive to the
    flash prefill kernel's fp16 Q and P (llama.cpp's FA arithmetic): transformers in float64 with q and k
    rounded to fp16 moves it by 3.9e-3, and the same prompt through single-token decode steps (fp32 Q)
    stays within 2.4e-3. Bounds: 1.6e-2 absolute vs the CPU, 3.5e-3 relative vs transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

NAME = "qwen35-r2-untied"
CPU_ATOL = 4e-3
HF_REL = 8e-4
LONG_CPU_ATOL = 1.6e-2
LONG_HF_REL = 3.5e-3


@pytest.fixture(scope="module")
def setup(emu_ops, gguf_cache):
    import pyqwen
    from pq_testutil import load_reference
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    path = gguf_cache(NAME, "f16")
    ref = load_reference(NAME)
    core = CudaCore.from_gguf(GGUFFile.open(path), 128, n_batch=100, module=emu_ops)
    cpu = pyqwen.Model.load(path, kv_type="f16", threads=2, backend="cpu")
    return core, cpu, ref, path


def run_chunks(core, ids, chunks):
    st = core.new_state(128)
    out = []
    for a, b in chunks:
        out.append(core.forward(st, ids[a:b], "all", 256))
    return np.concatenate(out)


@pytest.mark.parametrize("chunks", [
    [(0, 64)],
    [(0, 20), (20, 52), (52, 64)],
    [(0, 40)] + [(t, t + 1) for t in range(40, 48)],
], ids=["64", "20+32+12", "40+decode"])
def test_prefill_chunks_match_transformers_and_cpu(setup, chunks):
    core, cpu_model, ref, _ = setup
    ids, hf = ref["prompt_ids"].tolist(), ref["logits"]
    scale = np.abs(hf).max()
    n = chunks[-1][1]
    cpu = cpu_model.eval(ids[:n])
    got = run_chunks(core, ids, chunks)
    for a, b in chunks:
        cpu_err = float(np.abs(got[a:b] - cpu[a:b]).max())
        hf_err = float(np.abs(got[a:b] - hf[a:b]).max() / scale)
        assert cpu_err < CPU_ATOL, f"tokens [{a}, {b}): {cpu_err:.2e} absolute vs the CPU backend"
        assert hf_err < HF_REL, f"tokens [{a}, {b}): {hf_err:.2e} relative vs transformers"
    assert (got.argmax(1) == hf[:n].argmax(1)).all()


def test_prefill_100_token_chunk(setup):
    """One chunk across the GDN's 64-token chunk boundary (the 100 tokens cannot use the reference logits:
    transformers runs here, in float64)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from pq_testutil import FIXTURES

    core, cpu_model, ref, _ = setup
    base = ref["prompt_ids"].tolist()
    ids = base + base[:36]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(FIXTURES / "hf" / NAME),
                                                                 dtype=torch.float64).eval()
    with torch.no_grad():
        hf = hf_model(torch.tensor([ids])).logits[0].numpy()
    cpu = cpu_model.eval(ids)
    got = run_chunks(core, ids, [(0, 100)])
    cpu_err = float(np.abs(got - cpu).max())
    hf_err = float(np.abs(got - hf).max() / np.abs(hf).max())
    assert cpu_err < LONG_CPU_ATOL, f"{cpu_err:.2e} absolute vs the CPU backend"
    assert hf_err < LONG_HF_REL, f"{hf_err:.2e} relative vs transformers"
    assert (got.argmax(1) == hf.argmax(1)).all()


def test_prefill_overlapped_tiles_bf16(emu_ops, gguf_cache):
    """BF16 weights go through the fp16 fallback's tiles (no MMQ, no direct F16 GEMM). With 64-row tiles
    the fixture's matrices take 1-4 tiles (attention q: 256 rows, 4 tiles, each buffer reused), dequantized
    on the side stream while the previous tile multiplies: the logits equal the serial order's bit for bit
    and stay within the F16 model's bounds of the CPU backend and transformers."""
    import pyqwen
    from pq_testutil import load_reference
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    path = gguf_cache(NAME, "bf16")
    ref = load_reference(NAME)
    ids, hf = ref["prompt_ids"].tolist()[:40], ref["logits"][:40]
    core = CudaCore.from_gguf(GGUFFile.open(path), 128, n_batch=40, module=emu_ops)
    t = emu_ops.testing
    t._set_prefill_tile_values(1)  # the minimum: 64 rows per tile (smaller than the plan: always fits)
    try:
        got = run_chunks(core, ids, [(0, 40)])
        t._set_prefill_overlap(False)
        serial = run_chunks(core, ids, [(0, 40)])
    finally:
        t._set_prefill_overlap(True)
        t._set_prefill_tile_values(0)
    np.testing.assert_array_equal(got.view(np.uint32), serial.view(np.uint32))
    cpu = pyqwen.Model.load(path, kv_type="f16", threads=2, backend="cpu").eval(ids)
    assert float(np.abs(got - cpu).max()) < CPU_ATOL
    assert float(np.abs(got - hf).max() / np.abs(hf).max()) < HF_REL
    assert (got.argmax(1) == hf.argmax(1)).all()
