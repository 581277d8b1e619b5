"""Streaming GGUF output: per-tensor type choice and an atomic, interrupt-safe file write.

The whole layout (metadata, tensor names, shapes, types) is known before any weight is read, so the
header is written first and tensors are then loaded, converted and appended one at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import gguf
import numpy as np
from tqdm import tqdm

T = gguf.GGMLQuantizationType

# --type value -> (general.file_type, tensor type for weights that may be reduced)
OUTPUT_TYPES: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, T.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, T.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, T.BF16),
}


@dataclass(frozen=True)
class LayerInfo:
    """Model-wide facts a type policy may need (llama.cpp's quant mixes count layers)."""

    n_layer: int  # main-model layers
    n_mtp: int = 0  # MTP blocks appended after them

    @property
    def n_layer_all(self) -> int:
        return self.n_layer + self.n_mtp


def keeps_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
    """Tensors llama.cpp never stores reduced: 1-D tensors, norms, the conv kernel, non-`.weight`
    tensors (e.g. `ssm_a`). Its kernels only take these as F32."""
    return (
        len(shape) <= 1
        or gguf_name.endswith("_norm.weight")
        or gguf_name.endswith(".ssm_conv1d.weight")
        or not gguf_name.endswith(".weight")
    )


def choose_tensor_type(gguf_name: str, shape: tuple[int, ...], target: str, layer_info: LayerInfo) -> gguf.GGMLQuantizationType:
    """GGML type for one tensor of a `target` file (`shape` in numpy order, i.e. ne reversed).

    Float targets only; a quantized target (Q8_0, Q4_K_M) will add its per-tensor rules here,
    using `layer_info` for the layer-position rules.
    """
    if target not in OUTPUT_TYPES:
        raise ValueError(f"unknown output type {target!r}; expected one of {', '.join(OUTPUT_TYPES)}")
    if keeps_f32(gguf_name, shape):
        return T.F32
    return OUTPUT_TYPES[target][1]


def _encode(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    # gguf.quants gives float16 arrays for F16 and raw uint8 blocks (round-to-nearest-even) for BF16.
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.int64))


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # returns the float32 array, already transformed


def write_gguf(
    out_path: str | Path,
    arch: str,
    add_metadata: Callable[[gguf.GGUFWriter], None],
    tensors: Iterable[OutTensor],
    progress: bool | None = None,
) -> Path:
    """Write a GGUF to `out_path` via `out_path.tmp`, renamed only once complete.

    On any exception, KeyboardInterrupt included, the temp file is removed and the previous
    `out_path` (if any) is left untouched. `progress=None` shows a bar only on a terminal.
    """
    out_path = Path(out_path)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    tensors = list(tensors)
    writer = gguf.GGUFWriter(path=None, arch=arch)
    try:
        add_metadata(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
        writer.write_header_to_file(path=tmp_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(_nbytes(t.shape, t.qtype) for t in tensors)
        disable = None if progress is None else not progress
        with tqdm(total=total, unit="B", unit_scale=True, desc=out_path.name, disable=disable) as bar:
            for t in tensors:
                data = t.load()
                if data.shape != t.shape:
                    raise RuntimeError(f"{t.name}: produced shape {data.shape}, planned {t.shape}")
                data = _encode(data, t.qtype)
                writer.write_tensor_data(data)
                bar.update(data.nbytes)
                del data
        writer.close()
        os.replace(tmp_path, out_path)
    except BaseException:
        writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    return out_path
