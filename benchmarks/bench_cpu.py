#!/usr/bin/env python3
"""CPU throughput of pyqwen next to llama.cpp (llama-cpp-python) on the same GGUF, llama-bench style.

    python benchmarks/bench_cpu.py                          # the built-in demo model, pp512/tg128 x3
    python benchmarks/bench_cpu.py -m Qwen3.6-27B-Q4_K_M.gguf -t 16 -p 512 -n 128 --json results.json
    python benchmarks/bench_cpu.py --slice-27b -t 2 -p 512,8192 -n 128   # the 27B's shapes, 4 layers, Q4_K_M

Definitions are those of pyqwen/bench.py (`pyqwen bench` prints the same table): ppN prefills N random
tokens into a fresh state in chunks of -b; tgN decodes N tokens one at a time (greedy) after a short
prompt; mean ± std of tokens/s over -r repetitions after one warm-up. llama.cpp runs in the same process
with the same threads and batch size; the last column is pyqwen's t/s divided by llama.cpp's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyqwen.bench import format_markdown, llama_cpp_available, run_bench  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF file (default: the built-in demo model)")
    ap.add_argument("-p", "--n-prompt", type=lambda s: [int(x) for x in s.split(",")], default=[512],
                    help="prompt sizes, comma-separated (one pp row each)")
    ap.add_argument("--slice-27b", action="store_true",
                    help="the 4-layer slice of Qwen3.6-27B at real dimensions (random weights, Q4_K_M; built once)")
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-b", "--batch-size", type=int, default=256)
    ap.add_argument("--no-peer", action="store_true", help="do not measure llama.cpp")
    ap.add_argument("--json", metavar="FILE", help="also write the results (with machine info) as JSON")
    args = ap.parse_args(argv)

    if args.slice_27b:
        from pyqwen.bench_slice import slice_27b_path

        args.model = str(slice_27b_path(log=lambda s: print(s, file=sys.stderr, flush=True)))
    elif args.model is None:
        print("using the built-in demo model (trained, 12M parameters)", file=sys.stderr)
    peer = not args.no_peer
    if peer and llama_cpp_available() is not None:
        print(f"note: {llama_cpp_available()}; measuring pyqwen only", file=sys.stderr)
    report = run_bench(args.model, n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.repetitions,
                       threads=args.threads, n_batch=args.batch_size, backend="cpu", peer_llama_cpp=peer, measure_bandwidth=True,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_markdown(report))
    if args.json:
        data = report.to_dict()
        data["machine"] = {"cpu": cpu_name(), "cores_available": len(os.sched_getaffinity(0)),
                           "python": platform.python_version(), "platform": platform.platform()}
        try:
            import llama_cpp

            data["machine"]["llama_cpp_python"] = llama_cpp.__version__
        except Exception:
            pass
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
