"""Where a long prefill's time goes by position: pyqwen and llama.cpp prefill the same random prompt on the
same GGUF (default: the 27B-shaped slice, `pyqwen bench --slice-27b`), n_batch tokens at a time, the two
engines alternating chunk by chunk, each chunk timed in wall and process CPU seconds (a benchmark, not a
test).

    python benchmarks/prefill_by_position.py [--tokens 8192] [--n-batch 256] [--threads 2] [--model FILE]
                                             [--json OUT]

On a shared machine whole-prompt runs of the two engines minutes apart see different loads; alternating
per chunk puts both under the same load, and the per-chunk CPU seconds show what grows with the position
(attention: its cost per token is linear in the prefix) apart from what does not (the weight GEMMs).
ppN for every N that is a multiple of n_batch comes out of the same run (the first N/n_batch chunks: a
fresh sequence from position 0, as the bench's ppN), so pp512 and pp8192 are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--n-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="GGUF (default: the 27B-shaped slice, built once)")
    ap.add_argument("--no-peer", action="store_true", help="pyqwen only")
    ap.add_argument("--json", default=None, help="write the per-chunk rows here (updated after every chunk)")
    args = ap.parse_args()
    import pyqwen

    if args.model:
        path = Path(args.model)
    else:
        from pyqwen.bench_slice import slice_27b_path

        path = slice_27b_path()
    N, nb = args.tokens, args.n_batch
    m = pyqwen.Model.load(path, n_ctx=N + 16, threads=args.threads, n_batch=nb, backend="cpu", spec="off")
    ids = np.random.default_rng(1).integers(0, m.n_vocab, size=N).astype(np.int32)
    st = m.new_state()
    llm = None
    if not args.no_peer:
        import llama_cpp as lc

        from pyqwen.llama_cpp_peer import extra_bufts_usable, open_llama

        extra = extra_bufts_usable(str(path))
        llm = open_llama(path, extra_bufts=extra, n_ctx=N + 16, n_threads=args.threads,
                         n_threads_batch=args.threads, n_batch=nb, n_ubatch=nb, verbose=False)
        ctx = llm._ctx.ctx
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
    print(f"{path.name}: {N} tokens in chunks of {nb}, {args.threads} threads, engines alternating per chunk")
    rows = []
    for i in range(0, N, nb):
        chunk = ids[i:i + nb]
        row = {"pos": i}
        a, b = time.perf_counter(), time.process_time()
        m.forward(st, chunk.tolist(), logits="last")
        row["py_wall"], row["py_cpu"] = time.perf_counter() - a, time.process_time() - b
        if llm is not None:
            arr = (lc.llama_token * len(chunk))(*[int(x) for x in chunk])
            a, b = time.perf_counter(), time.process_time()
            rc = lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(chunk)))
            lc.llama_synchronize(ctx)
            row["ll_wall"], row["ll_cpu"] = time.perf_counter() - a, time.process_time() - b
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        row["load"] = os.getloadavg()[0]
        rows.append(row)
        line = f"{i:6d} pyqwen {row['py_wall']:6.2f} s wall {row['py_cpu']:6.2f} s CPU"
        if llm is not None:
            line += (f" | llama.cpp {row['ll_wall']:6.2f} s wall {row['ll_cpu']:6.2f} s CPU | llama.cpp/pyqwen time: "
                     f"wall {row['ll_wall'] / row['py_wall']:.2f} CPU {row['ll_cpu'] / row['py_cpu']:.2f}")
        print(line + f" | load {row['load']:.1f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": str(path), "n_batch": nb, "rows": rows}))
    for n in sorted({min(512, N), N}):
        k = n // nb
        if k == 0:
            continue
        s = {key: sum(r[key] for r in rows[:k]) for key in rows[0] if key not in ("pos", "load")}
        line = f"pp{n}: pyqwen {n / s['py_wall']:.2f} t/s ({s['py_cpu']:.1f} CPU-s)"
        if llm is not None:
            line += (f", llama.cpp {n / s['ll_wall']:.2f} t/s ({s['ll_cpu']:.1f} CPU-s); pyqwen/llama.cpp: "
                     f"wall {s['ll_wall'] / s['py_wall']:.3f}x, CPU {s['ll_cpu'] / s['py_cpu']:.3f}x")
        print(line)


if __name__ == "__main__":
    main()
