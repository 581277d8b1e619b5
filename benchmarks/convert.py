#!/usr/bin/env python3
"""Conversion and quantization throughput and peak RAM, next to llama.cpp's llama_model_quantize.

    python benchmarks/convert.py                                  # the demo model, q4_k_m, all cores
    python benchmarks/convert.py --hf /models/Qwen3.6-27B --type q4_k_m -t 16 --json out.json

Steps, each in a fresh child process (so its peak RSS is its own, from getrusage):
  convert    HF checkpoint -> TYPE GGUF directly (pyqwen convert)
  to-f16     HF checkpoint -> F16 GGUF (the common input of the two quantizers below)
  quantize   F16 GGUF -> TYPE (pyqwen quantize)
  llama.cpp  F16 GGUF -> TYPE with llama_model_quantize (when llama-cpp-python is installed), same
             threads; the last line gives pyqwen's speed relative to it and whether the two files are
             byte-identical (they should be: same mix, byte-identical quantizers, same layout).
MB/s is input bytes read per second (checkpoint or F16 file). Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_FTYPE = {"q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def _peak_rss() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _job_convert(hf_dir: str, out: str, out_type: str, threads: int) -> dict:
    from pyqwen.convert import WriteStats, convert

    stats = WriteStats()
    t0 = time.perf_counter()
    convert(hf_dir, out, out_type, threads=threads, progress=False, stats=stats)
    return {"seconds": time.perf_counter() - t0, "bytes_in": stats.bytes_in, "bytes_out": os.path.getsize(out),
            "peak_rss": _peak_rss()}


def _job_quantize(src: str, out: str, out_type: str, threads: int) -> dict:
    from pyqwen.convert.quantize import quantize_gguf

    t0 = time.perf_counter()
    quantize_gguf(src, out, out_type, threads=threads, progress=False)
    return {"seconds": time.perf_counter() - t0, "bytes_in": os.path.getsize(src), "bytes_out": os.path.getsize(out),
            "peak_rss": _peak_rss()}


def _job_llama(src: str, out: str, out_type: str, threads: int) -> dict:
    import llama_cpp

    cb = getattr(llama_cpp, "llama_log_callback", None)
    if cb is not None:  # silence the per-tensor log lines (keep a reference while quantizing)
        _job_llama.quiet = cb(lambda level, text, user: None)
        llama_cpp.llama_log_set(_job_llama.quiet, None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE[out_type]
    params.nthread = threads
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return {"seconds": time.perf_counter() - t0, "bytes_in": os.path.getsize(src), "bytes_out": os.path.getsize(out),
            "peak_rss": _peak_rss()}


def _child(fn, args, q):
    try:
        q.put(("ok", fn(*args)))
    except BaseException as e:  # report, do not hang the parent
        q.put(("error", f"{type(e).__name__}: {e}"))


def run_in_child(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    status, value = q.get()
    p.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def best_of(n: int, fn, *args) -> dict:
    runs = [run_in_child(fn, *args) for _ in range(n)]
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    return best


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def fmt(r: dict) -> str:
    return (f"{r['seconds']:8.2f} s  {r['bytes_in'] / r['seconds'] / 1e6:8.1f} MB/s  in {r['bytes_in'] / 1e6:9.1f} MB  "
            f"out {r['bytes_out'] / 1e6:9.1f} MB  peak RSS {r['peak_rss'] / 1e6:8.1f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, help="HF checkpoint directory (default: the demo model, written to a temp dir)")
    ap.add_argument("--type", dest="out_type", default="q4_k_m", choices=sorted(LLAMA_FTYPE))
    ap.add_argument("-t", "--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    ap.add_argument("-r", "--repeat", type=int, default=1, help="runs per step; the fastest is reported")
    ap.add_argument("--workdir", type=Path, help="where to write the GGUFs (default: a temp dir, removed)")
    ap.add_argument("--no-peer", action="store_true", help="do not run llama.cpp")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory(prefix="pyqwen-bench-convert-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        hf = args.hf
        if hf is None:
            from pyqwen.demo import write_demo_checkpoint

            hf = write_demo_checkpoint(work / "demo-hf")
            print(f"using the demo model ({hf})", file=sys.stderr)
        t = args.out_type
        res = {"type": t, "threads": threads, "checkpoint": str(hf)}
        res["convert"] = best_of(args.repeat, _job_convert, str(hf), str(work / f"direct-{t}.gguf"), t, threads)
        print(f"convert   HF -> {t:7s} {fmt(res['convert'])}")
        f16 = work / "f16.gguf"
        res["to_f16"] = best_of(args.repeat, _job_convert, str(hf), str(f16), "f16", threads)
        print(f"convert   HF -> f16     {fmt(res['to_f16'])}")
        ours = work / f"pyqwen-{t}.gguf"
        res["quantize"] = best_of(args.repeat, _job_quantize, str(f16), str(ours), t, threads)
        print(f"quantize  f16 -> {t:6s} {fmt(res['quantize'])}")
        if not args.no_peer:
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                print("llama-cpp-python not installed: no llama.cpp comparison", file=sys.stderr)
            else:
                theirs = work / f"llama-{t}.gguf"
                res["llama_cpp"] = best_of(args.repeat, _job_llama, str(f16), str(theirs), t, threads)
                print(f"llama.cpp f16 -> {t:6s} {fmt(res['llama_cpp'])}")
                res["speed_ratio"] = res["llama_cpp"]["seconds"] / res["quantize"]["seconds"]
                res["byte_identical"] = sha256(ours) == sha256(theirs)
                print(f"pyqwen quantize speed = {res['speed_ratio']:.2f} x llama_model_quantize "
                      f"({threads} threads); files byte-identical: {res['byte_identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
