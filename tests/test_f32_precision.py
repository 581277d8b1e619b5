"""The F32 path must be F32 all the way: bounds tight enough that an F16 KV cache (or any fp16 rounding
on the way) fails them.

Measured on the fixtures (relative to the logit scale): ours with an F32 KV cache vs llama.cpp with an
F32 KV cache 2.0e-5 .. 4.1e-5; ours with an F16 KV cache vs the same 2.7e-4 .. 8.0e-4. Against
transformers (float32, eager) ours-F32 is 6e-5 .. 3.1e-4 -- about what llama.cpp-F32 shows against it
(6e-5 .. 2.9e-4), i.e. transformers' own reduction order -- while ours-F16 is 2.8e-4 .. 7.9e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen
from pq_testutil import HF_MODELS, load_reference

LLAMA_F32_BOUND = 1e-4      # >= 2.4x the worst F32 observation, < 1/2.7 of the best F16 one
# transformers: per fixture, between the F32 and the F16 observations
HF_F32_BOUND = {"qwen35-r2-untied": 4e-4, "qwen35-r3-tied": 1.5e-4, "qwen35-r3-untied": 4.5e-4}


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", HF_MODELS)
def test_f32_kv_matches_transformers_tightly(gguf_cache, name):
    ref = load_reference(name)
    logits = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f32", threads=2).eval(ref["prompt_ids"].tolist())
    err = _rel(logits, ref["logits"])
    assert err < HF_F32_BOUND[name], f"{name}: {err:.2e} vs transformers"


def test_f32_kv_matches_llama_cpp_f32_kv(gguf_cache):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (.ci/run installs it)")
    for name in HF_MODELS:
        path = gguf_cache(name, "f32")
        ids = load_reference(name)["prompt_ids"].tolist()
        ours = pyqwen.Model.load(path, kv_type="f32", threads=2).eval(ids)
        # type_k / type_v = 0 is GGML_TYPE_F32: llama.cpp's cache is F16 unless told.
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2,
                              type_k=0, type_v=0)
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        del llm
        err = _rel(ours, theirs)
        assert err < LLAMA_F32_BOUND, f"{name}: F32 logits deviate from llama.cpp (F32 KV) by {err:.2e}"


def test_the_bounds_tell_f16_kv_apart(gguf_cache):
    """The F16 KV cache fails the transformers bound on every fixture: the bounds above have the power
    to catch an F32 cache silently rounded to fp16."""
    for name in HF_MODELS:
        ref = load_reference(name)
        logits = pyqwen.Model.load(gguf_cache(name, "f32"), kv_type="f16", threads=2).eval(ref["prompt_ids"].tolist())
        assert _rel(logits, ref["logits"]) > HF_F32_BOUND[name], name
