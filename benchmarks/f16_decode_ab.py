"""A/B of one F16 decode step of the demo model between two builds, on a chosen kernel set: CPU-ms per step.

The trained demo model (pyqwen/data/demo_model, F16 weights: every matmul goes through matmul_float and
the kernel set's rows_* / dots_* kernels), one thread, one token per forward (or -t tokens: a verification) after a short prompt, the
process CPU time of each step (time.process_time). Each run restores the same snapshot and decodes the
same tokens; the two builds' runs are interleaved (A B A B ...) in fresh interpreters, so the load of a
shared machine falls on both alike. A build is a folder holding an installed `pyqwen` package.

    python benchmarks/f16_decode_ab.py --a /tmp/A --b /tmp/B [--simd avx2] [-n 64] [-r 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
import numpy as np
import pyqwen
from pyqwen import _core
simd, n_gen, reps, prompt, n_tok = json.loads(sys.argv[1])
assert _core.set_simd(simd), simd
model = pyqwen.Model.load(threads=1, n_ctx=prompt + n_gen * n_tok + 8)
rng = np.random.default_rng(0)
state = model.new_state()
model.forward(state, rng.integers(0, model.n_vocab, prompt).tolist(), logits="none")
snap = model.snapshot(state, with_kv=True)
toks = rng.integers(0, model.n_vocab, (n_gen, n_tok)).tolist()
per_run = []
for rep in range(reps + 1):  # run 0 warms up
    model.restore(state, snap)
    c0 = time.process_time()
    for t in toks:
        model.forward(state, t, logits="all")
    if rep:
        per_run.append((time.process_time() - c0) / n_gen * 1e3)
print(json.dumps({"ms": min(per_run), "simd": _core.simd_backend()}))
"""


def run(build: str, args) -> float:
    env = dict(os.environ, PYTHONPATH=build)
    spec = json.dumps([args.simd, args.n_gen, args.calls, args.prompt, args.tokens])
    res = subprocess.run([sys.executable, "-P", "-c", _CHILD, spec], env=env, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    assert out["simd"] == args.simd, out
    return out["ms"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="folder with build A's pyqwen package")
    ap.add_argument("--b", required=True, help="folder with build B's pyqwen package")
    ap.add_argument("--simd", default="avx2", help="kernel set (pyqwen._core.set_simd)")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="decode steps per run")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens before the steps")
    ap.add_argument("-t", "--tokens", type=int, default=1, help="tokens per step (k + 1 of a verification)")
    ap.add_argument("--calls", type=int, default=3, help="runs per interpreter (the best counts)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="interleaved A/B rounds")
    args = ap.parse_args(argv)
    a, b = [], []
    for _ in range(args.rounds):
        a.append(run(args.a, args))
        b.append(run(args.b, args))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"demo model F16, kernel set {args.simd}, 1 thread, {args.tokens} token(s) per step: CPU-ms per step (best of {args.calls} runs of "
          f"{args.n_gen} steps), median over {args.rounds} interleaved rounds")
    print(f"  A {ma:.3f} ({min(a):.3f}..{max(a):.3f})  B {mb:.3f} ({min(b):.3f}..{max(b):.3f})  B/A {mb / ma:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
