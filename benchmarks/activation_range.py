"""max |x| of every matmul input over a long prompt -- what the prefill GEMM converts to fp16 (issue 10, bug 3).

    python benchmarks/activation_range.py [HF_DIR ...] [--tokens 2048]

Runs the Hugging Face checkpoint(s) (default: the test models, tests/fixtures/hf/*) in transformers on the
CPU with a forward pre-hook on every nn.Linear, over one prompt of random token ids, and prints the largest
|input| per projection kind (in_proj_qkv / ... / down_proj) with the fp16 limit beside it. pyqwen._core
has no per-op hook; transformers computes the same layer math (tests/test_forward.py checks the CPU
backend against it), so its matmul inputs are the CPU backend's up to rounding.

The test models have random weights and stay far below 65504; trained Qwen models are known to reach
1e4-1e5 at down_proj's input (silu(gate) * up) on some channels. The GPU path does not depend on this
measurement: rows at or above 2^15 are scaled by a power of two before the fp16 conversion
(cuda/kernels/gemm.cuh), so any finite activation is safe.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(hf_dir: Path, n_tokens: int, seed: int = 0) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    worst: dict[str, float] = defaultdict(float)

    def hook(name):
        kind = name.rsplit(".", 1)[-1]

        def pre(_mod, args):
            worst[kind] = max(worst[kind], float(args[0].detach().abs().max()))
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=g)
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return dict(worst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--tokens", type=int, default=2048)
    a = ap.parse_args(argv)
    dirs = a.models or sorted((REPO / "tests" / "fixtures" / "hf").iterdir())
    for d in dirs:
        w = measure(d, a.tokens)
        print(f"{d.name} ({a.tokens} tokens): max |x| per matmul input (fp16 max 65504)")
        for kind, v in sorted(w.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:16s} {v:12.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
