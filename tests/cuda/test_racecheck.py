"""racecheck (cuda/emu/emu_racecheck.cpp, cuda/README.md): the shared-memory race detector of the emulator.

Its own build (emu_build.build(racecheck=True)): the modules share their names with the ordinary ones, so
everything here runs in subprocesses.

- Planted bugs fire: a missing __syncthreads (the self-test reduction built without its barriers:
  write-read and read-write races on its static __shared__ array), two threads of two warps writing one
  word (write-write), a lane exchange through dynamic shared memory without __syncwarp (write-read), the
  same exchange across warps with only __syncwarp (which orders one warp's lanes only).
- No false alarms: the lane exchange with __syncwarp, 96 atomicAdds on one shared int.
- Every real kernel family runs clean: the kernel test files (norms, quantizers, element-wise, argmax,
  matvec decode, prefill GEMM helpers, int8 MMQ, conv1d, GDN decode/chunk, RoPE + attention decode/prefill
  over f16, quantized and Hadamard-rotated caches) and the device sampler, under racecheck, at their small shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import emu_build

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def rc_paths():
    try:
        import pybind11  # noqa: F401
    except ImportError:
        pytest.skip("pybind11 is needed to build the emulated CUDA modules")
    return emu_build.build(racecheck=True)


def run_selftest(rc_paths, call: str):
    """Runs `m.<call>` on the racecheck self-test module in a subprocess: (returncode, stdout, stderr)."""
    so = rc_paths[emu_build.SELFTEST_MODULE]
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import emu_build\n"
            f"m = emu_build.load({emu_build.SELFTEST_MODULE!r}, {str(so)!r})\n"
            f"assert m.RACECHECK\n"
            f"r = m.{call}\n"
            f"print(repr(r.tolist() if hasattr(r, 'tolist') else r))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("call,kind,where,threads", [
    ("block_sum_nobarrier()", "write-read race", "static __shared__ nobarrier::", None),
    ("rc_write_write()", "write-write race", "rc_write_write_kernel(int*)::slot + byte 20", ("thread 0 ", "thread 33 ")),
    ("rc_warp_exchange(False)", "write-read race", "dynamic shared memory + byte", None),
    ("rc_cross_warp()", "write-read race", "dynamic shared memory + byte", None),
])
def test_planted_races_are_reported(rc_paths, call, kind, where, threads):
    rc, _, err = run_selftest(rc_paths, call)
    assert rc != 0, "the race went unreported"
    assert "pq_emu racecheck:" in err and kind in err and where in err, err
    assert "with no barrier between them" in err
    if threads:
        assert all(t in err for t in threads), err


def test_cross_warp_report_names_both_warps(rc_paths):
    _, _, err = run_selftest(rc_paths, "rc_cross_warp()")
    line = next(ln for ln in err.splitlines() if "write-read race" in ln)
    assert "warp 0 lane" in line and "warp 1 lane" in line


@pytest.mark.parametrize("call,expect", [
    ("rc_warp_exchange(True)", [10 * (t ^ 1) for t in range(64)]),  # __syncwarp orders the lanes
    ("rc_shared_atomics()", 96),                                      # atomics are not races
    ("block_sum([1.0] * 512, True)", [256.0, 256.0]),                  # barriers end intervals
])
def test_no_false_alarms(rc_paths, call, expect):
    rc, out, err = run_selftest(rc_paths, call)
    assert rc == 0, err
    assert "racecheck" not in err
    assert eval(out.strip()) == expect


# Each kernel family's tests (their small shapes) under racecheck.
KERNEL_TESTS = [
    "test_kernels_basic.py",  # rms_norm, quantize_q8_1, swiglu, add, argmax
    "test_matvec.py",         # mmv decode kernels (all types), quantize_act, get_rows
    "test_gemm.py",           # f32_to_f16_rows, dequant tiles, scale_rows (the GEMM itself is host code here)
    "test_gdn.py",            # conv1d, gdn decode, gdn prep / chunk prep / chunk scan, gated norm
    "test_attention.py",      # norm + RoPE + append, decode, prefill (cp.async / ldmatrix twins), combine
    "test_attention_kvq.py",  # the same over Q8_0 / Q4_0 caches (dequantizing tile loads)
    "test_attention_rotation.py",  # Hadamard-rotated caches: the rotation in each kernel's shared memory
    "test_mmq.py",            # int8 MMQ prefill (mma twin), quantize_act
    "test_tile_load.py",      # ldmatrix / cp.async emulation probes
    # the matmul's last-CTA layer-entry epilogue (add + RMSNorm + Q8_1 by 128 threads playing 256)
    "test_decode_fused.py::test_matmul_norm_epilogue_equals_add_rms_norm_q8",
]
# The largest cases add minutes under racecheck and no kernel path the smaller ones miss (the 66-token
# dk = 128 GDN and the 130-token one, million-value add/argmax rows, MMQ at the 27B's depth and through
# a whole model).
SLOW = "not 1x3x128x128 and not n130 and not 1000003 and not 151936 and not model_prefill and not 27b_depth"
SAMPLER_TESTS = ["test_model_emu.py::test_sampler_draws_only_what_the_host_sampler_keeps",
                 "test_model_emu.py::test_sampler_distribution_and_extremes",
                 "test_model_emu.py::test_sampler_whole_row_fallback"]


def test_real_kernels_have_no_races(rc_paths):
    env = dict(os.environ, PYQWEN_EMU_RACECHECK="1")
    args = [str(HERE / t) for t in KERNEL_TESTS] + [str(HERE / t) for t in SAMPLER_TESTS]
    # -s: the report is printed just before abort(), which would take pytest's captured output with it
    r = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-s", "-x", "-p", "no:cacheprovider", "-k", SLOW,
                        *args],
                       capture_output=True, text=True, env=env, timeout=3600)
    tail = (r.stdout + r.stderr)[-6000:]
    assert "pq_emu racecheck" not in r.stdout + r.stderr, tail
    assert r.returncode == 0, tail
