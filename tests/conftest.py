"""Shared fixtures: tiny qwen35 models (made with transformers, committed under tests/fixtures/hf/)
converted by our converter to GGUF once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pq_testutil import FIXTURES


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

