"""The KV cache's storage types: llama.cpp's -ctk / -ctv (f16, f32, q8_0, q4_0), K and V independent.

The C++ side (csrc/common/model_spec.h KvTypes) takes one spelling: "f16" for K and V alike, or
"q8_0,f16" for K, V. q8_0 stores 32 values in 34 bytes (1.06 bytes per value, about half of f16),
q4_0 in 18 (0.56); both with llama.cpp's block formats and reference quantizer.
"""

from __future__ import annotations

KV_TYPES = ("f16", "f32", "q8_0", "q4_0")


def kv_spec(kv_type: str = "f16", kv_type_v: str | None = None) -> str:
    """Validated spelling for the core: kv_type is K's type (and V's unless kv_type_v is given); a
    "K,V" string is accepted as well. Case-insensitive, as llama.cpp's flags."""
    if not isinstance(kv_type, str):
        raise ValueError(f"kv_type must be a string, got {kv_type!r}")
    k, _, v = kv_type.lower().partition(",")
    if kv_type_v is not None:
        if v:
            raise ValueError("give V's type either in kv_type ('K,V') or as kv_type_v, not both")
        v = str(kv_type_v).lower()
    v = v or k
    for t in (k, v):
        if t not in KV_TYPES:
            raise ValueError(f"KV cache type must be one of {', '.join(KV_TYPES)}, got {t!r}")
    return k if k == v else f"{k},{v}"


def kv_pair(spec: str) -> tuple[str, str]:
    k, _, v = spec.partition(",")
    return k, v or k
