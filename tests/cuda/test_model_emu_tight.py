"""The emulated CUDA backend's whole forward pass, per step, with tolerances near the observed error --
against transformers (independent) and the CPU backend.

test_model_emu.py allows 2e-2 absolute on the float-activation path, 40x its observed error: a RoPE base
of 1e6 instead of 1e7 (1.2e-2) passes it. Here, on the same fixture (qwen35-r2-untied, F16, logit scale
4.7) through the mmv path (chunks <= 16 tokens: a 16-token and an 8-token prefill chunk, then single-token
decode steps), observed: vs the CPU backend (F16 KV) <= 1.6e-3 absolute on the first chunk, <= 3.2e-4
after; vs transformers <= 3.1e-4 relative to the logit scale (the CPU's own F16-KV error against
transformers is 5.1e-4). Bounds: 4e-3 absolute vs the CPU, 8e-4 relative vs transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

NAME = "qwen35-r2-untied"
CHUNKS = [(0, 16), (16, 24), (24, 25), (25, 26), (26, 27), (27, 28)]
CPU_ATOL = 4e-3
HF_REL = 8e-4


def test_mmv_path_steps_match_transformers_and_cpu(emu_ops, gguf_cache):
    import pyqwen
    from pq_testutil import load_reference
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    path = gguf_cache(NAME, "f16")
    ref = load_reference(NAME)
    ids, hf = ref["prompt_ids"].tolist(), ref["logits"]
    scale = np.abs(hf).max()
    cpu = pyqwen.Model.load(path, kv_type="f16", threads=2, backend="cpu").eval(ids[:CHUNKS[-1][1]])
    core = CudaCore.from_gguf(GGUFFile.open(path), 64, n_batch=16, module=emu_ops)
    st = core.new_state(64)
    for a, b in CHUNKS:
        got = core.forward(st, ids[a:b], "all", 256)
        cpu_err = float(np.abs(got - cpu[a:b]).max())
        hf_err = float(np.abs(got - hf[a:b]).max() / scale)
        assert cpu_err < CPU_ATOL, f"tokens [{a}, {b}): {cpu_err:.2e} absolute vs the CPU backend"
        assert hf_err < HF_REL, f"tokens [{a}, {b}): {hf_err:.2e} relative vs transformers"
        assert (got.argmax(1) == hf[a:b].argmax(1)).all()
