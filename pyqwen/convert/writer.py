"""Streaming GGUF output: llama.cpp's per-tensor type choice (float and quantized mixes) and an
atomic, interrupt-safe file writer.

The whole layout (metadata, tensor names, shapes, types) is known before any weight is read, so the
header is written first and tensors are then loaded, converted/quantized and appended one at a time;
large tensors that need no transform are streamed in row chunks, so peak memory stays near the largest
*transformed* tensor, not the largest tensor.

Type choice mirrors llama.cpp's `llama-quant.cpp` (llama_tensor_get_type_impl + tensor_type_fallback)
for the file types offered here, as it applies to the qwen35 architecture:

- never quantized: 1-D tensors, names not ending in `weight` (ssm_a, ssm_dt.bias), `*_norm.weight`,
  `ssm_conv1d` -- they stay F32 (what llama.cpp's converter writes for them);
- `output.weight` (or `token_embd.weight` when the model has no output.weight): Q6_K, or Q8_0 when its
  row size is not a multiple of the target's block, and Q8_0 stays Q8_0;
- Q4_K_M / Q5_K_M: every attn_v-like tensor (`attn_v` and the GatedDeltaNet `attn_qkv`, one counter over
  all layers, MTP included) and every `ffn_down` (counter over n_layer_all) is Q6_K on "use_more_bits"
  layers; everything else takes the base type (Q4_K / Q5_K). Q6_K and Q8_0 are uniform;
- fallback when the row size is not a multiple of the block: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
  and F16 when even the 32-value fallback does not fit (32-value targets go straight to F16).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import gguf
import numpy as np
from tqdm import tqdm

from .hf_checkpoint import ConvertError

T = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# --type value -> (general.file_type, default tensor type)
OUTPUT_TYPES: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f32": (FT.ALL_F32, T.F32),
    "f16": (FT.MOSTLY_F16, T.F16),
    "bf16": (FT.MOSTLY_BF16, T.BF16),
    "q8_0": (FT.MOSTLY_Q8_0, T.Q8_0),
    "q4_k_m": (FT.MOSTLY_Q4_K_M, T.Q4_K),
    "q5_k_m": (FT.MOSTLY_Q5_K_M, T.Q5_K),
    "q6_k": (FT.MOSTLY_Q6_K, T.Q6_K),
}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
QUANT_TARGETS = tuple(k for k, (_, t) in OUTPUT_TYPES.items() if t not in FLOAT_TYPES)
# Human-readable file type names (as llama.cpp prints them).
FILE_TYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M",
                   "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}


@dataclass(frozen=True)
class LayerInfo:
    """Model-wide facts the quant mixes need (llama.cpp counts layers and some tensors)."""

    n_layer: int  # main-model layers
    n_mtp: int = 0  # MTP blocks appended after them (blk.{n_layer}...)
    has_output: bool = True  # False: no output.weight, so token_embd takes the output tensor's rule
    n_attention_wv: int | None = None  # attn_v-like tensors in the file; None = one per layer (qwen35)

    @property
    def n_layer_all(self) -> int:
        return self.n_layer + self.n_mtp

    @property
    def n_wv(self) -> int:
        return self.n_attention_wv if self.n_attention_wv is not None else self.n_layer_all


def add_metadata(writer: gguf.GGUFWriter, key: str, value) -> None:
    """One metadata value with the GGUF type llama.cpp's converter gives it: bool, uint32 for an int,
    float32 for a float, string, else an array (bool before int: a bool is an int in Python)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)


def keeps_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
    """Tensors llama.cpp never stores reduced: 1-D tensors, norms, the conv kernel, non-`.weight`
    tensors (e.g. `ssm_a`). Its kernels only take these as F32."""
    return (
        len(shape) <= 1
        or gguf_name.endswith("_norm.weight")
        or gguf_name.endswith(".ssm_conv1d.weight")
        or not gguf_name.endswith(".weight")
    )


def _ggml_n_dims(shape: Sequence[int]) -> int:
    # ggml_n_dims: trailing ne of 1 do not count (ne is the numpy shape reversed).
    ne = list(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def allows_quantization(gguf_name: str, shape: Sequence[int]) -> bool:
    """llama.cpp's tensor_allows_quantization, for the names a qwen35 file can hold."""
    return (
        _ggml_n_dims(shape) >= 2
        and gguf_name.endswith("weight")
        and "_norm.weight" not in gguf_name
        and "ssm_conv1d" not in gguf_name
        and "ffn_gate_inp.weight" not in gguf_name
    )


# ---- llama.cpp's quant mix -----------------------------------------------------------------------

OUTPUT, TOKEN_EMBD, ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT, FFN_UP, FFN_GATE, FFN_DOWN, OTHER = (
    "output", "token_embd", "attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output", "ffn_up",
    "ffn_gate", "ffn_down", "other")


def tensor_category(name: str) -> str:
    """tensor_get_category: exact names for output/embeddings, then substring tests in llama.cpp's order."""
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for needle, cat in (("attn_qkv.weight", ATTN_QKV), ("attn_kv_b.weight", ATTN_KV_B), ("attn_v.weight", ATTN_V),
                        ("attn_k.weight", ATTN_K), ("attn_q.weight", ATTN_Q), ("attn_output.weight", ATTN_OUTPUT),
                        ("ffn_up", FFN_UP), ("ffn_gate", FFN_GATE), ("ffn_down", FFN_DOWN)):
        if needle in name:
            return cat
    return OTHER


def is_attn_v_like(cat: str) -> bool:
    """category_is_attn_v: the GDN in-projection attn_qkv counts as attn_v (and shares its counter)."""
    return cat in (ATTN_V, ATTN_QKV, ATTN_KV_B)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    # C integer division; i - n/8 may be negative, and C's % keeps the sign (never == 2 then).
    n8 = n_layers // 8
    d = i_layer - n8
    rem = d - int(d / 3) * 3
    return i_layer < n8 or i_layer >= (7 * n_layers) // 8 or rem == 2


_BLOCK = {t: v[0] for t, v in gguf.GGML_QUANT_SIZES.items()}

# tensor_type_fallback: a 256-value type whose row size does not fit -> a 32-value type.
_FALLBACK = {
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
    T.IQ4_XS: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL,
    T.IQ3_S: T.IQ4_NL, T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL,
}


def fallback_type(qtype: gguf.GGMLQuantizationType, ne0: int) -> gguf.GGMLQuantizationType:
    """The type llama.cpp actually writes for a row of ne0 values when it wanted `qtype`."""
    if ne0 % _BLOCK[qtype] == 0:
        return qtype
    fb = _FALLBACK.get(qtype, T.F16)  # a 32-value target that does not fit goes to F16 directly
    if fb != T.F16 and ne0 % _BLOCK[fb] != 0:
        fb = T.F16  # "must use F16 due to unusual shape"
    return fb


def _mixed_type(target: str, name: str, ne0: int, cat: str, i_wv: int, n_wv: int, i_ffn: int, n_ffn: int,
                has_output: bool) -> gguf.GGMLQuantizationType:
    """llama_tensor_get_type_impl for the file types we offer, then the shape fallback."""
    base = OUTPUT_TYPES[target][1]
    new = base
    if cat == OUTPUT or (not has_output and cat == TOKEN_EMBD):
        if ne0 % _BLOCK[base] != 0:
            new = T.Q8_0
        elif base != T.Q8_0:
            new = T.Q6_K
    elif cat == TOKEN_EMBD:
        pass  # no token-embedding rule for these file types
    elif is_attn_v_like(cat):
        if target in ("q4_k_m", "q5_k_m") and use_more_bits(i_wv, n_wv):
            new = T.Q6_K
    elif cat == FFN_DOWN:
        if target in ("q4_k_m", "q5_k_m") and use_more_bits(i_ffn, n_ffn):
            new = T.Q6_K
    return fallback_type(new, ne0)


_LAYER = re.compile(r"^blk\.(\d+)\.")


def layer_index(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def _check_target(target: str) -> None:
    if target not in OUTPUT_TYPES:
        raise ValueError(f"unknown output type {target!r}; expected one of {', '.join(OUTPUT_TYPES)}")


def choose_tensor_type(gguf_name: str, shape: tuple[int, ...], target: str, layer_info: LayerInfo) -> gguf.GGMLQuantizationType:
    """GGML type of one tensor of a `target` file (`shape` in numpy order, i.e. ne reversed).

    For the quantized mixes, the attn_v-like and ffn_down counters of llama.cpp are taken as the
    layer index: in a qwen35 file every layer (MTP included) has exactly one of each, visited in layer
    order. `plan_tensor_types` runs llama.cpp's real counters over a whole tensor list.
    """
    _check_target(target)
    if keeps_f32(gguf_name, shape):
        return T.F32
    base = OUTPUT_TYPES[target][1]
    if base in FLOAT_TYPES:
        return base
    if not allows_quantization(gguf_name, shape):
        return T.F16  # what the F16 file llama.cpp would quantize from holds
    il = layer_index(gguf_name)
    return _mixed_type(target, gguf_name, int(shape[-1]), tensor_category(gguf_name), il, layer_info.n_wv, il,
                       layer_info.n_layer_all, layer_info.has_output)


def llama_sort_key(name: str) -> tuple[int, str]:
    """llama.cpp's weight_name_comparer: non-layer tensors first, then by layer number, then by name."""
    return (layer_index(name), name)


def plan_tensor_types(entries: Sequence[tuple[str, tuple[int, ...]]], target: str, n_layer_all: int,
                      keep: Callable[[str, tuple[int, ...]], gguf.GGMLQuantizationType] | None = None
                      ) -> dict[str, gguf.GGMLQuantizationType]:
    """Types of every tensor of a file, computed exactly as llama-quantize does: tensors visited in its
    order with its attn_v / ffn_down counters, n_attention_wv counted over the file, n_ffn_down =
    n_layer_all (block_count), and the output rule moved to token_embd when output.weight is absent.

    `keep(name, shape)` gives the type of a tensor that is not quantized (default: F32 for the
    keeps_f32 set, else F16); float targets just use choose_tensor_type's float rule.
    """
    _check_target(target)
    base = OUTPUT_TYPES[target][1]
    info = LayerInfo(n_layer_all)
    if base in FLOAT_TYPES:
        return {n: choose_tensor_type(n, s, target, info) for n, s in entries}
    if keep is None:
        def keep(n, s):
            return T.F32 if keeps_f32(n, s) else T.F16
    names = [n for n, _ in entries]
    has_output = "output.weight" in names
    n_wv = sum(is_attn_v_like(tensor_category(n)) for n in names)
    shapes = dict(entries)
    out: dict[str, gguf.GGMLQuantizationType] = {}
    i_wv = i_ffn = 0
    for name in sorted(names, key=llama_sort_key):
        shape = shapes[name]
        if not allows_quantization(name, shape) or keeps_f32(name, shape):
            out[name] = keep(name, shape)
            continue
        cat = tensor_category(name)
        out[name] = _mixed_type(target, name, int(shape[-1]), cat, i_wv, n_wv, i_ffn, n_layer_all, has_output)
        if is_attn_v_like(cat):
            i_wv += 1
        elif cat == FFN_DOWN:
            i_ffn += 1
    return {n: out[n] for n in names}


# ---- encoding --------------------------------------------------------------------------------------

_core = None


def _quantizer():
    global _core
    if _core is None:
        try:
            from .. import _core as core
        except ImportError as e:  # pragma: no cover - depends on the build
            raise ConvertError(f"quantized output needs the compiled extension pyqwen._core ({e})") from e
        _core = core
    return _core


def _nonfinite_at(x: np.ndarray) -> tuple[int, int] | None:
    bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
    if bad.size == 0:
        return None
    n = x.shape[-1] if x.ndim else 1
    return int(bad[0] // n), int(bad[0] % n)


def encode(name: str, x: np.ndarray, qtype: gguf.GGMLQuantizationType, n_threads: int = 0, row0: int = 0) -> np.ndarray:
    """float32 rows -> the raw bytes (or float array) stored for `qtype`. Non-finite input is a
    ConvertError naming the tensor and the element (`row0` offsets the row of a chunk)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype in FLOAT_TYPES:
        bad = _nonfinite_at(x)
        if bad is not None:
            raise ConvertError(f"tensor {name}: non-finite value (NaN/Inf) at row {row0 + bad[0]}, column {bad[1]}")
        if qtype == T.F32:
            return x
        # gguf.quants gives float16 arrays for F16 and raw uint8 blocks (round-to-nearest-even) for BF16.
        return gguf.quants.quantize(x, qtype)
    core = _quantizer()
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 1 else x
    try:
        return core.quantize(int(qtype), x2, n_threads)
    except ValueError as e:
        bad = _nonfinite_at(x2)
        if bad is not None:
            raise ConvertError(f"tensor {name}: non-finite value (NaN/Inf) at row {row0 + bad[0]}, column {bad[1]}; "
                               "cannot quantize it") from None
        raise ConvertError(f"tensor {name}: cannot quantize to {qtype.name}: {e}") from e


def tensor_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.int64))


# Rows are streamed in chunks of about this many values (16 MiB of float32).
CHUNK_VALUES = 1 << 22


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # returns the float32 array, already transformed
    # Optional: rows [r0, r1) of the array viewed as [rows, shape[-1]], for tensors that can be streamed.
    load_rows: Callable[[int, int], np.ndarray] | None = None
    # Optional: the stored bytes themselves (a tensor copied unchanged), as one array or an iterable of
    # byte blocks; `load` is then unused.
    raw: Callable[[], np.ndarray | Iterable[np.ndarray]] | None = None


class _RawValue(bytes):
    """A metadata value already encoded as GGUF bytes (type tag included), copied verbatim."""


class GGUFWriter(gguf.GGUFWriter):
    """gguf.GGUFWriter that can also take metadata values as raw GGUF bytes (copied from another file
    without decoding them: a 248k-entry vocabulary stays one bytes object)."""

    def add_raw_key_value(self, key: str, raw: bytes) -> None:
        if len(raw) < 4:
            raise ValueError(f"metadata {key}: raw value too short")
        vtype = gguf.GGUFValueType(int.from_bytes(raw[:4], "little"))
        self.kv_data[0][key] = gguf.GGUFValue(value=_RawValue(raw), type=vtype, sub_type=None)

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):  # noqa: D401 (gguf API)
        if isinstance(val, _RawValue):
            return bytes(val) if add_vtype else bytes(val)[4:]
        return super()._pack_val(val, vtype, add_vtype, sub_type)


@dataclass
class WriteStats:
    """Filled in by write_gguf: what was written and how long it took."""

    n_tensors: int = 0
    bytes_in: int = 0  # source bytes read (filled in by the caller that knows them)
    bytes_out: int = 0
    seconds: float = 0.0
    type_counts: dict = field(default_factory=dict)


def write_gguf(
    out_path: str | Path,
    arch: str,
    add_metadata: Callable[[gguf.GGUFWriter], None],
    tensors: Iterable[OutTensor],
    progress: bool | None = None,
    *,
    n_threads: int = 0,
    stats: WriteStats | None = None,
) -> Path:
    """Write a GGUF to `out_path` via `out_path.tmp`, renamed only once complete.

    On any exception, KeyboardInterrupt included, the temp file is removed and the previous
    `out_path` (if any) is left untouched. `progress=None` shows a bar only on a terminal.
    `n_threads` is for the quantizer (0 = all cores).
    """
    t_start = time.perf_counter()
    out_path = Path(out_path)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    if not out_path.parent.is_dir():  # else the error would name the temp file
        raise FileNotFoundError(f"the output folder {out_path.parent} does not exist")
    tensors = list(tensors)
    writer = GGUFWriter(path=None, arch=arch)
    try:
        add_metadata(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), tensor_nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
        writer.write_header_to_file(path=tmp_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        align = writer.data_alignment
        total = sum(tensor_nbytes(t.shape, t.qtype) for t in tensors)
        disable = None if progress is None else not progress
        with tqdm(total=total, unit="B", unit_scale=True, desc=out_path.name, disable=disable) as bar:
            for t in tensors:
                fout.write(bytes(gguf.GGUFWriter.ggml_pad(fout.tell(), align) - fout.tell()))
                want = tensor_nbytes(t.shape, t.qtype)
                written = 0
                for piece in _pieces(t, n_threads):
                    piece = np.ascontiguousarray(piece)
                    if written + piece.nbytes > want:
                        raise RuntimeError(f"{t.name}: produced more than the planned {want} bytes")
                    fout.write(memoryview(piece).cast("B"))
                    written += piece.nbytes
                    bar.update(piece.nbytes)
                    del piece
                if written != want:
                    raise RuntimeError(f"{t.name}: produced {written} bytes, planned {want}")
                fout.write(bytes(gguf.GGUFWriter.ggml_pad(written, align) - written))
                if stats is not None:
                    stats.type_counts[t.qtype.name] = stats.type_counts.get(t.qtype.name, 0) + 1
        writer.close()
        os.replace(tmp_path, out_path)
    except BaseException:
        writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    if stats is not None:
        stats.n_tensors = len(tensors)
        stats.bytes_out = out_path.stat().st_size
        stats.seconds = time.perf_counter() - t_start
    return out_path


def _pieces(t: OutTensor, n_threads: int):
    """The encoded bytes of one tensor, whole or in row chunks."""
    if t.raw is not None:
        raw = t.raw()
        if isinstance(raw, np.ndarray):
            yield raw
        else:
            yield from raw  # an iterable of byte blocks
        return
    ncols = int(t.shape[-1]) if t.shape else 1
    nrows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
    step = max(1, CHUNK_VALUES // max(ncols, 1))
    if step >= 256:
        step -= step % 256  # whole FP8 scale blocks per chunk
    if t.load_rows is not None and nrows > step:
        for r0 in range(0, nrows, step):
            r1 = min(nrows, r0 + step)
            x = t.load_rows(r0, r1)
            if x.shape != (r1 - r0, ncols):
                raise RuntimeError(f"{t.name}: rows {r0}:{r1} came back with shape {x.shape}")
            yield encode(t.name, x, t.qtype, n_threads, row0=r0)
        return
    x = t.load()
    if x.shape != t.shape:
        raise RuntimeError(f"{t.name}: produced shape {x.shape}, planned {t.shape}")
    yield encode(t.name, x, t.qtype, n_threads)
