"""The gated delta rule alone, token loop vs chunked form, at the 27B's head shape (issue 12, item 3).

    python benchmarks/gdn_kernel.py [--tokens 512,8192] [--chunks 16,32,64] [--heads 4] [--simd auto]

One V head is dk = dv = 128; the 27B runs 48 of them per GDN layer (48 layers), threaded over heads, so
per-head time x 48 x 48 / threads is the layer stack's delta-rule cost. Random L2-normalised q/k,
per-token decays exp(g) from ~0.999 to ~0.01, beta in (0, 1). Times are the best of --reps calls of
pyqwen._core.testing.ref_delta_rule (the selected kernel set's token loop) and ref_delta_rule_chunked
(gdn_chunk.cpp), interleaved so that load on the machine hits both alike. Times are the calling thread's CPU
time (the kernels run on it), so time-sharing with other processes drops out; cache and core sharing do not.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def inputs(rng, n, dk, dv):
    q = rng.normal(size=(n, dk)).astype(np.float32)
    k = rng.normal(size=(n, dk)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    v = rng.normal(size=(n, dv)).astype(np.float32)
    g = (-np.exp(rng.uniform(-7, 1.5, n))).astype(np.float32)
    beta = rng.uniform(0, 1, n).astype(np.float32)
    S = rng.normal(0, 0.5, (dv, dk)).astype(np.float32)
    return q, k, v, g, beta, S


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="512,8192")
    ap.add_argument("--chunks", default="16,32,64")
    ap.add_argument("--dk", type=int, default=128)
    ap.add_argument("--dv", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--simd", default="auto", help="kernel set: auto, avx2, avx512")
    args = ap.parse_args()
    from pyqwen import _core

    if not _core.set_simd(args.simd):
        raise SystemExit(f"kernel set {args.simd!r} not available")
    T = _core.testing
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; kernel set {args.simd}; dk {args.dk} dv {args.dv}; one head")
    for n in (int(x) for x in args.tokens.split(",")):
        a = inputs(rng, n, args.dk, args.dv)
        qs = args.dk ** -0.5
        best = {}
        for _ in range(args.reps):
            chunked = [(f"chunk{c}", lambda c=c: T.ref_delta_rule_chunked(*a, qs, c))
                       for c in map(int, args.chunks.split(","))]
            for name, fn in [("loop", lambda: T.ref_delta_rule(*a, qs))] + chunked:
                t0 = time.thread_time()
                fn()
                dt = time.thread_time() - t0
                best[name] = min(best.get(name, 1e9), dt)
        base = best["loop"]
        row = "  ".join(f"{k} {v * 1e6 / n:7.2f} us/tok ({base / v:4.2f}x)" for k, v in best.items())
        print(f"n {n:5d}: {row}   [27B, 48 layers x 48 heads, 1 thread: loop {base * 2304:.2f} s]")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
