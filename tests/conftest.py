"""Shared fixtures: tiny qwen35 models (made with transformers, committed under tests/fixtures/hf/)
converted by our converter to GGUF once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
HF_MODELS = sorted(p.name for p in (FIXTURES / "hf").iterdir() if (p / "reference.npz").exists())


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory):
    """convert(name, type) -> path of our GGUF conversion of a fixture model (cached per session)."""
    from pyqwen.convert import convert

    root = tmp_path_factory.mktemp("gguf")
    done: dict[tuple[str, str], Path] = {}

    def get(name: str, out_type: str = "f32") -> Path:
        key = (name, out_type)
        if key not in done:
            done[key] = convert(FIXTURES / "hf" / name, root / f"{name}-{out_type}.gguf", out_type, progress=False)
        return done[key]

    return get


def load_reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "hf" / name / "reference.npz") as z:
        return {k: z[k] for k in z.files}
