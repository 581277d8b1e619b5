"""Per-core speed of the prefill GEMM on quantized weights (csrc/qgemm.cpp): GMAC per CPU-second.

One thread, process CPU time (time.process_time), so the figure is per core and holds up on a shared
machine. Each call is the whole qgemm: activation quantization and packing, weight packing, the
micro-kernel. Run it with two builds' interpreters to compare them (interleave runs).

    python benchmarks/qgemm_kernel.py [--type q4_K] [-k 5120] [-n 1024] [-t 256] [--kernels auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

TYPES = {"q4_K": 12, "q5_K": 13, "q6_K": 14, "q8_0": 8}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", default="q4_K", choices=sorted(TYPES))
    ap.add_argument("-k", type=int, default=5120, help="input features (K)")
    ap.add_argument("-n", type=int, default=1024, help="output rows (N)")
    ap.add_argument("-t", type=int, default=256, help="tokens")
    ap.add_argument("--kernels", default="auto")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    args = ap.parse_args(argv)
    from pyqwen import _core as core

    t = TYPES[args.type]
    rng = np.random.default_rng(0)
    w = core.quantize(t, rng.standard_normal((args.n, args.k)).astype(np.float32))
    x = rng.standard_normal((args.t, args.k)).astype(np.float32)
    core.testing.qgemm(t, w, args.k, args.n, x, args.kernels, 1)  # warm-up
    best = 0.0
    for _ in range(args.repetitions):
        c0 = time.process_time()
        core.testing.qgemm(t, w, args.k, args.n, x, args.kernels, 1)
        best = max(best, args.k * args.n * args.t / (time.process_time() - c0) / 1e9)
    print(f"{args.type} K={args.k} N={args.n} tokens={args.t} kernels={args.kernels}: "
          f"{best:.1f} GMAC per CPU-second (best of {args.repetitions}, 1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
