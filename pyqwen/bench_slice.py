"""A slice of Qwen3.6-27B at its real dimensions, random weights, Q4_K_M: the CPU benchmark model.

The 27B itself is 16.5 GB; what decides CPU speed is the shape of each matmul and of the Gated DeltaNet
and attention layers, which are the 27B's whatever the depth. So this builds 4 layers (3 Gated DeltaNet +
1 gated attention, one macro-block of the real model) with hidden 5120, FFN 17408, 16/48 GDN heads of
128, 24/4 attention heads of 256, and a 32768 vocab (the real 248320 would make the output matmul
dominate a 4-layer model), quantized with llama.cpp's Q4_K_M mix by our converter, so anyone can
reproduce `pyqwen bench --slice-27b` numbers without the real model.

`slice_27b_path()` builds it once (about 1.3 GB, a few minutes on 2 cores) under ~/.cache/pyqwen
(or $PYQWEN_CACHE_DIR), keyed by its parameters and the code that writes it, atomically renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .demo import PACKAGE_DIR, TOKENIZER_DIR, cache_dir

SEED = 27
QUANT = "q4_k_m"

# HF `Qwen3_5TextConfig` of Qwen3.6-27B with num_hidden_layers 4 and vocab_size 32768.
SLICE_CONFIG = {
    "architectures": ["Qwen3_5ForCausalLM"],
    "model_type": "qwen3_5_text",
    "hidden_size": 5120,
    "intermediate_size": 17408,
    "num_hidden_layers": 4,
    "full_attention_interval": 4,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 48,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "num_attention_heads": 24,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "vocab_size": 32768,
}


def _cache_key() -> str:
    h = hashlib.sha256(json.dumps({"config": SLICE_CONFIG, "seed": SEED, "quant": QUANT}, sort_keys=True).encode())
    sources = [Path(__file__), PACKAGE_DIR / "demo.py"] + sorted((PACKAGE_DIR / "convert").glob("*.py"))
    for f in sources:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def write_slice_checkpoint(out_dir: Path) -> Path:
    """The HF checkpoint, one safetensors shard per layer so at most one layer (~0.8 GB of F16) is in
    memory at a time."""
    from safetensors.numpy import save_file

    from .convert.qwen35 import expected_tensors, params_from_config
    from .demo import random_weight

    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = {n: spec[0] for n, spec in expected_tensors(params_from_config(SLICE_CONFIG), lm_head=True).items()}
    shards: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        key = f"layer{parts[2]}" if name.startswith("model.layers.") else "globals"
        shards.setdefault(key, {})[name] = shape
    rng = np.random.default_rng(SEED)
    weight_map = {}
    for key, group in shards.items():
        fname = f"model-{key}.safetensors"
        save_file({n: random_weight(rng, n, s).astype(np.float16) for n, s in group.items()}, str(out_dir / fname),
                  metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out_dir / "config.json").write_text(json.dumps(SLICE_CONFIG, indent=2), encoding="utf-8")
    for f in sorted(TOKENIZER_DIR.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out_dir / f.name)
    return out_dir


def slice_27b_path(log=None) -> Path:
    """Path of the Q4_K_M slice, building it on first use."""
    from .convert import convert

    root = cache_dir()
    path = root / f"slice27b-{QUANT}-{_cache_key()}.gguf"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the 27B-shaped slice (4 layers, Q4_K_M, random weights) into {path} (once)")
    with tempfile.TemporaryDirectory(prefix="slice-build-", dir=root) as tmp:
        hf_dir = write_slice_checkpoint(Path(tmp) / "hf")
        built = convert(hf_dir, Path(tmp) / "slice.gguf", QUANT, name="pyqwen-slice-27b", mtp=False, progress=False)
        os.replace(built, path)
    for old in root.glob(f"slice27b-{QUANT}-*.gguf"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
