"""A/B of the quantized decode row kernels (qgemm gemv=True) between two builds: CPU-ms per call.

One thread, process CPU time (time.process_time), best of a few calls per run; the two builds' runs are
interleaved (A B A B ...) in fresh interpreters so that the load of a shared machine falls on both alike.
A build is a folder holding an installed `pyqwen` package (e.g. a copy of site-packages/pyqwen).

    python benchmarks/decode_rows_ab.py --a /tmp/A --b /tmp/B [--type q5_K] [-k 5120] [-n 2048] [-t 1 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

TYPES = {"q4_K": 12, "q5_K": 13, "q6_K": 14, "q8_0": 8}

_CHILD = r"""
import json, sys, time
import numpy as np
from pyqwen import _core as core
t, k, n, toks, kernels, reps = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
w = core.quantize(t, rng.standard_normal((n, k)).astype(np.float32))
out = {}
for nt in toks:
    x = rng.standard_normal((nt, k)).astype(np.float32)
    core.testing.qgemm(t, w, k, n, x, kernels, 1, True)  # warm-up
    best = 1e9
    for _ in range(reps):
        c0 = time.process_time()
        core.testing.qgemm(t, w, k, n, x, kernels, 1, True)
        best = min(best, time.process_time() - c0)
    out[nt] = best * 1e3
print(json.dumps(out))
"""


def run(build: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=build)
    spec = json.dumps([TYPES[args.type], args.k, args.n, args.t, args.kernels, args.calls])
    res = subprocess.run([sys.executable, "-P", "-c", _CHILD, spec], env=env, capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(res.stdout).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="folder with build A's pyqwen package")
    ap.add_argument("--b", required=True, help="folder with build B's pyqwen package")
    ap.add_argument("--type", default="q5_K", choices=sorted(TYPES))
    ap.add_argument("-k", type=int, default=5120)
    ap.add_argument("-n", type=int, default=2048)
    ap.add_argument("-t", type=int, nargs="+", default=[1, 4, 8], help="tokens per call")
    ap.add_argument("--kernels", default="auto")
    ap.add_argument("--calls", type=int, default=7, help="calls per run (the best counts)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="interleaved A/B rounds")
    args = ap.parse_args(argv)
    res = {"A": [], "B": []}
    for _ in range(args.rounds):
        res["A"].append(run(args.a, args))
        res["B"].append(run(args.b, args))
    print(f"{args.type} K={args.k} N={args.n}, 1 thread, CPU-ms per call (best of {args.calls}), "
          f"median over {args.rounds} interleaved rounds")
    for nt in args.t:
        a = statistics.median(r[nt] for r in res["A"])
        b = statistics.median(r[nt] for r in res["B"])
        print(f"  {nt} tokens: A {a:.3f}  B {b:.3f}  B/A {b / a:.3f}  "
              f"(A {min(r[nt] for r in res['A']):.3f}..{max(r[nt] for r in res['A']):.3f}, "
              f"B {min(r[nt] for r in res['B']):.3f}..{max(r[nt] for r in res['B']):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
