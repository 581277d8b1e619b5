"""A real-shape model, made with transformers at test time: 4 layers (3 DeltaNet + 1 attention) with the
27B's head geometry -- attention 24 Q / 4 KV heads x 256 (GQA 6), 64 rotary dims (partial factor 0.25),
RoPE base 1e7; DeltaNet 16 QK / 48 V heads x 128 -- and a small hidden size (64), so it runs in seconds.
The committed fixtures (tests/fixtures/hf) have head dims <= 64, GQA <= 3 and 64-token prompts; this one
has a 400-token prompt, so RoPE at positions the short prompts never reach, and the 27B's head map.

`make(dir)` writes the HF checkpoint (BF16 safetensors + the demo tokenizer), our F32 GGUF of it, and
transformers' float32 logits of the prompt and greedy continuation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SEED = 27
PROMPT_LEN = 400
GEN_LEN = 8
CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128, linear_value_head_dim=128,
    num_attention_heads=24, num_key_value_heads=4, head_dim=256,
    rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0, partial_rotary_factor=0.25,
                         mrope_section=[11, 11, 10], mrope_interleaved=True),
    tie_word_embeddings=False, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=4096,
    hidden_act="silu",
)
TEXT = (
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "The quick brown fox jumps over the lazy dog. In 2024, researchers measured 17 different ways to brew "
    "coffee, and the results surprised everyone! Would you like to know more? 東京は日本の首都です。"
    "Привет, мир! مرحبا بالعالم. नमस्ते दुनिया। 🙂🚀 naïve café résumé -- 3.14159, 2.71828, 1e-7.\n"
)


def _tokenizer_dir() -> Path:
    import pyqwen

    return Path(pyqwen.__file__).parent / "data" / "demo_tokenizer"


# The same geometry with YaRN (Qwen3.6's long-context setting, shrunk): original context 64, factor 8, so
# a 400-token prompt runs at positions up to 6x past the original context, with the ramp over pairs 0..5
# of 32 (the 27B's: 14..22 at 262,144 x 4).
YARN_CONFIG = dict(CONFIG, max_position_embeddings=512,
                   rope_parameters=dict(CONFIG["rope_parameters"], rope_type="yarn", factor=8.0,
                                        original_max_position_embeddings=64))


def prompt_ids(n: int = PROMPT_LEN) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_tokenizer_dir() / "tokenizer.json"))
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(TEXT, add_special_tokens=False).ids
    return ids[:n]


def make(out: Path, config: dict = CONFIG, tag: str = "real-shape") -> dict:
    """-> {"gguf": path, "prompt_ids", "logits" [PROMPT_LEN, vocab], "greedy_ids" [GEN_LEN]}."""
    from tokenizers import Tokenizer

    from hf_reference import logits_and_greedy, random_model, save_bf16
    from pyqwen.convert import convert

    vocab = Tokenizer.from_file(str(_tokenizer_dir() / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    model = random_model(config, -(-vocab // 64) * 64, SEED)
    assert [t for t in model.config.layer_types] == ["linear_attention"] * 3 + ["full_attention"]
    ids = prompt_ids()
    logits, greedy = logits_and_greedy(model, ids, GEN_LEN)
    hf_dir = out / "hf"
    save_bf16(model, hf_dir)
    for f in _tokenizer_dir().iterdir():
        if f.is_file():
            shutil.copy2(f, hf_dir / f.name)
    gguf = convert(hf_dir, out / f"{tag}-f32.gguf", "f32", progress=False)
    return {"gguf": gguf, "prompt_ids": ids, "logits": logits, "greedy_ids": greedy, "hf_dir": hf_dir}


_MADE: dict = {}


def shared(tmp_path_factory, variant: str = "real-shape") -> dict:
    """make() once per test session and variant ("real-shape", "yarn"), shared by the CPU and the
    emulated-CUDA tests."""
    if variant not in _MADE:
        config = {"real-shape": CONFIG, "yarn": YARN_CONFIG}[variant]
        _MADE[variant] = make(tmp_path_factory.mktemp(variant), config, variant)
    return _MADE[variant]
