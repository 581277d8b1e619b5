"""Small models with the real Qwen3.6 architecture, for demos and tests without a download.

`demo_model_path()` is the TRAINED demo model shipped with the package (pyqwen/data/demo_model/: the HF
checkpoint with its MTP head and the F16 GGUF our converter makes from it; trained by
tools/train_demo_model.py on the Python standard library's source), so the demo writes plausible text.

`random_demo_model_path()` returns an F16 GGUF with random weights built deterministically (numpy, fixed
seed) and converted by the same converter as real checkpoints, so it exercises every transform (V-head
reorder with QK < V heads, -exp(A_log), +1 norms) with weights away from their defaults. It is cached
under ~/.cache/pyqwen (or $PYQWEN_CACHE_DIR), keyed by a hash of its parameters and of the code and
tokenizer that produce it, and written atomically so concurrent first calls are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = PACKAGE_DIR / "data" / "demo_tokenizer"
TRAINED_DIR = PACKAGE_DIR / "data" / "demo_model"
TRAINED_HF_DIR = TRAINED_DIR / "hf"  # config.json, model.safetensors (F16, with mtp.*), tokenizer, training.json
TRAINED_GGUF = TRAINED_DIR / "pyqwen-demo-f16.gguf"  # convert(TRAINED_HF_DIR, ..., "f16", name=TRAINED_NAME)
TRAINED_NAME = "pyqwen-demo"
SEED = 0

# HF `Qwen3_5TextConfig` fields (vocab_size is filled in from the tokenizer).
DEMO_CONFIG = {
    "architectures": ["Qwen3_5ForCausalLM"],
    "model_type": "qwen3_5_text",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 8,  # two macro-blocks of 3 GatedDeltaNet + 1 attention layer
    "full_attention_interval": 4,
    # Every quantized row size (256, 768) is a multiple of 256, so `pyqwen quantize --type q4_k_m` gives
    # pure k-quants like the 27B (no Q5_0/Q8_0 fallbacks).
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 6,  # 3 V heads per QK head, like the 27B (16/48)
    "linear_key_head_dim": 128,  # the 27B's GDN head dim
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,  # 16 rotary dims, 8 frequencies
        "mrope_section": [3, 3, 2],
        "mrope_interleaved": True,
    },
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 8192,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
}


def _vocab_size() -> int:
    from tokenizers import Tokenizer

    n = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    return -(-n // 64) * 64  # padded like the real model's 248320


def demo_config() -> dict:
    return {**DEMO_CONFIG, "vocab_size": _vocab_size()}


def random_weight(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Initial value of one HF parameter (float32). Also used by tests/fixtures/make_references.py.

    Unit-scale activations (1/sqrt(fan_in)) rather than HF's 0.02, so a random model has distinct,
    confident logits and greedy generation does not collapse onto one token; norm weights, A_log and
    dt_bias are spread away from their defaults so every converter transform changes the numbers.
    """
    if name.endswith("linear_attn.norm.weight"):
        x = 1.0 + 0.2 * rng.standard_normal(shape)
    elif name.endswith("norm.weight") or (len(shape) == 1 and "_norm_" in name):
        # zero-centred RMSNorm weights (scale is 1 + w), incl. MTP's pre_fc_norm_embedding/_hidden
        x = 0.2 * rng.standard_normal(shape)
    elif name.endswith("A_log"):
        x = np.log(rng.uniform(1.0, 16.0, shape))
    elif name.endswith("dt_bias"):
        x = 0.5 * rng.standard_normal(shape)
    elif name.endswith("conv1d.weight"):
        x = rng.standard_normal(shape) / np.sqrt(shape[-1])
    elif name.endswith("embed_tokens.weight"):
        # Small next to the layer outputs, so a tied head does not just echo the last input token.
        x = 0.3 * rng.standard_normal(shape)
    elif len(shape) == 2:  # linear [out, in]
        x = rng.standard_normal(shape) / np.sqrt(shape[1])
    else:
        raise ValueError(f"no init rule for {name} {list(shape)}")
    return x.astype(np.float32)


def write_demo_checkpoint(out_dir: str | Path) -> Path:
    """Write the demo model as a Hugging Face checkpoint directory (config.json, model.safetensors,
    tokenizer files). transformers' Qwen3_5ForCausalLM loads it; the converter turns it into GGUF."""
    from safetensors.numpy import save_file

    from .convert.qwen35 import expected_tensors, params_from_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config()
    shapes = {n: spec[0] for n, spec in expected_tensors(params_from_config(cfg), lm_head=True).items()}
    rng = np.random.default_rng(SEED)
    # Stored as F16 so the F16 GGUF holds exactly these weights: transformers running this directory
    # in float32 is then an exact reference for the demo GGUF.
    state = {name: random_weight(rng, name, shape).astype(np.float16) for name, shape in shapes.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    for f in sorted(TOKENIZER_DIR.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


def _cache_key() -> str:
    """Changes whenever the model would: parameters, seed, tokenizer, or the code that builds it."""
    h = hashlib.sha256(json.dumps({"config": DEMO_CONFIG, "seed": SEED}, sort_keys=True).encode())
    sources = [Path(__file__)] + sorted((PACKAGE_DIR / "convert").glob("*.py")) + sorted(TOKENIZER_DIR.iterdir())
    for f in sources:
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("PYQWEN_CACHE_DIR") or Path.home() / ".cache" / "pyqwen")


def demo_model_path() -> Path:
    """Path of the trained demo model's F16 GGUF (package data)."""
    if not TRAINED_GGUF.is_file():
        raise FileNotFoundError(f"the trained demo model is missing from this installation: {TRAINED_GGUF} "
                                "(reinstall pyqwen; random_demo_model_path() builds a random one)")
    return TRAINED_GGUF


def random_demo_model_path() -> Path:
    """Path of the RANDOM-weight demo F16 GGUF, building it on first use (a few seconds)."""
    from .convert import convert

    root = cache_dir()
    path = root / f"demo-{_cache_key()}.gguf"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-build-", dir=root) as tmp:
        hf_dir = write_demo_checkpoint(Path(tmp) / "hf")
        # Converted inside the private temp dir, then moved in one rename: a concurrent builder
        # never sees a partial file, and the last rename simply wins with identical bytes.
        built = convert(hf_dir, Path(tmp) / "demo.gguf", "f16", name="pyqwen-demo", progress=False)
        os.replace(built, path)
    # Builds for older code versions are dead weight (22 MB each); an open mmap survives the unlink.
    for old in root.glob("demo-*.gguf"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
