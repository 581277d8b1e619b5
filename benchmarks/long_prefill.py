"""A long prompt on the CPU: prefill time and peak memory, pyqwen beside llama.cpp on the same file with the
same KV cache type, in the same run (a benchmark, not a test).

    python benchmarks/long_prefill.py [--tokens 32768] [--kv f16,q8_0] [--threads 2] [--model FILE] [--reps 1]

Each run is its own process (so its peak RSS is its own): load, note the RSS, prefill --tokens held-out
tokens of the trained demo model's corpus (logits of the last token only), note the peak RSS. The demo
model was trained at 8,192 tokens: longer prompts run with YaRN at the factor that covers them, in both
engines (llama.cpp: rope_scaling_type yarn, rope_freq_scale, yarn_orig_ctx). Engines alternate
(pyqwen, llama.cpp, pyqwen, ...). Prints tok/s, RSS after load, peak RSS, their difference, and the KV
cache's size by the spec (what the difference should be close to: pyqwen allocates nothing that grows
with the prompt beyond the KV cache).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, math, resource, sys, time
sys.path.insert(0, sys.argv[1] + "/benchmarks")
engine, path, n, kv, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
from kv_cache_fidelity import heldout_tokens
ids = heldout_tokens(n)
from pyqwen.gguf_file import GGUFFile
train = GGUFFile.open(path).hparams.n_ctx_train
factor = float(2 ** math.ceil(math.log2(n / train))) if n > train else 1.0
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if engine == "pyqwen":
    import pyqwen
    rope = dict(rope_scaling="yarn", rope_scale=factor, yarn_orig_ctx=train) if factor > 1 else {}
    m = pyqwen.Model.load(path, n_ctx=n, kv_type=kv, threads=threads, backend="cpu", spec="off", n_batch=512, **rope)
    st = m.new_state()
    loaded = rss()
    t0 = time.perf_counter()
    m.forward(st, ids, logits="last")
    dt = time.perf_counter() - t0
else:
    from pyqwen.llama_cpp_peer import open_llama
    import llama_cpp
    T = {"f16": 1, "q8_0": 8, "q4_0": 2, "f32": 0}
    k, _, v = kv.partition(",")
    rope = dict(rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN, rope_freq_scale=1 / factor,
                yarn_orig_ctx=train) if factor > 1 else {}
    llm = open_llama(path, n_ctx=n, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                     type_k=T[k], type_v=T[v or k], flash_attn=True, verbose=False, **rope)
    loaded = rss()
    t0 = time.perf_counter()
    llm.eval(ids)
    dt = time.perf_counter() - t0
print(json.dumps({"engine": engine, "seconds": dt, "loaded": loaded, "peak": rss(), "factor": factor}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--kv", default="f16,q8_0", help="KV cache types, comma-separated (K/V pairs as K+V)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="GGUF (default: the trained demo model)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true", help="pyqwen only")
    args = ap.parse_args()
    from pyqwen import _spec
    from pyqwen.demo import demo_model_path
    from pyqwen.gguf_file import GGUFFile

    path = Path(args.model) if args.model else demo_model_path()
    cfg = GGUFFile.open(path).hparams.core_config()
    engines = ["pyqwen"] + ([] if args.no_peer else ["llama.cpp"])
    print(f"model {path.name}, {args.tokens:,}-token prompt, {args.threads} threads, logits of the last token")
    print("| engine | KV | prefill s | tok/s | RSS after load | peak RSS | peak - load | KV cache (spec) |")
    print("|---|---|---|---|---|---|---|---|")
    for kv in args.kv.split(","):
        kv = kv.replace("+", ",")
        kv_bytes = _spec.state_bytes(cfg, args.tokens, kv)["kv_cache"]
        for _ in range(args.reps):
            for eng in engines:
                r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), eng, str(path), str(args.tokens), kv,
                                    str(args.threads)], capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"| {eng} | {kv} | failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode} |")
                    continue
                d = json.loads(r.stdout.strip().splitlines()[-1])
                mib = lambda b: f"{b / 2**20:,.0f} MiB"
                print(f"| {eng} | {kv} | {d['seconds']:.1f} | {args.tokens / d['seconds']:,.0f} | {mib(d['loaded'])} | "
                      f"{mib(d['peak'])} | {mib(d['peak'] - d['loaded'])} | {mib(kv_bytes)} |", flush=True)


if __name__ == "__main__":
    main()
