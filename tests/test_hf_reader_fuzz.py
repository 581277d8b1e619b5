"""Fuzz of the HF checkpoint reader: mutated config.json values and safetensors headers either convert or
raise a PyqwenError (ConvertError) naming the problem -- never a foreign exception, and no allocation by
an unchecked length (a header length of 2^63 is refused before anything is read)."""

from __future__ import annotations

import json
import random
import shutil
import struct

import pytest

import pyqwen
from pq_testutil import FIXTURES

NAME = "qwen35-r3-tied"
CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "vocab_size", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
               "linear_value_head_dim", "linear_conv_kernel_dim", "rms_norm_eps", "layer_types", "rope_parameters",
               "architectures", "tie_word_embeddings", "max_position_embeddings", "full_attention_interval"]
BAD_VALUES = [None, 0, -1, 2 ** 63, 1e308, float("nan"), "12", "abc", [], {}, [1, 2], True, 0.5, {"a": 1}, "", [None]]


def _convert(d, out):
    from pyqwen.convert import convert

    try:
        convert(d, out, "f16", progress=False)
        return "ok"
    except pyqwen.PyqwenError as e:
        assert str(e), "an error without a message"
        return "error"


def _copy(tmp_path, i):
    d = tmp_path / f"c{i}"
    shutil.copytree(FIXTURES / "hf" / NAME, d, ignore=shutil.ignore_patterns("reference.npz"))
    return d


def test_config_values(tmp_path):
    rng = random.Random(5)
    outcomes = []
    for i in range(60):
        d = _copy(tmp_path, i)
        cfg = json.loads((d / "config.json").read_text())
        for _ in range(rng.randint(1, 2)):
            k = rng.choice(CONFIG_KEYS)
            if rng.random() < 0.15:
                cfg.pop(k, None)
            else:
                cfg[k] = rng.choice(BAD_VALUES)
        (d / "config.json").write_text(json.dumps(cfg, allow_nan=True))
        outcomes.append(_convert(d, tmp_path / f"o{i}.gguf"))
        shutil.rmtree(d)
    assert outcomes.count("error") > 30


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b"\xff\xfe", b"null", b"[" * 100000, "{\"a\": 1}".encode()])
def test_config_not_an_object(tmp_path, raw):
    d = _copy(tmp_path, 0)
    (d / "config.json").write_bytes(raw)
    assert _convert(d, tmp_path / "o.gguf") == "error"


def _rewrite_header(path, fn=None, hlen_override=None):
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    body = data[8 + hlen:]
    if fn:
        header = fn(header)
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", hlen_override if hlen_override is not None else len(hb)) + hb + body)


def _some_tensor(h):
    return next(k for k in h if k != "__metadata__")


HEADER_MUTATIONS = {
    "huge_header_len": dict(hlen_override=(1 << 63) + 5),
    "header_len_past_end": dict(hlen_override=10 ** 9),
    "header_not_json": dict(fn=lambda h: b"{not json"),
    "header_a_list": dict(fn=lambda h: [1, 2]),
    "entry_not_object": dict(fn=lambda h: {**h, _some_tensor(h): 5}),
    "bad_dtype": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "dtype": "Q9"}}),
    "dtype_not_string": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "dtype": ["BF16"]}}),
    "offsets_past_end": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "data_offsets": [0, 1 << 62]}}),
    "offsets_reversed": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "data_offsets": [8, 0]}}),
    "offsets_not_ints": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "data_offsets": ["0", 2]}}),
    "offsets_missing": dict(fn=lambda h: {**h, _some_tensor(h): {"dtype": "BF16", "shape": [2]}}),
    "negative_shape": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "shape": [-1, 4]}}),
    "huge_shape": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "shape": [1 << 62, 1 << 62]}}),
    "shape_not_list": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "shape": "64"}}),
    "shape_mismatch": dict(fn=lambda h: {**h, _some_tensor(h): {**h[_some_tensor(h)], "shape": [3]}}),
    "tensor_dropped": dict(fn=lambda h: {k: v for k, v in h.items() if k != _some_tensor(h)}),
}


@pytest.mark.parametrize("name", sorted(HEADER_MUTATIONS))
def test_safetensors_header(tmp_path, name):
    d = _copy(tmp_path, 0)
    _rewrite_header(d / "model.safetensors", **HEADER_MUTATIONS[name])
    assert _convert(d, tmp_path / "o.gguf") == "error"
