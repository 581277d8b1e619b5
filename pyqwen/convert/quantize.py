"""Requantize a float qwen35 GGUF (F32/F16/BF16 weights) with llama.cpp's mixes, like llama-quantize.

    pyqwen quantize IN.gguf OUT.gguf --type q4_k_m|q5_k_m|q6_k|q8_0 [--threads N] [--allow-requantize]

Tensors are streamed from the memory-mapped input one block of rows at a time, widened to float32
exactly (F16/BF16 -> F32 is lossless, as in llama-quantize) and quantized with the byte-identical
quantizers, so the output equals llama-quantize's (no imatrix) tensor for tensor. Types follow
`writer.plan_tensor_types` (llama.cpp's visit order and counters); tensors that are not quantized keep
their stored type and bytes. All metadata is copied (byte for byte); general.file_type and
quantization_version are set. Keys and tensors are written in llama-quantize's order, so for the same
input the whole file is byte-identical to llama-quantize's. The output is written atomically (OUT.tmp,
renamed when complete).

Memory: the input's metadata is scanned without building per-string objects (gguf.GGUFReader makes
two numpy memmaps per vocabulary token, ~0.5 GB for a 248k vocab), and the pages of each block of the
input are dropped from the mapping once used, so the RSS stays near one block of rows.
"""

from __future__ import annotations

import argparse
import mmap
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

from .hf_checkpoint import ConvertError
from .writer import (OUTPUT_TYPES, QUANT_TARGETS, OutTensor, WriteStats, llama_sort_key, plan_tensor_types,
                     write_gguf)

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType

# GGUF scalar value types: struct format.
_SCALAR = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
           V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}


@dataclass(frozen=True)
class SourceTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (ne reversed)
    qtype: gguf.GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        rows = int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1
        return self.nbytes // max(1, rows)


class LightGGUF:
    """A GGUF file's metadata as raw byte ranges plus its tensor table; data memory-mapped.

    Only what the requantizer needs is decoded (scalars and strings); arrays are skipped over.
    Malformed files raise ConvertError."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise ConvertError(f"{self.path}: not a readable GGUF file ({e})") from e
        self.buf = memoryview(self.mm)
        self.pos = 0
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as e:
            raise ConvertError(f"{self.path}: malformed GGUF ({e})") from e

    def _read(self, fmt: str):
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0]

    def _string(self) -> str:
        n = self._read("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def _skip_value(self, vtype: int, decode: bool):
        if vtype in _SCALAR:
            return self._read(_SCALAR[V(vtype)])
        if vtype == V.STRING:
            if decode:
                return self._string()
            n = self._read("<Q")
            self.pos += n
            return None
        if vtype == V.ARRAY:
            sub, count = self._read("<I"), self._read("<Q")
            if sub == V.ARRAY:
                raise ValueError("nested arrays are not supported")
            if sub in _SCALAR:
                self.pos += count * struct.calcsize(_SCALAR[V(sub)])
            elif sub == V.STRING:
                for _ in range(count):
                    self.pos += struct.unpack_from("<Q", self.buf, self.pos)[0] + 8
            else:
                raise ValueError(f"unknown array element type {sub}")
            return None
        raise ValueError(f"unknown metadata value type {vtype}")

    def _parse(self) -> None:
        if self._read("<I") != gguf.GGUF_MAGIC:
            raise ValueError("bad magic")
        version = self._read("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        self.kv: list[tuple[str, bytes]] = []  # key, raw value bytes (type tag included)
        self.values: dict[str, object] = {}  # decoded scalars and strings
        for _ in range(n_kv):
            key = self._string()
            start = self.pos
            vtype = self._read("<I")
            val = self._skip_value(vtype, decode=True)
            if self.pos > len(self.buf):
                raise ValueError(f"metadata {key} runs past the end of the file")
            self.kv.append((key, bytes(self.buf[start:self.pos])))
            if val is not None:
                self.values[key] = val
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._read("<I")
            if not 1 <= n_dims <= 4:
                raise ValueError(f"tensor {name}: {n_dims} dimensions")
            ne = [self._read("<Q") for _ in range(n_dims)]
            try:
                qtype = T(self._read("<I"))
            except ValueError:
                raise ValueError(f"tensor {name}: unknown ggml type") from None
            infos.append((name, ne, qtype, self._read("<Q")))
        self.alignment = int(self.values.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise ValueError(f"bad alignment {self.alignment}")
        data_start = self.pos + (-self.pos) % self.alignment
        self.tensors: list[SourceTensor] = []
        for name, ne, qtype, off in infos:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            if ne[0] % block:
                raise ValueError(f"tensor {name}: row of {ne[0]} values is not a multiple of {block}")
            nbytes = int(np.prod(ne, dtype=np.int64)) // block * size
            start = data_start + off
            if start + nbytes > len(self.buf):
                raise ValueError(f"tensor {name}: data past the end of the file (truncated?)")
            self.tensors.append(SourceTensor(name, tuple(int(d) for d in reversed(ne)), qtype, start, nbytes))

    def data(self, t: SourceTensor, start: int = 0, end: int | None = None) -> np.ndarray:
        end = t.nbytes if end is None else end
        return self.mm[t.offset + start:t.offset + end]

    def release(self, t: SourceTensor, start: int, end: int) -> None:
        """Drop the pages of tensor bytes [start, end) from this process's mapping once used.

        Without this every page read stays resident (and counted in the RSS) until the end, i.e. the RSS
        grows to the input file's size; the pages stay in the page cache, so nothing is read twice."""
        mm = getattr(self.mm, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        a = t.offset + start
        b = t.offset + end
        a -= a % page
        b = min(len(mm), b + (-b) % page)
        if b > a:
            try:
                mm.madvise(mmap.MADV_DONTNEED, a, b - a)
            except (OSError, ValueError):  # best effort only
                pass

    def close(self) -> None:
        self.buf.release()
        del self.mm


def _rows_as_f32(src: LightGGUF, t: SourceTensor, r0: int, r1: int, allow_requantize: bool) -> np.ndarray:
    """Rows [r0, r1) of a tensor (viewed as [rows, ne0]) as a fresh float32 array."""
    ne0 = t.shape[-1]
    rb = t.row_bytes
    raw = src.data(t, r0 * rb, r1 * rb)
    if t.qtype == T.F32:
        x = raw.view(np.float32).reshape(r1 - r0, ne0).copy()
    elif t.qtype == T.F16:
        x = raw.view(np.float16).reshape(r1 - r0, ne0).astype(np.float32)
    elif t.qtype == T.BF16:
        x = raw.view(np.uint16).reshape(r1 - r0, ne0).astype(np.uint32)
        x <<= 16
        x = x.view(np.float32)
    elif not allow_requantize:
        raise ConvertError(f"tensor {t.name} is already quantized ({t.qtype.name}); pass --allow-requantize to "
                           "dequantize and quantize it again (quality loss)")
    else:
        from .. import _core

        try:
            x = _core.dequantize(int(t.qtype), raw, (r1 - r0) * ne0).reshape(r1 - r0, ne0)
        except ValueError as e:
            raise ConvertError(f"tensor {t.name}: cannot read {t.qtype.name} ({e})") from e
    del raw
    src.release(t, r0 * rb, r1 * rb)
    return x


def _raw_blocks(src: LightGGUF, t: SourceTensor, step: int = 1 << 26):
    """The stored bytes of a tensor copied unchanged, in blocks, each released once written."""
    for a in range(0, t.nbytes, step):
        b = min(t.nbytes, a + step)
        yield src.data(t, a, b)
        src.release(t, a, b)


def quantize_gguf(in_path: str | Path, out_path: str | Path, out_type: str = "q4_k_m", *, threads: int = 0,
                  allow_requantize: bool = False, progress: bool | None = None,
                  stats: WriteStats | None = None) -> Path:
    """Requantize `in_path` to `out_type` (one of QUANT_TARGETS) and return the written path."""
    if out_type not in QUANT_TARGETS:
        raise ConvertError(f"unknown quantization type {out_type!r}; expected one of {', '.join(QUANT_TARGETS)}")
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists() and in_path.resolve() == out_path.resolve():
        raise ConvertError("input and output are the same file")
    src = LightGGUF(in_path)
    try:
        arch = src.values.get("general.architecture")
        if not isinstance(arch, str):
            raise ConvertError(f"{in_path}: no general.architecture")
        n_layer_all = src.values.get(f"{arch}.block_count")
        if not isinstance(n_layer_all, int):
            raise ConvertError(f"{in_path}: no {arch}.block_count")
        file_type = int(OUTPUT_TYPES[out_type][0])

        entries = [(t.name, t.shape) for t in src.tensors]
        src_type = {t.name: t.qtype for t in src.tensors}
        types = plan_tensor_types(entries, out_type, n_layer_all, keep=lambda n, s: src_type[n])

        def add_metadata(w: gguf.GGUFWriter) -> None:
            # llama-quantize: gguf_set_kv (copy all), then two gguf_set_val that remove the key and
            # append it, so quantization_version and file_type end up last, in that order.
            for key, raw in src.kv:
                if key in ("general.architecture", "general.file_type", "general.quantization_version"):
                    continue  # the writer puts general.architecture first itself
                w.add_raw_key_value(key, raw)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            w.add_file_type(file_type)
            w.data_alignment = src.alignment

        tensors = []
        # llama-quantize writes tensors in its visit order; so do we, which makes the whole file identical.
        for t in sorted(src.tensors, key=lambda t: llama_sort_key(t.name)):
            qtype = types[t.name]
            if qtype == t.qtype:  # not quantized (or already the target type): copied as stored
                tensors.append(OutTensor(t.name, t.shape, qtype, load=None, raw=lambda t=t: _raw_blocks(src, t)))
                continue
            nrows = t.nbytes // t.row_bytes
            tensors.append(OutTensor(
                t.name, t.shape, qtype,
                load=lambda t=t, n=nrows: _rows_as_f32(src, t, 0, n, allow_requantize).reshape(t.shape),
                load_rows=lambda r0, r1, t=t: _rows_as_f32(src, t, r0, r1, allow_requantize)))
        if stats is not None:
            stats.bytes_in = sum(t.nbytes for t in src.tensors)
        return write_gguf(out_path, arch, add_metadata, tensors, progress=progress, n_threads=threads, stats=stats)
    finally:
        src.close()


def build_arg_parser(prog: str = "pyqwen quantize") -> argparse.ArgumentParser:
    from . import OneLineParser

    ap = OneLineParser(prog=prog, description="Quantize a float qwen35 GGUF with llama.cpp's mixes "
                                 "(byte-identical to llama-quantize without an importance matrix).")
    ap.add_argument("input", type=Path, help="F32/F16/BF16 GGUF")
    ap.add_argument("output", type=Path, help="output .gguf path")
    # llama-quantize takes the type as a third positional argument (`IN OUT Q4_K_M`); both spellings work,
    # case-insensitive.
    ap.add_argument("type", nargs="?", type=str.lower, choices=list(QUANT_TARGETS), metavar="TYPE",
                    help="quantization mix, as llama-quantize's third argument (same as --type)")
    ap.add_argument("--type", dest="type_option", type=str.lower, choices=list(QUANT_TARGETS), default=None,
                    help="quantization mix (default q4_k_m)")
    ap.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    ap.add_argument("--allow-requantize", action="store_true",
                    help="also accept already-quantized input tensors (dequantized first; loses quality)")
    return ap


def main(argv: Sequence[str] | None = None, prog: str = "pyqwen quantize") -> int:
    """CLI entry (`pyqwen quantize`); returns the process exit code."""
    from . import write_and_report

    ap = build_arg_parser(prog)
    args = ap.parse_args(argv)
    if args.type and args.type_option and args.type != args.type_option:
        ap.error(f"two types given: {args.type} and --type {args.type_option}")
    args.out_type = args.type or args.type_option or "q4_k_m"
    return write_and_report(prog, args.out_type, lambda stats: quantize_gguf(
        args.input, args.output, args.out_type, threads=args.threads, allow_requantize=args.allow_requantize,
        stats=stats))


if __name__ == "__main__":
    sys.exit(main())
