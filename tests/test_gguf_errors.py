"""Bad model files get ModelFormatError naming the problem; nothing crashes the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import pyqwen
from pq_testutil import HF_MODELS
from pyqwen.gguf_file import GGUFFile

NAME = HF_MODELS[0]


@pytest.fixture(scope="module")
def good(gguf_cache) -> Path:
    return gguf_cache(NAME, "f32")


def rewrite(src: Path, dst: Path, *, drop_keys=(), set_str=None, tensor_fn=None) -> Path:
    """Copy a GGUF through gguf's reader/writer, optionally dropping keys or replacing tensors."""
    r = gguf.GGUFReader(src)
    arch = "qwen35" if not set_str or "general.architecture" not in set_str else set_str["general.architecture"]
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys:
            continue
        vtype = f.types[0]
        value = f.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(name, value, vtype)
    for k, v in (set_str or {}).items():
        if k != "general.architecture":
            w.add_string(k, v)
    for t in r.tensors:
        name, data, ttype = t.name, np.asarray(t.data), t.tensor_type
        if tensor_fn:
            out = tensor_fn(name, data, ttype)
            if out is None:
                continue
            data, ttype = out
        w.add_tensor(name, data, raw_dtype=ttype)  # quantized data is given in its byte shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(pyqwen.ModelFormatError) as ei:
        pyqwen.Model.load(path, threads=1)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_roundtrip_copy_still_loads(good, tmp_path):
    p = rewrite(good, tmp_path / "copy.gguf")
    pyqwen.Model.load(p, threads=1)


def test_truncated_file(good, tmp_path):
    data = good.read_bytes()
    for cut, frag in [(len(data) - 1000, "past the end"), (len(data) // 2, "past the end"), (300, "GGUF"), (10, "too small")]:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        expect_error(p, frag)


def test_wrong_magic(good, tmp_path):
    p = tmp_path / "magic.gguf"
    p.write_bytes(b"GGML" + good.read_bytes()[4:])
    expect_error(p, "wrong magic")


def test_empty_and_missing_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    expect_error(tmp_path / "empty.gguf", "too small")
    with pytest.raises(FileNotFoundError):
        pyqwen.Model.load(tmp_path / "nope.gguf")


def test_wrong_architecture(good, tmp_path):
    p = rewrite(good, tmp_path / "arch.gguf", set_str={"general.architecture": "llama"})
    expect_error(p, "architecture", "llama")


def test_missing_key(good, tmp_path):
    p = rewrite(good, tmp_path / "nokey.gguf", drop_keys={"qwen35.embedding_length"})
    expect_error(p, "qwen35.embedding_length")


def test_missing_tensor(good, tmp_path):
    p = rewrite(good, tmp_path / "notensor.gguf", tensor_fn=lambda n, d, t: None if n == "blk.1.ssm_a" else (d, t))
    expect_error(p, "blk.1.ssm_a")


def test_wrong_tensor_shape(good, tmp_path):
    def fn(name, data, ttype):
        if name == "blk.0.ffn_up.weight":
            return data[:-1].copy(), ttype  # one output row short
        return data, ttype
    p = rewrite(good, tmp_path / "shape.gguf", tensor_fn=fn)
    expect_error(p, "blk.0.ffn_up.weight", "shape")


def test_unsupported_dtype(good, tmp_path):
    def fn(name, data, ttype):
        if name == "blk.2.ffn_down.weight":  # I32 is a valid ggml type, but no weight format
            return np.zeros(data.shape, dtype=np.int32), gguf.GGMLQuantizationType.I32
        return data, ttype
    p = rewrite(good, tmp_path / "dtype.gguf", tensor_fn=fn)
    expect_error(p, "blk.2.ffn_down.weight", "I32")


def _tensor_offset_position(path: Path, name: str) -> tuple[int, int]:
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    part = t.field.parts[-1]  # the u64 data offset of the tensor info
    return part.ctypes.data - r.data.ctypes.data, int(part[0])


def test_offset_past_end_of_file(good, tmp_path):
    pos, _ = _tensor_offset_position(good, "blk.3.attn_k.weight")
    data = bytearray(good.read_bytes())
    data[pos:pos + 8] = np.uint64(len(data) * 4 // 32 * 32).tobytes()
    p = tmp_path / "offset.gguf"
    p.write_bytes(bytes(data))
    expect_error(p, "blk.3.attn_k.weight", "past the end")


def test_unknown_type_id(good, tmp_path):
    r = gguf.GGUFReader(good)
    t = next(t for t in r.tensors if t.name == "output_norm.weight")
    part = t.field.parts[-2]  # the u32 ggml type of the tensor info
    pos = part.ctypes.data - r.data.ctypes.data
    del r
    data = bytearray(good.read_bytes())
    data[pos:pos + 4] = np.uint32(250).tobytes()
    p = tmp_path / "type.gguf"
    p.write_bytes(bytes(data))
    expect_error(p, "output_norm.weight", "unknown ggml type")


def test_tokenizer_size_mismatch(good, tmp_path):
    def fn(name, data, ttype):
        if name in ("token_embd.weight", "output.weight"):
            return data[:-64].copy(), ttype
        return data, ttype
    p = rewrite(good, tmp_path / "vocab.gguf", tensor_fn=fn)
    expect_error(p, "tokenizer")


FUZZ = r"""
import random, sys
import pyqwen
src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = bytearray(open(src, 'rb').read())
rng = random.Random(seed)
header = min(len(data), 64 * 1024)   # metadata and tensor infos live at the front
for _ in range(rng.randint(1, 8)):
    data[rng.randrange(4, header)] = rng.randrange(256)
open(dst, 'wb').write(bytes(data))
try:
    pyqwen.Model.load(dst, threads=1, n_ctx=64).eval([1, 2, 3])
except (pyqwen.ModelFormatError, ValueError, FileNotFoundError):
    pass
print("survived")
"""


def test_random_corruption_never_crashes(good, tmp_path):
    """Byte flips in the metadata/tensor-info region: an error or a load, never a crash or hang."""
    for seed in range(12):
        r = subprocess.run([sys.executable, "-c", FUZZ, str(good), str(tmp_path / f"f{seed}.gguf"), str(seed)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env=dict(os.environ, PYTHONPATH=str(Path(pyqwen.__file__).resolve().parents[1])))
        assert r.returncode == 0 and "survived" in r.stdout, f"seed {seed}: rc={r.returncode}\n{r.stderr[-2000:]}"


def test_metadata_reader(good):
    meta = pyqwen.gguf_file.read_metadata(good)
    assert meta["general.architecture"] == "qwen35"
    assert isinstance(meta["tokenizer.ggml.tokens"], list) and isinstance(meta["tokenizer.ggml.tokens"][0], str)
    hp = GGUFFile.open(good).hparams
    assert hp.recurrent == [(i + 1) % 4 != 0 for i in range(hp.n_layer)]
