"""Quantized KV cache (q8_0, q4_0; K and V independent) on the CPU against llama.cpp with the same cache
types, on the real-shape model (the 27B's attention geometry: 24/4 heads x 256, a 400-token prompt).

llama.cpp's CPU flash attention does what ours does: K rows quantized with the reference quantizer, scores
as the integer dot of a K block with q quantized to Q8_0, quantized V rows turned to floats before they are
accumulated. So the two engines must agree far more closely than either agrees with an F16 cache: the
tests assert both, so a wrong block layout, scale or row stride cannot hide inside the quantization error.
"""

from __future__ import annotations

import numpy as np
import pytest

import real_shape
from pq_testutil import has_module

pytestmark = pytest.mark.skipif(not (has_module("torch") and has_module("transformers")),
                                reason="needs torch + transformers (pip install pyqwen[reference])")

GGML = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
CASES = [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16"), ("f16", "q4_0")]


@pytest.fixture(scope="module")
def shape(tmp_path_factory):
    return real_shape.shared(tmp_path_factory)


def ours(path, ids, k, v):
    import pyqwen

    m = pyqwen.Model.load(path, n_ctx=512, kv_type=k, kv_type_v=v, backend="cpu", threads=2, spec="off")
    assert m.new_state().kv_type == (k if k == v else f"{k},{v}")
    return m.eval(ids)


def llama(path, ids, k, v):
    from pyqwen.llama_cpp_peer import open_llama

    llm = open_llama(path, logits_all=True, n_ctx=512, verbose=False, n_threads=2, type_k=GGML[k], type_v=GGML[v],
                     flash_attn=True)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.mark.skipif(not has_module("llama_cpp"), reason="llama-cpp-python not installed (pip install pyqwen[reference])")
@pytest.mark.parametrize("k,v", CASES)
def test_quantized_cache_matches_llama_cpp_with_the_same_types(shape, k, v):
    ids = shape["prompt_ids"]
    a, b = ours(shape["gguf"], ids, k, v), llama(shape["gguf"], ids, k, v)
    f16 = ours(shape["gguf"], ids, "f16", "f16")
    peer = float(np.abs(a - b).max())
    quant = float(np.abs(a - f16).max())
    print(f"K {k} V {v}: pyqwen vs llama.cpp {peer:.2e}; vs our F16 cache {quant:.2e}")
    assert peer < 2e-3
    assert peer < quant / 5  # the quantization is visible, and the engines agree well inside it


def test_cache_bytes_follow_the_types(shape):
    """Bytes per token from the spec: 4 KV heads x 256 values per row, one attention layer."""
    from pyqwen import _spec
    from pyqwen.gguf_file import GGUFFile

    cfg = GGUFFile.open(shape["gguf"]).hparams.core_config()
    row = 4 * 256
    for spec, (kb, vb) in {"f16": (2 * row, 2 * row), "q8_0": (34 * row // 32,) * 2, "q4_0": (18 * row // 32,) * 2,
                           "q8_0,q4_0": (34 * row // 32, 18 * row // 32), "f32,f16": (4 * row, 2 * row)}.items():
        assert _spec.state_bytes(cfg, 1, spec)["kv_per_token"] == kb + vb, spec


def test_bad_cache_types_are_clear_errors(shape):
    import pyqwen

    with pytest.raises(ValueError, match="KV cache type must be one of"):
        pyqwen.Model.load(shape["gguf"], kv_type="q5_0", backend="cpu")
    with pytest.raises(ValueError, match="either in kv_type"):
        pyqwen.Model.load(shape["gguf"], kv_type="q8_0,f16", kv_type_v="f16", backend="cpu")
