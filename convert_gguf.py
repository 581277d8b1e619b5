#!/usr/bin/env python3
"""Convert a Hugging Face Qwen3.5/3.6 checkpoint (BF16/F16/F32 or FP8) to GGUF:

    python convert_gguf.py HF_DIR -o OUT.gguf --type f32|f16|bf16|q8_0|q4_k_m|q5_k_m|q6_k [--no-mtp] [--threads N]

The quantized types follow llama.cpp's per-tensor mixes with byte-identical blocks.
"""

import sys

from pyqwen.convert import main

if __name__ == "__main__":
    sys.exit(main())
