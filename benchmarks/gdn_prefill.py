"""Prefill of the 27B-shaped slice (pyqwen bench --slice-27b) with the chunked gated delta rule on and off.

    python benchmarks/gdn_prefill.py [--tokens 512] [--reps 2] [--threads 1]

Interleaved on/off runs of one prefill (n_batch 256), timed by process CPU time: the machine is shared, so
wall time says little (with one thread, CPU time is the work done). The delta rule is a small part of a
prefill -- 3 of the slice's 4 layers run it, next to their quantized matmuls -- so this shows its share end
to end; benchmarks/gdn_kernel.py times the kernel alone.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import pyqwen
    from pyqwen import _core
    from pyqwen.bench_slice import slice_27b_path

    m = pyqwen.Model.load(str(slice_27b_path()), threads=args.threads, n_ctx=args.tokens + 16, n_batch=256)
    ids = np.random.default_rng(0).integers(0, m.n_vocab - 64, args.tokens).tolist()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.tokens} tokens, {args.threads} thread(s)")
    best: dict[bool, float] = {}
    was = _core.gdn_chunked()
    try:
        for _ in range(args.reps):
            for on in (True, False):
                _core.set_gdn_chunked(on)
                st = m.new_state()
                c0, w0 = time.process_time(), time.perf_counter()
                m.forward(st, ids)
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                best[on] = min(best.get(on, 1e30), cpu)
                print(f"{'chunked' if on else 'loop   '}: cpu {cpu:.2f} s, wall {wall:.2f} s", flush=True)
    finally:
        _core.set_gdn_chunked(was)
    for on in (True, False):
        name = "chunked" if on else "loop   "
        print(f"{name}: best cpu {best[on]:.2f} s = {args.tokens / best[on]:.1f} t/s per core")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
