"""GGUF tokenizer keys from an HF tokenizer directory, written as llama.cpp's converter writes them.

The keys themselves come from pyqwen.hf_vocab (shared with the runtime tokenizer); this module writes
them with the GGUF value types llama.cpp uses.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from ..hf_vocab import (CONTROL, NORMAL, PRE_BY_REGEX, QWEN2_REGEX, QWEN35_REGEX, UNUSED,  # noqa: F401
                        USER_DEFINED, vocab_metadata)
from .writer import add_metadata


def write_vocab(writer: gguf.GGUFWriter, tokenizer_dir: Path | str, vocab_size: int) -> None:
    """Write the tokenizer keys of `tokenizer_dir` into `writer` (arrays/strings/u32/bool as llama.cpp)."""
    for key, value in vocab_metadata(tokenizer_dir, vocab_size).items():
        if key == gguf.Keys.Tokenizer.TOKEN_TYPE:
            writer.add_token_types(value)  # int32 array
        else:
            add_metadata(writer, key, value)
