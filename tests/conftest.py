"""Shared fixtures: tiny qwen35 models (made with transformers, committed under tests/fixtures/hf/)
converted by our converter to GGUF once per test session."""

from __future__ import annotations

import sys
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


@pytest.fixture(scope="module")
def tiny_f16(gguf_cache):
    """The small untied fixture model as F16 GGUF (the CUDA-vs-CPU comparisons' model)."""
    return gguf_cache("qwen35-r2-untied", "f16")


@pytest.fixture(scope="module")
def cpu_model(tiny_f16):
    """tiny_f16 on the CPU backend: the reference the CUDA backends are compared with."""
    import pyqwen

    return pyqwen.Model.load(str(tiny_f16), n_ctx=64, backend="cpu")


@pytest.fixture(scope="session")
def real_shape(tmp_path_factory):
    """The real-shape model (tests/real_shape.py) with transformers' reference outputs, made once."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import real_shape

    return real_shape.shared(tmp_path_factory)


@pytest.fixture(scope="module")
def hf():
    """transformers' AutoTokenizer of the demo model: its chat template is the reference renderer."""
    transformers = pytest.importorskip("transformers")
    import pyqwen

    return transformers.AutoTokenizer.from_pretrained(str(Path(pyqwen.__file__).parent / "data" / "demo_tokenizer"))


@pytest.fixture(scope="session")
def aligned_q4km(tmp_path_factory) -> Path:
    """The 256-aligned k-quant fixture (fixtures/make_quant_fixture.py) converted to Q4_K_M."""
    import pyqwen  # noqa: F401  (the installed package, before the fixture script puts the repo on sys.path)

    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    mqf = pytest.importorskip("make_quant_fixture")
    from pyqwen.convert import convert

    root = tmp_path_factory.mktemp("aligned-q4km")
    return convert(mqf.build_checkpoint(root / "hf"), root / "aligned-q4_k_m.gguf", "q4_k_m", progress=False)


@pytest.fixture(scope="session")
def aligned_q4km_f32(aligned_q4km) -> Path:
    """aligned_q4km with every tensor dequantized to F32: the same weights without activation quantization."""
    tcq = pytest.importorskip("test_convert_quant")
    return tcq.dequantized_copy(aligned_q4km, aligned_q4km.with_name("aligned-deq.gguf"))
