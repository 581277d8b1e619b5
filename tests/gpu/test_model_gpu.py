"""The CUDA backend on a real GPU: the emulated scenarios of tests/cuda/test_model_emu.py (same checks,
longer prompts) plus what only a GPU shows -- CUDA-graph decode (capture, in-place update, replay) giving
the same tokens as direct launches, and Model-level loading. Skipped without pyqwen._cuda or a device."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pq_testutil import gpu_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cuda"))
from test_model_emu import (PROMPT, SHORT, assert_logits_close, check_errors, check_gemm_prefill,  # noqa: E402
                            check_prefill_decode_snapshot, check_sampling_decode, load_cuda_core)


cuda = gpu_module()
pytestmark = pytest.mark.skipif(cuda is None, reason="pyqwen._cuda not built or no CUDA device")


@pytest.mark.parametrize("n_batch,prompt", [(4, SHORT), (16, PROMPT), (32, PROMPT)])
def test_forward_decode_snapshot_match_cpu(tiny_f16, cpu_model, n_batch, prompt):
    core = load_cuda_core(cuda, tiny_f16, n_batch=n_batch)
    check_prefill_decode_snapshot(core, cpu_model, prompt, n_decode=6)


def test_gemm_prefill_sampling_errors(tiny_f16, cpu_model):
    core = load_cuda_core(cuda, tiny_f16, n_batch=32)
    check_gemm_prefill(core, cpu_model, PROMPT)
    check_sampling_decode(core)
    check_errors(core)


def test_graph_decode_equals_direct_decode(tiny_f16, cpu_model):
    graphs = load_cuda_core(cuda, tiny_f16, n_batch=8)
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    direct = CudaCore.from_gguf(GGUFFile.open(tiny_f16), 64, n_batch=8, module=cuda, use_graphs=False, progress=False)
    assert graphs.graphs_enabled and not direct.graphs_enabled
    outs = []
    for core in (graphs, direct):
        st = core.new_state(64)
        logits = core.forward(st, SHORT, "last", 256)
        toks = [core.decode(st, int(logits.argmax()))] + [core.decode(st, -1) for _ in range(20)]
        outs.append(toks)
    assert outs[0] == outs[1]
    g = graphs.graph_stats
    # step 1 runs directly, later steps replay one graph recorded once (position in device memory; 7..27
    # keys are one bucket of the attention grid), the position set from the host once
    assert g["launches"] >= 19 and g["captures"] == 1 and g["instantiations"] == 1 and g["updates"] == 0, g
    assert g["pos_sets"] == 1, g
    # the captured graph holds the nodes the emulator's ledger counts (cudaGraphGetNodes; issue 10), plus
    # the node that advances the device-resident position
    from test_decode_nodes_emu import body_nodes, layers_of

    assert g["body_nodes"] == body_nodes(layers_of(GGUFFile.open(tiny_f16))) + 1, g
    # the CPU agrees on the first tokens
    cs = cpu_model._core.new_state(64, "f16")
    tok = int(cpu_model._core.forward(cs, np.array(SHORT, np.int32), "last", 256).argmax())
    want = []
    for _ in range(8):
        tok = int(cpu_model._core.forward(cs, np.array([tok], np.int32), "last", 256).argmax())
        want.append(tok)
    assert outs[0][:8] == want


def test_graph_forward_one_token_matches_cpu(tiny_f16, cpu_model):
    core = load_cuda_core(cuda, tiny_f16, n_batch=8)
    cs, gs = cpu_model._core.new_state(64, "f16"), core.new_state(64)
    cpu_model._core.forward(cs, np.array(SHORT, np.int32), "none", 256)
    core.forward(gs, SHORT, "none", 256)
    for t in (5, 9, 2400, 17, 3, 3, 3):
        a = core.forward(gs, [t], "last", 256)  # graph replays after the first step
        b = cpu_model._core.forward(cs, np.array([t], np.int32), "last", 256)
        assert_logits_close(a, b)
    assert core.graph_stats["launches"] >= 5


def test_two_states_interleaved(tiny_f16):
    core = load_cuda_core(cuda, tiny_f16, n_batch=8)
    a, b = core.new_state(64), core.new_state(64)
    core.forward(a, SHORT, "none", 256)
    core.forward(b, SHORT[:3], "none", 256)
    ta = [core.decode(a, 1)]
    tb = [core.decode(b, 2)]
    for _ in range(4):  # graphs keyed by state and bucket, each with its own position: never mixes states
        ta.append(core.decode(a, ta[-1]))
        tb.append(core.decode(b, tb[-1]))
    a2, b2 = core.new_state(64), core.new_state(64)
    core.forward(a2, SHORT, "none", 256)
    core.forward(b2, SHORT[:3], "none", 256)
    ra = [core.decode(a2, 1)] + [core.decode(a2, -1) for _ in range(4)]
    rb = [core.decode(b2, 2)] + [core.decode(b2, -1) for _ in range(4)]
    assert (ta, tb) == (ra, rb)


def test_sampler_on_gpu_keeps_the_host_filters():
    from test_model_emu import kept_set

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=248320) * 3).astype(np.float32)
    allowed = kept_set(logits, 40, 0.95, 0.05)
    draws = {cuda.testing.sample_logits(logits, 0.8, 40, 0.95, 0.05, 1, c) for c in range(200)}
    assert draws <= allowed and len(draws) > 1
    # temperature 5: the candidate list overflows and the whole-row path runs
    allowed = kept_set(logits, 0, 1.0, 0.0)
    assert cuda.testing.sample_logits(logits, 5.0, 0, 1.0, 0.0, 1, 0) in allowed


def test_one_token_chunks_with_graphs(tiny_f16, cpu_model):
    """Issue 10 bug 1 on the card: n_batch = 1 over a whole prompt (one-token chunks, graph replays after
    the first) gives the CPU's last logits -- each chunk's id reached the device before the next one."""
    core = load_cuda_core(cuda, tiny_f16, n_batch=8)
    cs, gs = cpu_model._core.new_state(64, "f16"), core.new_state(64)
    ref = cpu_model._core.forward(cs, np.array(SHORT, np.int32), "last", 256)
    got = core.forward(gs, SHORT, "last", 1)
    assert_logits_close(got, ref)
