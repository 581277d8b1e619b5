"""Hugging Face Qwen3.5/3.6 checkpoint -> GGUF (arch `qwen35`), float outputs (f32/f16/bf16).

    python convert_gguf.py HF_DIR -o OUT.gguf --type f16 [--no-mtp]
    pyqwen convert HF_DIR -o OUT.gguf ...          (same options, via `main(argv)`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

from .hf_checkpoint import ConvertError, HFCheckpoint
from .qwen35 import ARCH, params_from_config, plan_tensors, write_metadata
from .vocab import write_vocab
from .writer import OUTPUT_TYPES, LayerInfo, OutTensor, choose_tensor_type, write_gguf

__all__ = ["ConvertError", "convert", "main", "choose_tensor_type", "LayerInfo"]


def convert(
    hf_dir: str | Path,
    out_path: str | Path,
    out_type: str = "f16",
    *,
    mtp: bool = True,
    tokenizer_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Convert the checkpoint in `hf_dir` and return the written path.

    `tokenizer_dir` defaults to `hf_dir`; `mtp=False` drops the multi-token-prediction block.
    Raises ConvertError for a checkpoint that does not match its config; nothing is written then.
    """
    if out_type not in OUTPUT_TYPES:
        raise ConvertError(f"unknown output type {out_type!r}; expected one of {', '.join(OUTPUT_TYPES)}")
    ckpt = HFCheckpoint(hf_dir)
    p = params_from_config(ckpt.config)
    jobs, n_mtp = plan_tensors(ckpt, p, keep_mtp=mtp)
    info = LayerInfo(p.n_layer, n_mtp)
    file_type = OUTPUT_TYPES[out_type][0]
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else ckpt.dir

    # general.* as llama.cpp derives it: README/model-card fields, a name from the directory, a size label.
    n_params = sum(int(np.prod(j.shape)) for j in jobs)
    meta = gguf.Metadata.load(None, ckpt.dir, name, n_params)
    if meta.name is None:
        meta.name = ckpt.dir.resolve().name
    if meta.size_label is None:
        meta.size_label = gguf.size_label(n_params, n_params, 0, 0)

    def add_metadata(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        write_metadata(w, p, n_mtp)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(w, tok_dir, p.n_vocab)

    tensors = [
        OutTensor(j.gguf_name, j.shape, choose_tensor_type(j.gguf_name, j.shape, out_type, info),
                  lambda j=j: j.load(ckpt))
        for j in jobs
    ]
    return write_gguf(out_path, ARCH, add_metadata, tensors, progress=progress)


def build_arg_parser(prog: str = "convert_gguf.py") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Convert a Hugging Face Qwen3.5/3.6 checkpoint to GGUF.")
    ap.add_argument("hf_dir", type=Path, help="checkpoint directory (config.json, *.safetensors, tokenizer files)")
    ap.add_argument("-o", "--outfile", type=Path, required=True, help="output .gguf path")
    ap.add_argument("--type", dest="out_type", choices=sorted(OUTPUT_TYPES), default="f16", help="weight type (default f16)")
    ap.add_argument("--no-mtp", action="store_true", help="drop the multi-token-prediction block")
    ap.add_argument("--name", help="general.name (default: the checkpoint directory name)")
    return ap


def main(argv: Sequence[str] | None = None, prog: str = "convert_gguf.py") -> int:
    """CLI entry (also `pyqwen convert`); returns the process exit code."""
    args = build_arg_parser(prog).parse_args(argv)
    try:
        out = convert(args.hf_dir, args.outfile, args.out_type, mtp=not args.no_mtp, name=args.name)
    except (ConvertError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no output written", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0
