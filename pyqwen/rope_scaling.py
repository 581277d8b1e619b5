"""RoPE scaling (YaRN, linear): where its parameters come from and how they reach the C++ config.

The math is written once, in csrc/common/rope_scaling.h (both backends). This module reads the
parameters from a GGUF (the keys llama.cpp's converter writes), from a Hugging Face config
(`rope_parameters` / `rope_scaling`, for our converter), and from the user (llama.cpp's flag names:
--rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 262144 ...), and says how long a context the
scaled model serves (factor x original context).

Qwen3.6's model card enables YaRN by `"rope_type": "yarn", "factor": 4.0,
"original_max_position_embeddings": 262144` (about 1M tokens); the published files ship without it
(static YaRN slightly lowers quality on short texts, so the card asks to add it only when needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .errors import ModelFormatError

KINDS = ("none", "linear", "yarn")
_CORE_KIND = {"none": 0, "linear": 1, "yarn": 2}


@dataclass(frozen=True)
class RopeScaling:
    kind: str = "none"            # none | linear | yarn
    factor: float = 1.0           # context extension factor (llama.cpp's rope-scale; freq_scale = 1/factor)
    orig_ctx: int = 0             # the context the model was trained at (YaRN's correction range)
    ext_factor: float = 1.0       # weight of YaRN's ramp (llama.cpp: -1 = 1 for YaRN)
    attn_factor: float = 1.0      # multiplies YaRN's magnitude 1 + 0.1 ln(factor) (llama.cpp's yarn-attn-factor)
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def validate(self, where: str = "rope scaling") -> "RopeScaling":
        if self.kind not in KINDS:
            raise ValueError(f"{where}: type must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "none":
            return self
        if not (math.isfinite(self.factor) and self.factor >= 1.0):
            raise ValueError(f"{where}: factor must be >= 1, got {self.factor}")
        if self.kind == "yarn":
            if not 0 < self.orig_ctx < 2 ** 31:
                raise ValueError(f"{where}: YaRN needs the original context length (> 0), got {self.orig_ctx}")
            for name in ("attn_factor", "beta_fast", "beta_slow"):
                v = getattr(self, name)
                if not (math.isfinite(v) and v > 0):
                    raise ValueError(f"{where}: {name} must be positive, got {v}")
            if not 0.0 <= self.ext_factor <= 1.0:
                raise ValueError(f"{where}: ext_factor must be in [0, 1], got {self.ext_factor}")
        return self

    def max_context(self, n_ctx_train: int) -> int:
        """The longest context this scaling serves: factor x the original (or training) context."""
        if self.kind == "none":
            return n_ctx_train
        base = self.orig_ctx if self.kind == "yarn" and self.orig_ctx > 0 else n_ctx_train
        return int(base * self.factor)

    def core_fields(self) -> dict:
        """The C++ Config's fields (csrc/common/config.h)."""
        return {
            "rope_scaling": _CORE_KIND[self.kind], "rope_freq_scale": 1.0 / self.factor if self.kind != "none" else 1.0,
            "yarn_orig_ctx": self.orig_ctx, "yarn_ext_factor": self.ext_factor, "yarn_attn_factor": self.attn_factor,
            "yarn_beta_fast": self.beta_fast, "yarn_beta_slow": self.beta_slow,
        }

    def describe(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "linear":
            return f"linear x{self.factor:g}"
        return (f"yarn x{self.factor:g} (original context {self.orig_ctx}, beta {self.beta_fast:g}/{self.beta_slow:g}, "
                f"attn factor {self.attn_factor:g})")

    # ---- GGUF ------------------------------------------------------------------------------------

    def gguf_keys(self, arch: str) -> dict[str, Any]:
        """The metadata llama.cpp's converter writes for this scaling (nothing for none)."""
        if self.kind == "none":
            return {}
        keys: dict[str, Any] = {f"{arch}.rope.scaling.type": self.kind, f"{arch}.rope.scaling.factor": float(self.factor)}
        if self.kind == "yarn":
            keys[f"{arch}.rope.scaling.original_context_length"] = int(self.orig_ctx)
            if self.attn_factor != 1.0:
                keys[f"{arch}.rope.scaling.yarn_attn_factor"] = float(self.attn_factor)
            if self.beta_fast != 32.0:
                keys[f"{arch}.rope.scaling.yarn_beta_fast"] = float(self.beta_fast)
            if self.beta_slow != 1.0:
                keys[f"{arch}.rope.scaling.yarn_beta_slow"] = float(self.beta_slow)
            if self.ext_factor != 1.0:
                keys[f"{arch}.rope.scaling.yarn_ext_factor"] = float(self.ext_factor)
        return keys


def from_gguf(metadata: dict, arch: str, n_ctx_train: int, path: Any) -> RopeScaling:
    """The scaling a GGUF file asks for (llama.cpp's keys; absent = none). A malformed value is a
    ModelFormatError naming the key."""
    def get(key: str, kind: type, default):
        full = f"{arch}.rope.scaling.{key}"
        if full not in metadata:
            return default
        v = metadata[full]
        try:
            if kind is str:
                if not isinstance(v, str):
                    raise TypeError
                return v
            if isinstance(v, (bool, str, list)):
                raise TypeError
            return kind(v)
        except (TypeError, ValueError, OverflowError):
            raise ModelFormatError(f"{path}: metadata key '{full}' has an invalid value {v!r}") from None

    kind = get("type", str, "none")
    if kind not in KINDS:
        raise ModelFormatError(f"{path}: {arch}.rope.scaling.type {kind!r} is not supported (none, linear, yarn)")
    factor = get("factor", float, 1.0)
    if factor == 0.0:  # llama.cpp reads 0 as "no factor" (freq_scale 1)
        factor = 1.0
    ext = get("yarn_ext_factor", float, -1.0)
    rs = RopeScaling(kind=kind, factor=factor,
                     orig_ctx=get("original_context_length", int, n_ctx_train if kind == "yarn" else 0),
                     ext_factor=1.0 if ext < 0 else ext,
                     attn_factor=get("yarn_attn_factor", float, 1.0),
                     beta_fast=get("yarn_beta_fast", float, 32.0), beta_slow=get("yarn_beta_slow", float, 1.0))
    try:
        return rs.validate(f"{path}: rope scaling")
    except ValueError as e:
        raise ModelFormatError(str(e)) from None


def override(base: RopeScaling, *, kind: str | None = None, factor: float | None = None, orig_ctx: int | None = None,
             ext_factor: float | None = None, attn_factor: float | None = None, beta_fast: float | None = None,
             beta_slow: float | None = None, n_ctx_train: int = 0) -> RopeScaling:
    """The file's scaling with the user's settings on top (llama.cpp's flags: --rope-scaling,
    --rope-scale, --yarn-orig-ctx, --yarn-ext-factor, --yarn-attn-factor, --yarn-beta-fast/slow)."""
    changes = {k: v for k, v in dict(kind=kind, factor=factor, orig_ctx=orig_ctx, ext_factor=ext_factor,
                                     attn_factor=attn_factor, beta_fast=beta_fast, beta_slow=beta_slow).items()
               if v is not None}
    if not changes:
        return base
    rs = replace(base, **changes)
    if rs.kind == "yarn" and rs.orig_ctx <= 0:
        rs = replace(rs, orig_ctx=n_ctx_train)
    if rs.kind == "yarn" and ext_factor is not None and ext_factor < 0:  # llama.cpp's -1: the YaRN default
        rs = replace(rs, ext_factor=1.0)
    return rs.validate()


def from_hf(rope: dict | None) -> RopeScaling:
    """A Hugging Face `rope_parameters` (or legacy `rope_scaling`) dict -> RopeScaling (converter).

    transformers' `attention_factor`, when given, is the whole magnitude m; llama.cpp multiplies its
    attn factor into 1 + 0.1 ln(factor), so it is stored divided by that (both then compute m)."""
    if not rope:
        return RopeScaling()
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        return RopeScaling()
    factor = float(rope.get("factor", 1.0))
    if kind == "linear":
        return RopeScaling(kind="linear", factor=factor).validate()
    if kind != "yarn":
        raise ValueError(f"RoPE scaling type {kind!r} is not supported (linear, yarn)")
    attn = rope.get("attention_factor")
    attn_factor = 1.0 if attn is None else float(attn) / (1.0 + 0.1 * math.log(factor))
    if rope.get("mscale") or rope.get("mscale_all_dim"):
        raise ValueError("YaRN with mscale/mscale_all_dim (DeepSeek's variant) is not supported")
    return RopeScaling(kind="yarn", factor=factor, orig_ctx=int(rope.get("original_max_position_embeddings") or 0),
                       attn_factor=attn_factor, beta_fast=float(rope.get("beta_fast") or 32.0),
                       beta_slow=float(rope.get("beta_slow") or 1.0)).validate()
