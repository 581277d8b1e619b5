"""What a GGUF byte-level BPE vocabulary is made of, for the runtime tokenizer and the converter alike:
llama.cpp's token types and the pre-tokenizer split regex of each `tokenizer.ggml.pre` pyqwen supports.

A leaf module (imports nothing of pyqwen): pyqwen.tokenizer reads vocabularies with it, pyqwen.hf_vocab
builds them from Hugging Face tokenizer files with it, and the converter writes them.
"""

from __future__ import annotations

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

PRE_REGEX = {
    # Qwen3.5/3.6: letter runs absorb combining marks, digits one per token.
    "qwen35": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
        r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    # Qwen2/2.5/3: same shape without \p{M}; digits also one per token.
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}

# tokenizer.ggml.pre value for each known split regex (how a tokenizer.json's pre-tokenizer is recognised).
PRE_BY_REGEX = {regex: name for name, regex in PRE_REGEX.items()}
