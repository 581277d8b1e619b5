"""Programmatic dependent launch (cuda/pdl.cuh): every kernel launched with PQ_LAUNCH_PDL waits for its
predecessor grid before anything else.

A PDL launch may start while the previous kernel of the stream still runs (sm_90+ only); the kernel is
correct only if griddepcontrol.wait (pq_grid_dependency_wait) comes before its first global memory
access. The emulator runs kernels one after the other, so it cannot see a missing wait (pdl.cuh says why
its twin is a no-op); this test reads the sources instead: the first statement of each such kernel's body
must be the wait. No build needed.
"""

from __future__ import annotations

import re
from pathlib import Path

CUDA = Path(__file__).resolve().parents[2] / "cuda"
# the decode body's kernels (model.cu run_layers_decode / attention_decode_graph / the position node)
DECODE_BODY = {"mmv_kernel", "add_rms_norm_q8_kernel", "gdn_decode_kernel", "qk_norm_rope_kernel",
               "attn_decode_kernel", "attn_combine_kernel", "decode_position_kernel"}


def pdl_kernels() -> set[str]:
    names = set()
    for src in sorted((CUDA / "launch").glob("*.cu")):
        text = src.read_text()
        aliases = dict(re.findall(r"auto\*\s+(\w+)\s*=\s*(\w+)\s*<", text))
        for name in re.findall(r"PQ_LAUNCH_PDL\(\s*(\w+)", text):
            names.add(aliases.get(name, name))
    return names


def kernel_bodies() -> dict[str, str]:
    """name -> source after the opening brace of its __global__ definition."""
    out = {}
    for src in sorted((CUDA / "kernels").glob("*.cuh")):
        text = src.read_text()
        for m in re.finditer(r"__global__", text):
            head_end = text.index("{", m.end())
            head = text[m.end():head_end]
            name = re.search(r"(\w+)\s*\(", head.split("__launch_bounds__")[-1].split(")", 1)[-1]
                             if "__launch_bounds__" in head else head)
            if name:
                out[name.group(1)] = text[head_end + 1:]
    return out


def test_pdl_kernels_wait_first():
    launched = pdl_kernels()
    assert DECODE_BODY <= launched, DECODE_BODY - launched
    bodies = kernel_bodies()
    for name in sorted(launched):
        assert name in bodies, f"{name}: no __global__ definition found in cuda/kernels"
        body = bodies[name].lstrip()
        # allowed before the wait: the L2 prefetch hints of the weights (pq_prefetch_*: no load, no store;
        # the weights never depend on the predecessor), each one statement
        while re.match(r"pq_prefetch_\w+\s*(<[^;>]*>)?\s*\(args\)\s*;", body):
            body = body.split(";", 1)[1].split("\n", 1)[-1].lstrip()
        first = body.split(";", 1)[0]
        assert first == "pq_grid_dependency_wait()", f"{name} starts with {first!r}, not the PDL wait"


def test_pdl_prefetch_hints_do_not_touch_memory():
    """The helpers allowed before the wait issue only prefetch.global.L2 (compiled for sm_90+ only): no
    load, no store, no other instruction that reads global memory."""
    text = (CUDA / "kernels" / "matvec.cuh").read_text()
    start = text.index("__device__ __forceinline__ void pq_prefetch_mmv_weights")
    body = text[start:text.index("\n}\n", start)]
    assert "#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 900" in body
    assert re.findall(r'asm volatile\("([^"]*)"', body) == ["prefetch.global.L2 [%0];"]
    for forbidden in ("__ldg", "ld.global", "*sg.w", "sg.w[g][", "atomic", "volatile float"):
        assert forbidden not in body, forbidden


def test_pdl_instructions_only_for_sm90():
    text = (CUDA / "pdl.cuh").read_text()
    for instr in ('asm volatile("griddepcontrol.wait', 'asm volatile("griddepcontrol.launch_dependents'):
        at = text.index(instr)
        guard = text.rfind("#if", 0, at)
        assert "PQ_DEVICE_ARCH >= 900" in text[guard:at] and "#endif" not in text[guard:at], instr
