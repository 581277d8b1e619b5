"""Helpers shared by the tests (a uniquely named module: tests/ and tests/cuda/ both have a conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
# The tiny transformers-made models (tests/fixtures/make_references.py) with reference outputs.
HF_MODELS = sorted(p.name for p in (FIXTURES / "hf").iterdir() if (p / "reference.npz").exists())


def load_reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "hf" / name / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def gpu_module():
    """pyqwen._cuda when it is built and sees a CUDA device, else None (the tests/gpu/ files skip)."""
    try:
        from pyqwen import _cuda
    except ImportError:
        return None
    if not hasattr(_cuda, "CudaModel") or _cuda.device_count() <= 0:
        return None
    return _cuda


def has_module(name: str) -> bool:
    """Whether `name` is importable (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None
