#!/usr/bin/env python3
"""GPU throughput of the CUDA backend: prefill (ppN) and decode (tgN) tokens/s with achieved bandwidth.

    python benchmarks/bench_gpu.py Qwen3.6-27B-Q4_K_M.gguf -p 512 -n 128 -r 3 --ctx 4096
    python benchmarks/bench_gpu.py Qwen3.6-27B-IQ4_XS.gguf -p 512 -n 0 --serial-tiles   # the fp16 fallback's overlap

Decode is measured three ways: `device` (decode(state, -1): argmax on the GPU, the chosen id stays on
the device and 4 bytes go to the host -- the generation fast path), `host-logits` (forward([tok]) +
numpy argmax: what pyqwen.bench's tg test does, 1 MB of logits per step on the 27B) and, with
--no-graphs, the same without CUDA graphs. Achieved GB/s = bytes one decode step must move
(pyqwen.memory_plan.decode_traffic: weights streamed once, KV rows read, DeltaNet states read and
written) x tokens/s; `% peak` compares that with the card's DRAM bandwidth (--peak-gbs, or a table of
known cards by device name). The weights-only GB/s column is what llama.cpp-style reports quote.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# After an installed pyqwen (its compiled modules are not in the source folder), so appended, not prepended:
# with the source folder first, `import pyqwen` found the uncompiled package there and failed on _spec.
sys.path.append(str(Path(__file__).resolve().parents[1]))

PEAK_GBS = {  # DRAM bandwidth, GB/s (10^9 bytes)
    "4090": 1008.0, "5090": 1792.0, "3090": 936.2, "4080": 716.8, "3080": 760.3, "A100": 1555.0,
    "H100 PCIe": 2039.0, "H100": 3350.0, "H200": 4800.0, "L40": 864.0, "A6000": 768.0,
}


def peak_for(name: str) -> float | None:
    for key in sorted(PEAK_GBS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_GBS[key]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="qwen35 GGUF file")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("-b", "--batch-size", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=0, help="context of the state (default: prompt + gen)")
    ap.add_argument("--no-graphs", action="store_true", help="also measure decode without CUDA graphs")
    ap.add_argument("--serial-tiles", action="store_true",
                    help="also time prefill with the fp16 fallback's weight tiles run serially (no dequantize/GEMM "
                         "overlap), alternating with the default in the same run (IQ4_XS, BF16, legacy-quant files)")
    ap.add_argument("--peak-gbs", type=float, default=None, help="DRAM bandwidth of the card, GB/s")
    args = ap.parse_args(argv)

    from pyqwen.cuda_backend import CudaCore, cuda_available
    from pyqwen.gguf_file import GGUFFile
    from pyqwen.memory_plan import decode_traffic, plan

    why = cuda_available()
    if why:
        print(f"bench_gpu: {why}", file=sys.stderr)
        return 2
    gf = GGUFFile.open(args.model)
    n_ctx = args.ctx or max(args.n_prompt, 8) + args.n_gen + 8
    t0 = time.perf_counter()
    core = CudaCore.from_gguf(gf, n_ctx, n_batch=args.batch_size, progress=None)
    load_s = time.perf_counter() - t0
    mem_plan = plan(gf, n_ctx)
    peak = args.peak_gbs
    try:
        import subprocess

        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        name = "unknown GPU"
    peak = peak or peak_for(name)
    print(f"model {args.model}: {core.weight_bytes / 2**30:.2f} GiB of weights uploaded in {load_s:.1f} s "
          f"({core.weight_bytes / load_s / 1e9:.2f} GB/s); device {name}; peak {peak or '?'} GB/s")
    if core.plan is not None:
        print("\n".join(core.plan.lines()))
    rng = np.random.default_rng(1234)
    V = gf.hparams.n_vocab
    rows = []

    def report(test: str, samples: list[float], traffic: dict | None) -> None:
        mean = statistics.fmean(samples)
        std = statistics.stdev(samples) if len(samples) > 1 else 0.0
        row = [test, f"{mean:9.2f} ± {std:6.2f}", f"{1000 / mean:8.2f}"]
        if traffic:
            gbs = traffic["total"] * mean / 1e9
            wgbs = traffic["weights"] * mean / 1e9
            row += [f"{gbs:8.1f}", f"{wgbs:8.1f}", f"{100 * gbs / peak:6.1f}%" if peak else "   ?"]
        else:
            row += ["", "", ""]
        rows.append(row)

    def timed(fn) -> list[float]:
        fn()
        return [fn() for _ in range(args.repetitions)]

    if args.n_prompt > 0:
        def pp() -> float:
            st = core.new_state(n_ctx)
            toks = rng.integers(0, V, args.n_prompt).astype(np.int32)
            t = time.perf_counter()
            core.forward(st, toks, "last", args.batch_size)
            return args.n_prompt / (time.perf_counter() - t)
        report(f"pp{args.n_prompt}", timed(pp), None)
        if args.serial_tiles:  # A/B in one run: overlapped and serial tiles alternate (benchmarks/gpu_roofline.md)
            from pyqwen.cuda_backend import cuda_module

            hooks = cuda_module().testing
            over, serial = [], []
            for _ in range(args.repetitions):
                over.append(pp())
                hooks._set_prefill_overlap(False)
                try:
                    serial.append(pp())
                finally:
                    hooks._set_prefill_overlap(True)
            report(f"pp{args.n_prompt} overlapped tiles", over, None)
            report(f"pp{args.n_prompt} serial tiles", serial, None)

    def tg(kind: str, c: CudaCore) -> float:
        st = c.new_state(n_ctx)
        logits = c.forward(st, rng.integers(0, V, 8).astype(np.int32), "last", args.batch_size)
        tok = int(logits.argmax())
        t = time.perf_counter()
        if kind == "device":
            tok = c.decode(st, tok)
            for _ in range(args.n_gen - 1):
                c.decode(st, -1)
        else:
            for _ in range(args.n_gen):
                tok = int(c.forward(st, np.array([tok], np.int32), "last", args.batch_size).argmax())
        return args.n_gen / (time.perf_counter() - t)

    if args.n_gen > 0:
        traffic = decode_traffic(mem_plan, 8 + args.n_gen // 2)
        report(f"tg{args.n_gen} device", timed(lambda: tg("device", core)), traffic)
        report(f"tg{args.n_gen} host-logits", timed(lambda: tg("host", core)), traffic)
        print(f"graphs: {core.graph_stats}")
        if args.no_graphs:
            del core
            plain = CudaCore.from_gguf(gf, n_ctx, n_batch=args.batch_size, use_graphs=False, progress=False)
            report(f"tg{args.n_gen} device, no graphs", timed(lambda: tg("device", plain)), traffic)
    head = ["test", "t/s", "ms/tok", "GB/s", "w GB/s", "% peak"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
