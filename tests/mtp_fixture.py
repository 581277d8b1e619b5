"""A fixture checkpoint with an MTP head: a copy of one of tests/fixtures/hf/ plus random `mtp.*` tensors.

transformers' save_pretrained drops `mtp.*` (HF has no MTP module), so the committed fixtures have none;
the head is added here with the checkpoint's names and shapes (pyqwen.convert.qwen35.expected_tensors)
and the demo model's initialisation (pyqwen.demo.random_weight), seeded, so every machine builds the
same files. Used by the MTP and speculative-decoding tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pq_testutil import FIXTURES


def with_mtp(name: str, out_dir: Path, seed: int = 7) -> Path:
    """Copy fixture `name` to out_dir with an MTP block (mtp_num_hidden_layers 1) added; returns out_dir."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from pyqwen.convert.qwen35 import expected_tensors, params_from_config
    from pyqwen.demo import random_weight

    src = FIXTURES / "hf" / name
    out_dir = Path(out_dir)
    shutil.copytree(src, out_dir, dirs_exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["mtp_num_hidden_layers"] = 1
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    # The fixture's weights are BF16 (numpy cannot hold them): the head goes into a second file, joined
    # by a safetensors index as a sharded checkpoint.
    with safe_open(str(src / "model.safetensors"), framework="numpy") as f:
        main_names = list(f.keys())
    p = params_from_config(cfg)
    rng = np.random.default_rng(seed)
    head = {}
    for hf_name, (shape, _g, _fn) in expected_tensors(p, lm_head=True, n_mtp=1).items():
        if hf_name.startswith("mtp."):
            head[hf_name] = random_weight(rng, hf_name, shape)  # float32: an F32 GGUF holds exactly these
    save_file(head, str(out_dir / "model-mtp.safetensors"), metadata={"format": "pt"})
    weight_map = {n: "model.safetensors" for n in main_names} | {n: "model-mtp.safetensors" for n in head}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out_dir
