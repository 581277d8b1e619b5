"""Lazy, tensor-by-tensor access to a Hugging Face Qwen3.5/3.6 checkpoint directory.

Only headers are read up front, so a converter can plan the whole output (names, shapes, types)
before touching any weight, and then load one tensor at a time: peak memory stays at about one
tensor in float32 even for the 27B model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PyqwenError


class ConvertError(PyqwenError, ValueError):
    """A checkpoint cannot be converted (bad config, missing/unexpected tensor, wrong shape)."""


# HF class names this converter understands; both carry the same text model.
SUPPORTED_ARCHITECTURES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")

# Storage dtypes we accept. BF16 is kept as raw uint16 and widened by hand because numpy
# has no bfloat16 (safetensors' numpy backend refuses it) and we do not want torch as a dependency.
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: enough to memory-map it later without re-reading headers."""

    file: Path
    dtype: str  # safetensors dtype string: F32, F16 or BF16
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in `file`
    nbytes: int


def normalize_name(name: str) -> str:
    """Map the multimodal checkpoint layout onto the text-only one.

    `Qwen3_5ForConditionalGeneration` stores the text model under `model.language_model.` and MTP
    sometimes under `model.mtp.`; the text-only class uses `model.` and `mtp.`.
    """
    name = name.replace("language_model.", "", 1)
    if name.startswith("model.mtp."):
        name = name[len("model."):]
    return name


def _read_header(path: Path) -> dict[str, TensorRef]:
    # safetensors layout: u64 little-endian header length, JSON header, then the raw data block.
    try:
        with open(path, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
    except (OSError, struct.error, ValueError) as e:
        raise ConvertError(f"{path.name}: not a readable safetensors file ({e})") from e
    base = 8 + hlen
    refs = {}
    for raw_name, info in header.items():
        if raw_name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise ConvertError(f"tensor {raw_name!r} in {path.name}: unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize:
            raise ConvertError(f"tensor {raw_name!r} in {path.name}: size does not match its shape")
        refs[raw_name] = TensorRef(path, dtype, shape, base + begin, end - begin)
    return refs


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"{index.name}: no weight_map")
        files = sorted(set(weight_map.values()))
        for fname in files:
            if not (model_dir / fname).is_file():
                missing = sorted(n for n, f in weight_map.items() if f == fname)
                raise ConvertError(f"missing tensor {missing[0]!r}: shard {fname} is absent")
        return [model_dir / f for f in files]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{model_dir}: no .safetensors weights found")
    return files


def load_config(model_dir: Path) -> tuple[dict, str]:
    """Return (text hyper-parameters, HF architecture name).

    The multimodal checkpoint nests the text settings in `text_config`; values there win over the
    top level, while top-level-only keys (e.g. `tie_word_embeddings`) are kept.
    """
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConvertError(f"{model_dir}: config.json not found")
    top = json.loads(path.read_text(encoding="utf-8"))
    archs = top.get("architectures") or []
    arch = archs[0] if archs else ""
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConvertError(
            f"unknown architecture {arch or '(none)'!r}; expected one of {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    text = top.get("text_config") or {}
    return {**top, **text}, arch


class HFCheckpoint:
    """A checkpoint directory: merged text config plus an index of all tensors by normalised name."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise ConvertError(f"{self.dir}: not a directory")
        self.config, self.architecture = load_config(self.dir)
        self.tensors: dict[str, TensorRef] = {}
        for shard in _shard_files(self.dir):
            for raw_name, ref in _read_header(shard).items():
                name = normalize_name(raw_name)
                if name in self.tensors:
                    raise ConvertError(f"tensor {raw_name!r} appears twice in the checkpoint")
                self.tensors[name] = ref
        self._check_index()

    def _check_index(self) -> None:
        # A weight map that names a tensor no shard holds means a truncated download.
        index = self.dir / "model.safetensors.index.json"
        if not index.is_file():
            return
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        for raw_name in weight_map:
            if normalize_name(raw_name) not in self.tensors:
                raise ConvertError(f"missing tensor {raw_name!r}: listed in the index but in no shard")

    def load(self, name: str) -> np.ndarray:
        """Read one tensor as a fresh float32 array (the converter's working precision)."""
        ref = self.tensors[name]
        raw = np.memmap(ref.file, dtype=_DTYPES[ref.dtype], mode="r", offset=ref.offset, shape=ref.shape)
        try:
            if ref.dtype == "BF16":
                # bfloat16 is the top half of a float32.
                return (raw.astype(np.uint32) << 16).view(np.float32)
            return np.array(raw, dtype=np.float32)
        finally:
            del raw
