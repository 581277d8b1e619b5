"""What this installation was built with, for `pyqwen --version`: the CPU kernel sets compiled into
pyqwen._core (and the one this CPU uses), the CUDA architectures of pyqwen._cuda, and whether it links
cuBLAS (without it, GPU prefill falls back to the matrix-vector kernels). CMake writes build_info.json
next to the extension modules at install time."""

from __future__ import annotations

import json
from importlib import resources


def read() -> dict | None:
    """The build's facts, or None for a source tree that was never built."""
    try:
        raw = resources.files("pyqwen").joinpath("build_info.json").read_text(encoding="utf-8")
        return json.loads(raw)
    except (OSError, ValueError):
        return None


def describe() -> str:
    from . import __version__

    lines = [f"pyqwen {__version__}"]
    info = read()
    if info is None:
        return lines[0] + " (no build information: the C++ extensions were not built by CMake)"
    try:
        from . import _core

        in_use = _core.simd_backend()
    except ImportError as e:
        in_use = f"not importable: {e}"
    lines.append(f"CPU kernels: {info['simd'].replace(',', ', ')} (in use on this CPU: {in_use})")
    archs = info.get("cuda_architectures") or ""
    if archs:
        cublas = "cuBLAS linked" if info.get("cublas") else \
            "cuBLAS not found at build time: GPU prefill uses the slower matrix-vector kernels (see README, GPU)"
        lines.append(f"CUDA: sm_{archs.replace(',', ', sm_')}; {cublas}")
    else:
        lines.append("CUDA: not built (no nvcc when installed, or PYQWEN_CUDA=off)")
    return "\n".join(lines)
