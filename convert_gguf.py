#!/usr/bin/env python3
"""Convert a Hugging Face Qwen3.5/3.6 checkpoint to GGUF: python convert_gguf.py HF_DIR -o OUT.gguf --type f16"""

import sys

from pyqwen.convert import main

if __name__ == "__main__":
    sys.exit(main())
