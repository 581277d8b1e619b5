"""Speculative decoding on a real GPU: the emulated scenarios of tests/cuda/test_spec_emu.py, run against
pyqwen._cuda with CUDA graphs on (a decode graph's device-resident position set again when a verification
or a rollback moved the position; the exact checks -- verification rows = one-token steps, verify + rollback = feeding the kept
tokens, greedy speculative tokens = plain decoding -- must hold there as well). The CPU-comparison bounds
are the emulator's observed errors with margin; a real GPU (FMA contraction, fast exp) may need its own,
which the first run on a card tells. Skipped without pyqwen._cuda or a device."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pq_testutil import gpu_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cuda"))
from test_model_emu import load_cuda_core  # noqa: E402
from test_spec_emu import (cpu, mtp_f16, prefilled, test_a_file_without_a_head_loads_without_one,  # noqa: E402,F401
                           test_eval_mtp_and_the_draft_chain_match_the_cpu,
                           test_quantized_verification_rows_are_one_token_steps,
                           test_greedy_speculative_output_is_plain_device_decoding,
                           test_rollback_is_feeding_only_the_kept_tokens,
                           test_rollback_on_states_without_an_mtp_cache, test_snapshot_carries_the_mtp_cache_and_input,
                           test_speculation_errors_are_the_cpus, test_the_mtp_head_is_loaded_and_planned,
                           test_verification_rows_are_one_token_steps_bit_for_bit)


gpu = gpu_module()
pytestmark = pytest.mark.skipif(gpu is None, reason="pyqwen._cuda not built or no CUDA device")


@pytest.fixture(scope="module")
def emu_ops():
    """The module the imported scenarios load their models from: here the real one."""
    return gpu


@pytest.fixture(scope="module")
def core(mtp_f16):
    c = load_cuda_core(gpu, mtp_f16, n_batch=8, n_ctx=32)
    assert c.graphs_enabled
    return c
