"""Hugging Face Qwen3.5/3.6 checkpoint -> GGUF (arch `qwen35`): float (f32/f16/bf16) or quantized with
llama.cpp's mixes (q8_0/q4_k_m/q5_k_m/q6_k, byte-identical blocks). BF16/F16/F32 and FP8 (block-scaled
e4m3, as in Qwen3.6-27B-FP8) checkpoints are read.

    python convert_gguf.py HF_DIR -o OUT.gguf --type q4_k_m [--no-mtp] [--threads N]
    pyqwen convert HF_DIR -o OUT.gguf ...          (same options, via `main(argv)`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import gguf
import numpy as np

from .hf_checkpoint import ConvertError, HFCheckpoint
from .qwen35 import ARCH, params_from_config, plan_tensors, write_metadata
from .vocab import write_vocab
from .writer import (FILE_TYPE_NAMES, FLOAT_TYPES, OUTPUT_TYPES, LayerInfo, OutTensor, WriteStats, _quantizer,
                     choose_tensor_type, plan_tensor_types, write_gguf)

__all__ = ["ConvertError", "convert", "main", "choose_tensor_type", "plan_tensor_types", "LayerInfo", "WriteStats",
           "OUTPUT_TYPES", "peak_rss_bytes", "summary_line"]


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (getrusage; 0 where it is unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, KiB on Linux


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def summary_line(out: Path, out_type: str, stats: WriteStats, bytes_in: int) -> str:
    """The closing line of `convert`/`quantize`: what was written, throughput, peak RAM."""
    types = ", ".join(f"{k} {v}" for k, v in sorted(stats.type_counts.items(), key=lambda kv: -kv[1]))
    rate = bytes_in / stats.seconds / 1e6 if stats.seconds > 0 else float("inf")
    return (f"wrote {out}: {FILE_TYPE_NAMES.get(out_type, out_type)}, {stats.n_tensors} tensors ({types}), "
            f"{_gb(stats.bytes_out)} in {stats.seconds:.1f} s; read {_gb(bytes_in)} at {rate:.0f} MB/s; "
            f"peak RSS {_gb(peak_rss_bytes())}")


def convert(
    hf_dir: str | Path,
    out_path: str | Path,
    out_type: str = "f16",
    *,
    mtp: bool = True,
    tokenizer_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool | None = None,
    threads: int = 0,
    stats: WriteStats | None = None,
) -> Path:
    """Convert the checkpoint in `hf_dir` and return the written path.

    `out_type` is one of OUTPUT_TYPES; the quantized ones follow llama.cpp's per-tensor mix (see
    writer.py). `tokenizer_dir` defaults to `hf_dir`; `mtp=False` drops the multi-token-prediction
    block. `threads` is for the quantizer (0 = all cores). `stats`, if given, is filled in (plus
    `stats.bytes_in`, the checkpoint bytes read). Raises ConvertError for a checkpoint that does not
    match its config (nothing is written then) or for a NaN/Inf weight (the partial file is removed).
    """
    if out_type not in OUTPUT_TYPES:
        raise ConvertError(f"unknown output type {out_type!r}; expected one of {', '.join(OUTPUT_TYPES)}")
    if OUTPUT_TYPES[out_type][1] not in FLOAT_TYPES:
        _quantizer()  # fail before writing anything if the compiled quantizers are missing
    ckpt = HFCheckpoint(hf_dir)
    p = params_from_config(ckpt.config)
    jobs, n_mtp = plan_tensors(ckpt, p, keep_mtp=mtp)
    names = {j.gguf_name for j in jobs}
    info = LayerInfo(p.n_layer, n_mtp, has_output="output.weight" in names)
    file_type = OUTPUT_TYPES[out_type][0]
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else ckpt.dir

    # general.* as llama.cpp derives it: README/model-card fields, a name from the directory, a size label.
    n_params = sum(int(np.prod(j.shape)) for j in jobs)
    meta = gguf.Metadata.load(None, ckpt.dir, name, n_params)
    if meta.name is None:
        meta.name = ckpt.dir.resolve().name
    if meta.size_label is None:
        meta.size_label = gguf.size_label(n_params, n_params, 0, 0)

    # Vision tensors go to a separate mmproj file (as llama.cpp's --mmproj); say so in the text GGUF.
    n_vision = sum(1 for n in ckpt.tensors if "visual." in n)

    def add_metadata(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        write_metadata(w, p, n_mtp)
        if n_vision:
            w.add_uint32("pyqwen.skipped_vision_tensors", n_vision)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(w, tok_dir, p.n_vocab)

    if OUTPUT_TYPES[out_type][1] in FLOAT_TYPES:
        types = {j.gguf_name: choose_tensor_type(j.gguf_name, j.shape, out_type, info) for j in jobs}
    else:
        types = plan_tensor_types([(j.gguf_name, j.shape) for j in jobs], out_type, info.n_layer_all)
    tensors = [
        OutTensor(j.gguf_name, j.shape, types[j.gguf_name], lambda j=j: j.load(ckpt),
                  load_rows=(lambda r0, r1, j=j: j.load_rows(ckpt, r0, r1)) if j.streamable else None)
        for j in jobs
    ]
    if stats is not None:
        stats.bytes_in = sum(ckpt.tensors[j.hf_name].stored_bytes for j in jobs)
    return write_gguf(out_path, ARCH, add_metadata, tensors, progress=progress, n_threads=threads, stats=stats)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (exit 2), like the `pyqwen` command's other subcommands."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_arg_parser(prog: str = "convert_gguf.py") -> argparse.ArgumentParser:
    ap = OneLineParser(prog=prog, description="Convert a Hugging Face Qwen3.5/3.6 checkpoint to GGUF.")
    ap.add_argument("hf_dir", type=Path, help="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    ap.add_argument("-o", "--outfile", type=Path, required=True, help="output .gguf path")
    # --outtype is convert_hf_to_gguf.py's spelling; type names are case-insensitive as in llama.cpp (Q4_K_M).
    ap.add_argument("--type", "--outtype", dest="out_type", type=str.lower, choices=list(OUTPUT_TYPES),
                    default="f16", help="weight type: float, or a llama.cpp quant mix (default f16)")
    ap.add_argument("--no-mtp", action="store_true", help="drop the multi-token-prediction block")
    ap.add_argument("--name", help="general.name (default: the checkpoint directory name)")
    ap.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    return ap


def main(argv: Sequence[str] | None = None, prog: str = "convert_gguf.py") -> int:
    """CLI entry (also `pyqwen convert`); returns the process exit code."""
    args = build_arg_parser(prog).parse_args(argv)
    return write_and_report(prog, args.out_type, lambda stats: convert(
        args.hf_dir, args.outfile, args.out_type, mtp=not args.no_mtp, name=args.name, threads=args.threads,
        stats=stats))


def write_and_report(prog: str, out_type: str, write: Callable[[WriteStats], Path]) -> int:
    """The end of `pyqwen convert` and `pyqwen quantize`: run `write(stats)` (it returns the output path),
    print its summary line, or the error (exit 1) or the interruption (exit 130). Returns the exit code."""
    stats = WriteStats()
    try:
        out = write(stats)
    except (ConvertError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no output written", file=sys.stderr)
        return 130
    print(summary_line(out, out_type, stats, stats.bytes_in))
    return 0
