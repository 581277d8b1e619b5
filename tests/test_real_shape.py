"""The real-shape model (tests/real_shape.py: the 27B's head geometry, 4 layers, hidden 64) on a
400-token prompt against transformers, on the CPU backend.

Observed (relative to the logit scale 5.3): F32 weights + F32 KV 5.1e-6; F32 weights + F16 KV 4.8e-5.
The F32 bound (2e-5) sits between the two, so it also tells an F32 cache from an fp16-rounded one.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def test_geometry_is_the_27b_heads(real_shape):
    from pyqwen.gguf_file import read_metadata

    meta = read_metadata(real_shape["gguf"])
    assert meta["qwen35.attention.head_count"] == 24 and meta["qwen35.attention.head_count_kv"] == 4
    assert meta["qwen35.attention.key_length"] == 256 and meta["qwen35.rope.dimension_count"] == 64
    assert meta["qwen35.rope.freq_base"] == 1e7
    assert meta["qwen35.ssm.group_count"] == 16 and meta["qwen35.ssm.time_step_rank"] == 48
    assert meta["qwen35.ssm.state_size"] == 128
    assert 300 <= len(real_shape["prompt_ids"]) <= 600


@pytest.mark.parametrize("kv_type, bound", [("f32", 2e-5), ("f16", 2e-4)])
def test_prompt_logits_match_transformers(real_shape, kv_type, bound):
    m = pyqwen.Model.load(real_shape["gguf"], kv_type=kv_type, threads=2, n_ctx=1024)
    logits = m.eval(real_shape["prompt_ids"])
    err = _rel(logits, real_shape["logits"])
    assert err < bound, f"{kv_type}: {err:.2e} vs transformers"
    assert (logits.argmax(1) == real_shape["logits"].argmax(1)).all()


def test_greedy_decode_matches_transformers(real_shape):
    m = pyqwen.Model.load(real_shape["gguf"], kv_type="f32", threads=2, n_ctx=1024)
    gen = m.generate(real_shape["prompt_ids"], max_tokens=len(real_shape["greedy_ids"]), temperature=0)
    assert [t for c in gen for t in c.token_ids] == real_shape["greedy_ids"]
