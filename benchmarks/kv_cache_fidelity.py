"""Fidelity of the quantized KV caches against the F16 cache over long sequences (a benchmark, not a test).

    python benchmarks/kv_cache_fidelity.py [--lengths 1024,8192,32768] [--types q8_0,q8_0+q4_0,q4_0]
                                          [--model demo|real-shape|FILE] [--threads 2]

For each length L: one held-out sequence of L tokens (the trained demo model's held-out code and prose,
tools/demo_corpus.py, alternating documents), fed in pieces of 2048 tokens to one state per cache type in
lockstep; at every position the next-token distribution of each quantized cache is compared with the F16
cache's: mean and max KL(p_f16 || p_q) (nats) and top-1 agreement. Beyond the model's trained context
(the demo's is 8,192) every cache type runs with YaRN at the factor that covers L (--rope-scaling
yarn --rope-scale L/8192), as a user would; the F16 reference runs the same way.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

PIECE = 2048


def heldout_tokens(n: int) -> list[int]:
    import demo_corpus
    from tokenizers import Tokenizer

    from pyqwen import demo

    tok = Tokenizer.from_file(str(demo.TOKENIZER_DIR / "tokenizer.json"))
    code, prose = demo_corpus.code_texts(heldout=True), demo_corpus.prose_texts(heldout=True)
    ids: list[int] = []
    for a, b in zip(code, prose):
        for text in (a, b):
            ids += tok.encode(text, add_special_tokens=False).ids
            if len(ids) >= n:
                return ids[:n]
    raise SystemExit(f"the held-out corpus has only {len(ids)} tokens")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def run(path, length: int, types: list[str], threads: int, n_ctx_train: int) -> dict:
    import pyqwen

    rope = {}
    if length > n_ctx_train:
        rope = dict(rope_scaling="yarn", rope_scale=float(2 ** math.ceil(math.log2(length / n_ctx_train))),
                    yarn_orig_ctx=n_ctx_train)
    ids = heldout_tokens(length) if path is None else [int(x) for x in
                                                       np.random.default_rng(0).integers(3, 2000, length)]
    models = {kv: pyqwen.Model.load(path, n_ctx=length, kv_type=kv.replace("+", ","), threads=threads,
                                    spec="off", backend="cpu", **rope) for kv in ["f16"] + types}
    states = {kv: m.new_state() for kv, m in models.items()}
    kl_sum = {kv: 0.0 for kv in types}
    kl_max = {kv: 0.0 for kv in types}
    agree = {kv: 0 for kv in types}
    t0 = time.perf_counter()
    for start in range(0, length, PIECE):
        piece = ids[start:start + PIECE]
        ref = log_softmax(models["f16"].forward(states["f16"], piece, logits="all"))
        p = np.exp(ref)
        for kv in types:
            q = log_softmax(models[kv].forward(states[kv], piece, logits="all"))
            kl = (p * (ref - q)).sum(-1)
            kl_sum[kv] += float(kl.sum())
            kl_max[kv] = max(kl_max[kv], float(kl.max()))
            agree[kv] += int((ref.argmax(-1) == q.argmax(-1)).sum())
    return {"length": length, "rope": rope, "seconds": time.perf_counter() - t0,
            "rows": {kv: {"kl_mean": kl_sum[kv] / length, "kl_max": kl_max[kv], "top1": agree[kv] / length}
                     for kv in types}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,8192,32768")
    ap.add_argument("--types", default="q8_0,q8_0+q4_0,q4_0", help="KV types vs f16 (K+V for two)")
    ap.add_argument("--model", default="demo", help="demo (the trained demo model), or a GGUF path (random "
                                                   "token ids are fed to it)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from pyqwen.demo import demo_model_path
    from pyqwen.gguf_file import GGUFFile

    path = None if args.model == "demo" else Path(args.model)
    n_ctx_train = GGUFFile.open(path or demo_model_path()).hparams.n_ctx_train
    types = args.types.split(",")
    print(f"model: {args.model} (trained context {n_ctx_train}); KL(p_f16 || p_type) in nats per position, "
          "top-1 = same argmax as the F16 cache")
    print(f"| length | RoPE | KV type | mean KL | max KL | top-1 |")
    print(f"|---|---|---|---|---|---|")
    for length in map(int, args.lengths.split(",")):
        r = run(path, length, types, args.threads, n_ctx_train)
        rope = f"yarn x{r['rope']['rope_scale']:g}" if r["rope"] else "-"
        for kv, row in r["rows"].items():
            print(f"| {length:,} | {rope} | {kv} | {row['kl_mean']:.2e} | {row['kl_max']:.2e} | "
                  f"{100 * row['top1']:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
