"""Command-line options that shape a loaded model's memory and positions, shared by every command that
loads one (generate, chat, bench, serve): the KV cache types and RoPE scaling, with llama.cpp's names."""

from __future__ import annotations

import argparse

from .cli_values import float_arg, int_arg, positive_float_arg
from .kv_cache import KV_TYPES
from .rope_scaling import KINDS


def _kv_type(text: str) -> str:
    t = text.lower()
    if t not in KV_TYPES + ("auto",):
        raise argparse.ArgumentTypeError(f"KV cache types are {', '.join(KV_TYPES)}; got {text!r}")
    return t


def add_cache_and_rope_args(g, kv_default: str = "f16") -> None:
    """--kv-type/-ctk, --kv-type-v/-ctv, --rope-scaling, --rope-scale, --yarn-* (llama.cpp's spellings)."""
    auto = " or auto (the most faithful type that fits the GPU memory given)" if kv_default == "auto" else ""
    g.add_argument("--kv-type", type=_kv_type, default=kv_default, metavar="TYPE",
                   help=f"KV cache type of K (and of V unless --kv-type-v): {', '.join(KV_TYPES)}{auto} "
                        f"(default {kv_default}; llama.cpp's -ctk)")
    g.add_argument("--kv-type-v", type=_kv_type, default=None, metavar="TYPE",
                   help="KV cache type of V (default: as --kv-type; llama.cpp's -ctv)")
    g.add_argument("--rope-scaling", choices=KINDS, default=None,
                   help="RoPE scaling (default: the model file's; Qwen3.6 reaches ~1M tokens with yarn x4)")
    g.add_argument("--rope-scale", type=positive_float_arg, default=None, metavar="F", help="RoPE context scaling factor")
    g.add_argument("--yarn-orig-ctx", type=int_arg(1), default=None, metavar="N",
                   help="YaRN: the model's original context (default: the file's, else its training context)")
    g.add_argument("--yarn-ext-factor", type=float_arg, default=None, metavar="F",
                   help="YaRN extrapolation mix (default 1; -1 = the default)")
    g.add_argument("--yarn-attn-factor", type=positive_float_arg, default=None, metavar="F",
                   help="YaRN magnitude multiplier (default 1)")
    g.add_argument("--yarn-beta-fast", type=positive_float_arg, default=None, metavar="F", help="YaRN beta fast (default 32)")
    g.add_argument("--yarn-beta-slow", type=positive_float_arg, default=None, metavar="F", help="YaRN beta slow (default 1)")


def rope_kwargs(args) -> dict:
    """pyqwen.rope_scaling.override keyword arguments from the options above."""
    return dict(kind=args.rope_scaling, factor=args.rope_scale, orig_ctx=args.yarn_orig_ctx,
                ext_factor=args.yarn_ext_factor, attn_factor=args.yarn_attn_factor, beta_fast=args.yarn_beta_fast,
                beta_slow=args.yarn_beta_slow)


def cache_and_rope_kwargs(args) -> dict:
    """Model.load keyword arguments from the options above."""
    return dict(kv_type=args.kv_type, kv_type_v=args.kv_type_v, rope_scaling=args.rope_scaling,
                rope_scale=args.rope_scale, yarn_orig_ctx=args.yarn_orig_ctx, yarn_ext_factor=args.yarn_ext_factor,
                yarn_attn_factor=args.yarn_attn_factor, yarn_beta_fast=args.yarn_beta_fast,
                yarn_beta_slow=args.yarn_beta_slow)
