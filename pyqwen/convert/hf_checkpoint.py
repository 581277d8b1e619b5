"""Lazy, tensor-by-tensor access to a Hugging Face Qwen3.5/3.6 checkpoint directory.

Only headers are read up front, so a converter can plan the whole output (names, shapes, types)
before touching any weight, and then load one tensor (or a block of its rows) at a time: peak memory
stays at about one tensor in float32 even for the 27B model.

FP8 checkpoints (`Qwen3.6-27B-FP8`: `quantization_config.quant_method = "fp8"`, e4m3 weights with a
`weight_scale_inv` per 128x128 block) are dequantized on read, w = fp8 * scale_inv broadcast over its
block, in float32 exactly as llama.cpp's converter does; the `*_scale_inv` tensors are not listed.
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

# Storage dtypes we accept. BF16 and F8_E4M3 are kept as raw integers and widened by hand because
# numpy has neither (safetensors' numpy backend refuses them) and we do not want torch as a dependency.
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F8_E4M3": np.dtype("u1")}
SCALE_SUFFIX = "_scale_inv"


def _e4m3fn_table() -> np.ndarray:
    """float32 value of every float8_e4m3fn byte: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits;
    exponent 0 is subnormal (m/8 * 2^-6); 0x7f/0xff are NaN; there is no infinity (max 448)."""
    b = np.arange(256, dtype=np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    mag = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1.0 + man / 8.0) * 2.0 ** (exp - 7))
    v = sign * mag
    v[(b & 0x7F) == 0x7F] = np.nan
    return v.astype(np.float32)


E4M3FN_TO_F32 = _e4m3fn_table()


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: enough to memory-map it later without re-reading headers."""

    file: Path
    dtype: str  # safetensors dtype string: F32, F16, BF16 or F8_E4M3
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in `file`
    nbytes: int
    # FP8 weights: their `*_scale_inv` tensor and its block size (rows, cols).
    scale: "TensorRef | None" = None
    block: tuple[int, int] | None = None

    @property
    def stored_bytes(self) -> int:
        """Bytes read from disk for this tensor (its scales included)."""
        return self.nbytes + (self.scale.nbytes if self.scale is not None else 0)


def _to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored values to a fresh float32 array."""
    if dtype == "BF16":
        # bfloat16 is the top half of a float32.
        x = raw.astype(np.uint32)
        x <<= 16
        return x.view(np.float32)
    if dtype == "F8_E4M3":
        return E4M3FN_TO_F32[raw]
    return np.array(raw, dtype=np.float32)


def _apply_block_scale(w: np.ndarray, scale: np.ndarray, block: tuple[int, int], row0: int = 0) -> np.ndarray:
    """w[r, c] *= scale[(row0 + r) // b0, c // b1] in place (float32 products, like torch's)."""
    b0, b1 = block
    R, Cn = w.shape
    if row0 % b0 == 0 and R % b0 == 0 and Cn % b1 == 0:
        w.reshape(R // b0, b0, Cn // b1, b1)[...] *= scale[:, None, :, None]
        return w
    rows = (row0 + np.arange(R)) // b0 - row0 // b0
    w *= np.repeat(scale[rows], b1, axis=1)[:, :Cn]
    return w


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
    # safetensors layout: u64 little-endian header length, JSON header, then the raw data block. Every
    # length, offset and shape is checked against the file before anything is allocated or read by it.
    def bad(what: str) -> ConvertError:
        return ConvertError(f"{path.name}: not a readable safetensors file ({what})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            if hlen > size - 8:
                raise bad(f"header of {hlen} bytes in a file of {size}")
            header = json.loads(f.read(hlen))
    except ConvertError:
        raise
    except (OSError, struct.error, ValueError, RecursionError) as e:
        raise bad(str(e)) from e
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    base = 8 + hlen
    refs = {}
    for raw_name, info in header.items():
        if raw_name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"entry {raw_name!r} is not an object")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ConvertError(f"tensor {raw_name!r} in {path.name}: unsupported dtype {dtype}")
        offs, shape = info.get("data_offsets"), info.get("shape")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise ConvertError(f"tensor {raw_name!r} in {path.name}: data_offsets {offs!r} outside the data block")
        if base + offs[1] > size:  # a truncated download: say so here, not as an mmap error later
            raise ConvertError(f"{path.name} is truncated: tensor {raw_name!r} ends at byte {base + offs[1]}, "
                               f"the file has {size} bytes")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ConvertError(f"tensor {raw_name!r} in {path.name}: invalid shape {shape!r}")
        begin, end = offs
        n = 1
        for d in shape:
            n *= d
        if end - begin != n * _DTYPES[dtype].itemsize:
            raise ConvertError(f"tensor {raw_name!r} in {path.name}: size does not match its shape")
        refs[raw_name] = TensorRef(path, dtype, tuple(shape), base + begin, end - begin)
    return refs


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
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


def _read_json(path: Path) -> dict:
    """A JSON object from a checkpoint file; anything else is a ConvertError naming the file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: absurd nesting
        raise ConvertError(f"{path.name} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path.name} must hold a JSON object, not {type(obj).__name__}")
    return obj


def load_config(model_dir: Path) -> tuple[dict, str]:
    """Return (text hyper-parameters, HF architecture name).

    The multimodal checkpoint nests the text settings in `text_config`; values there win over the
    top level, while top-level-only keys (e.g. `tie_word_embeddings`) are kept.
    """
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConvertError(f"{model_dir}: config.json not found")
    top = _read_json(path)
    if not isinstance(top.get("text_config") or {}, dict):
        raise ConvertError("config.json: text_config must be a JSON object")
    archs = top.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else ""
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
        raise ConvertError(
            f"unknown architecture {arch or '(none)'!r}; expected one of {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    text = top.get("text_config") or {}
    return {**top, **text}, arch


def fp8_block_size(config: dict) -> tuple[int, int] | None:
    """The FP8 weight block size from `quantization_config`, or None for an unquantized checkpoint.
    Raises ConvertError for a quantization scheme we cannot read."""
    q = config.get("quantization_config")
    if not q:
        return None
    method = q.get("quant_method")
    if method != "fp8":
        raise ConvertError(f"config.json: quantization_config.quant_method {method!r} is not supported (only 'fp8')")
    fmt = q.get("fmt", "e4m3")
    if fmt not in ("e4m3", "float8_e4m3fn"):
        raise ConvertError(f"config.json: FP8 format {fmt!r} is not supported (only e4m3)")
    scheme = q.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise ConvertError(f"config.json: FP8 activation_scheme {scheme!r} is not supported (only 'dynamic')")
    block = q.get("weight_block_size")
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ConvertError(f"config.json: FP8 weight_block_size {block!r} must be two positive integers")
    return int(block[0]), int(block[1])


def _listed(tensor_name: str, modules: list[str]) -> bool:
    """Whether a weight belongs to one of `modules` (dotted module paths, matched on whole components,
    e.g. "linear_attn.in_proj_b" matches "model.layers.0.linear_attn.in_proj_b.weight" but "mlp.gate"
    does not match "mlp.gate_proj")."""
    module = tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name
    dotted = "." + module + "."
    return any(m and ("." + m.strip(".") + ".") in dotted for m in modules)


class HFCheckpoint:
    """A checkpoint directory: merged text config plus an index of all tensors by normalised name."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise ConvertError(f"{self.dir}: not a directory")
        self.config, self.architecture = load_config(self.dir)
        self.fp8_block = fp8_block_size(self.config)
        found: dict[str, TensorRef] = {}
        raw_names: dict[str, str] = {}
        for shard in _shard_files(self.dir):
            for raw_name, ref in _read_header(shard).items():
                name = normalize_name(raw_name)
                if name in found:
                    raise ConvertError(f"tensor {raw_name!r} appears twice in the checkpoint")
                found[name] = ref
                raw_names[name] = raw_name
        self._all_names = set(found)
        self.tensors: dict[str, TensorRef] = self._attach_fp8_scales(found, raw_names)
        self._check_index()

    def _attach_fp8_scales(self, found: dict[str, TensorRef], raw_names: dict[str, str]) -> dict[str, TensorRef]:
        """Pair every FP8 weight with its `*_scale_inv`, check shapes, and drop the scales from the set."""
        has_fp8 = any(r.dtype == "F8_E4M3" for r in found.values())
        if has_fp8 and self.fp8_block is None:
            name = next(n for n, r in found.items() if r.dtype == "F8_E4M3")
            raise ConvertError(f"tensor {raw_names[name]!r} is FP8 but config.json has no fp8 quantization_config")
        keep_fp32 = [str(m) for m in (self.config.get("quantization_config") or {}).get("modules_to_not_convert") or []]
        out: dict[str, TensorRef] = {}
        for name, ref in found.items():
            if name.endswith(SCALE_SUFFIX):
                weight = name[: -len(SCALE_SUFFIX)]
                if weight not in found or found[weight].dtype != "F8_E4M3":
                    raise ConvertError(f"tensor {raw_names[name]!r}: scale without an FP8 weight {weight!r}")
                continue
            if ref.dtype != "F8_E4M3":
                out[name] = ref
                continue
            raw = raw_names[name]
            if _listed(raw, keep_fp32) or _listed(name, keep_fp32):
                raise ConvertError(f"tensor {raw!r} is FP8 but its module is listed in modules_to_not_convert")
            scale = found.get(name + SCALE_SUFFIX)
            if scale is None:
                raise ConvertError(f"tensor {raw!r} is FP8 but has no {raw + SCALE_SUFFIX!r}")
            if len(ref.shape) != 2:
                raise ConvertError(f"tensor {raw!r}: FP8 weights must be 2-D, got shape {list(ref.shape)}")
            if scale.dtype not in ("F32", "BF16", "F16"):
                raise ConvertError(f"tensor {raw + SCALE_SUFFIX!r}: unsupported scale dtype {scale.dtype}")
            b0, b1 = self.fp8_block
            want = (-(-ref.shape[0] // b0), -(-ref.shape[1] // b1))
            if tuple(scale.shape) != want:
                raise ConvertError(f"tensor {raw + SCALE_SUFFIX!r} has shape {list(scale.shape)}, expected {list(want)} "
                                   f"for a {list(ref.shape)} weight in {b0}x{b1} blocks")
            out[name] = TensorRef(ref.file, ref.dtype, ref.shape, ref.offset, ref.nbytes, scale=scale,
                                  block=(b0, b1))
        return out

    def _check_index(self) -> None:
        # A weight map that names a tensor no shard holds means a truncated download.
        index = self.dir / "model.safetensors.index.json"
        if not index.is_file():
            return
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        for raw_name in weight_map:
            if normalize_name(raw_name) not in self._all_names:
                raise ConvertError(f"missing tensor {raw_name!r}: listed in the index but in no shard")

    @staticmethod
    def _read(ref: TensorRef, r0: int | None = None, r1: int | None = None) -> np.ndarray:
        """Rows [r0, r1) (default all) of a stored tensor, widened to float32."""
        if r0 is None:
            r0, r1 = 0, ref.shape[0] if ref.shape else 1
        if not ref.shape:
            raw = np.memmap(ref.file, dtype=_DTYPES[ref.dtype], mode="r", offset=ref.offset, shape=())
        else:
            row = int(np.prod(ref.shape[1:], dtype=np.int64)) * _DTYPES[ref.dtype].itemsize
            raw = np.memmap(ref.file, dtype=_DTYPES[ref.dtype], mode="r", offset=ref.offset + r0 * row,
                            shape=(r1 - r0, *ref.shape[1:]))
        try:
            return _to_f32(raw, ref.dtype)
        finally:
            del raw

    def load(self, name: str) -> np.ndarray:
        """Read one tensor as a fresh float32 array (the converter's working precision)."""
        ref = self.tensors[name]
        x = self._read(ref)
        if ref.scale is not None:
            _apply_block_scale(x, self._read(ref.scale), ref.block)
        return x

    def load_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a tensor (first axis) as float32, the same values `load` gives for them."""
        ref = self.tensors[name]
        if not ref.shape or not (0 <= r0 <= r1 <= ref.shape[0]):
            raise ValueError(f"{name}: bad row range {r0}:{r1} for shape {list(ref.shape)}")
        x = self._read(ref, r0, r1)
        if ref.scale is not None:
            b0 = ref.block[0]
            s0, s1 = r0 // b0, -(-r1 // b0)
            _apply_block_scale(x, self._read(ref.scale, s0, s1), ref.block, row0=r0)
        return x
