#!/usr/bin/env python3
"""What verifying k drafts costs, and the decode speedup speculative decoding can then reach.

    python benchmarks/verify_cost.py                 # the 27B-shaped slice (built once), 2 threads, 7 repeats
    python benchmarks/verify_cost.py -m MODEL.gguf -t 16 -r 5

1. CPU, measured: on the 4-layer slice of Qwen3.6-27B at its real dimensions (pyqwen/bench_slice.py,
   Q4_K_M, random weights), the wall time of one forward of n = k+1 tokens (logits for every row, as a
   verify needs) against one token, after a prompt, for k = 1..4; every repeat restores the same state
   and the sizes run in a shuffled order each repeat (so drifting machine load spreads over all of
   them); the median is reported.
2. Projection: speedup = E[tokens per verify] / (cost(k+1) / cost(1) + k x draft cost), with
   E = 1 + a_1 + a_1 a_2 + ... (a_i: the probability that draft i is kept once drafts 1..i-1 were) and
   the per-position acceptance that llama.cpp users report for Qwen3.6 MTP (ACCEPTANCE below).
   The MTP draft cost is one more decoder layer (a gated-attention layer, blk.64) + its 2H->H projection
   + the shared LM head per drafted token; decode being bandwidth-bound, it is taken as those weights'
   bytes over the bytes of one 64-layer decode step (Q4_K_M, llama.cpp's mix).
3. The same projection on an RTX 4090 and 5090 from the roofline of benchmarks/gpu_roofline.md: a
   verify streams the weights once for all k+1 tokens, reads the KV and recurrent state once, writes one
   recurrent state per token (kept for rollback: the conservative design), and adds the arithmetic of
   k+1 tokens at the dp4a rate without overlap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

# ---- acceptance: ggml-org/llama.cpp#28196 (2026-09-12), RTX 5090, Qwen3.6-27B Q4_K_M, draft-mtp ------------
# (/work/shared/reference/performance-anchors.md section 1b, first row): "accept 0.66-0.75 at d1, 0.53-0.66
# at d2", read as the per-position rates a_1 and a_2. No source gives depths 3 and 4: they are assumed equal
# to a_2 (an optimistic hold: acceptance usually keeps falling with depth). The same row's measured
# speedups over plain decode are printed beside the 5090 projection as a check of the model.
ACCEPTANCE = {"low": (0.66, 0.53), "mid": (0.705, 0.595), "high": (0.75, 0.66)}
LLAMA_CPP_5090_SPEEDUP = {1: 1.47, 2: 1.69, 3: 1.58, 4: 1.5}

# ---- the 27B Q4_K_M decode step, from benchmarks/gpu_roofline.md (pyqwen.memory_plan.decode_traffic) ----
GB = 1e9
STEP_WEIGHTS = 15.82 * GB          # streamed weights (token_embd gathered, not streamed)
STEP_KV_4K = 0.27 * GB             # KV rows read at a context of 4,096
STEP_RECURRENT_RW = 0.31 * GB      # DeltaNet SSM + conv state, read + write
FLOP_PER_TOKEN = 54e9              # ~2 FLOP per weight
# per-GPU: DRAM bandwidth, and the row "same" of the expected-tok/s table (88 % streaming, fixed overhead)
GPUS = {"RTX 4090": dict(bw=1008 * GB, eff=0.88, overhead_s=0.7e-3, fp32_tflops=82.6),
        "RTX 5090": dict(bw=1792 * GB, eff=0.88, overhead_s=0.6e-3, fp32_tflops=104.8)}
# fp32_tflops: NVIDIA's spec sheets (not in gpu_roofline.md); dp4a does 4 int8 MACs per fp32 lane-op, and
# we count half of that rate as reached (the matvec kernels are not built for arithmetic throughput).
DP4A_PER_FP32 = 4
COMPUTE_EFF = 0.5
E_, F_, V_ = 5120, 17408, 248320   # hidden, FFN, vocab of Qwen3.6-27B


def mtp_draft_bytes() -> int:
    """Bytes of weights one MTP draft reads: blk.64 (gated attention + FFN; attn_v and ffn_down are Q6_K as
    for the last layers, see /work/shared/reference/gguf-qwen35.md section 5), nextn.eh_proj, the LM head."""
    import gguf

    def q(kind, ne0, ne1):
        block, size = gguf.GGML_QUANT_SIZES[kind]
        return ne0 * ne1 // block * size

    Q4, Q6 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K
    layer = (q(Q4, E_, 12288) + q(Q4, E_, 1024) + q(Q6, E_, 1024) + q(Q4, 6144, E_)     # q(+gate), k, v, out
             + 2 * q(Q4, E_, F_) + q(Q6, F_, E_))                                       # gate, up, down
    return layer + q(Q4, 2 * E_, E_) + q(Q6, E_, V_)                                     # eh_proj, LM head


def mtp_draft_flop() -> float:
    return 2.0 * (E_ * (12288 + 2 * 1024) + 6144 * E_ + 3 * E_ * F_ + 2 * E_ * E_ + E_ * V_)


def expected_tokens(rates: tuple[float, ...], k: int) -> float:
    """E[tokens emitted per verify] with k drafts: the bonus/correction token plus each kept draft."""
    a = [rates[min(i, len(rates) - 1)] for i in range(k)]
    return 1.0 + sum(float(np.prod(a[:i + 1])) for i in range(k))


# ---- 1. CPU measurement --------------------------------------------------------------------------------

# The largest verification the AVX-512 k-quant decode rows (csrc/simd/qgemm_avx512.cpp) take in one
# pass over the weights; measured too, for a long lookup draft.
EIGHT_TOKENS = 8


def measure_cpu(path: str, threads: int, reps: int, n_prompt: int, ks: range) -> dict[int, list[float]]:
    import pyqwen

    model = pyqwen.Model.load(path, threads=threads, n_ctx=n_prompt + 16)
    rng = np.random.default_rng(0)
    state = model.new_state()
    model.forward(state, rng.integers(0, model.n_vocab, n_prompt).tolist(), logits="none")
    snap = model.snapshot(state, with_kv=True)
    sizes = sorted({1, EIGHT_TOKENS, *(k + 1 for k in ks)})
    toks = rng.integers(0, model.n_vocab, max(sizes)).tolist()
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for rep in range(reps + 1):                       # repeat 0 is the warm-up, not recorded
        order = list(sizes)
        rng.shuffle(order)
        for n in order:
            model.restore(state, snap)
            t0 = time.perf_counter()
            model.forward(state, toks[:n], logits="all")
            dt = time.perf_counter() - t0
            if rep:
                times[n].append(dt)
    return times


# ---- 3. GPU roofline -------------------------------------------------------------------------------------

def gpu_step_seconds(gpu: dict, n_tokens: int) -> float:
    """One forward of n tokens at a 4k context: weights and KV read once, the recurrent state read once and
    written once per token, the arithmetic of n tokens; plus the fixed per-step overhead."""
    nbytes = STEP_WEIGHTS + STEP_KV_4K + STEP_RECURRENT_RW / 2 * (1 + n_tokens)
    compute = gpu["fp32_tflops"] * 1e12 * DP4A_PER_FP32 * COMPUTE_EFF
    return nbytes / (gpu["eff"] * gpu["bw"]) + n_tokens * FLOP_PER_TOKEN / compute + gpu["overhead_s"]


def gpu_draft_seconds(gpu: dict) -> float:
    compute = gpu["fp32_tflops"] * 1e12 * DP4A_PER_FP32 * COMPUTE_EFF
    # about 2/64 of a step's ~1250 launches: one layer's plus the head's
    return mtp_draft_bytes() / (gpu["eff"] * gpu["bw"]) + mtp_draft_flop() / compute + gpu["overhead_s"] * 2 / 64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF file (default: the 27B-shaped slice, built on first use)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=7)
    ap.add_argument("-p", "--n-prompt", type=int, default=128, help="context before the verified tokens")
    ap.add_argument("--max-k", type=int, default=4)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repetitions < 1 or args.n_prompt < 1 or not 1 <= args.max_k <= 8:
        ap.error("need threads, repetitions, n-prompt >= 1 and 1 <= max-k <= 8")
    ks = range(1, args.max_k + 1)

    path = args.model
    if path is None:
        from pyqwen.bench_slice import slice_27b_path

        path = str(slice_27b_path(log=lambda s: print(s, file=sys.stderr, flush=True)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {os.path.basename(path)}, {args.threads} threads, context {args.n_prompt}, "
          f"{args.repetitions} repeats (load average before: {load:.2f})")
    times = measure_cpu(path, args.threads, args.repetitions, args.n_prompt, ks)
    med = {n: statistics.median(v) for n, v in times.items()}
    c1 = med[1]

    draft_rel = mtp_draft_bytes() / (STEP_WEIGHTS + STEP_KV_4K + STEP_RECURRENT_RW)
    print(f"\nMTP draft cost: {mtp_draft_bytes() / GB:.3f} GB of weights per draft = {draft_rel:.4f} of a "
          f"27B decode step ({(STEP_WEIGHTS + STEP_KV_4K + STEP_RECURRENT_RW) / GB:.2f} GB at 4k context)")
    print("acceptance a_1, a_2 (a_3 = a_4 = a_2 assumed): " +
          ", ".join(f"{name} {r[0]:.3f}/{r[1]:.3f}" for name, r in ACCEPTANCE.items()) + "  [llama.cpp#28196]")

    print("\n## CPU (measured cost of a k+1-token forward; speedup projected for the 27B with its MTP draft cost)\n")
    print("| k | forward ms (min-max) | cost(k+1)/cost(1) | E[tokens] low/mid/high | speedup low/mid/high |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| 0 | {c1 * 1e3:.1f} ({min(times[1]) * 1e3:.1f}-{max(times[1]) * 1e3:.1f}) | 1.00 | 1 | 1 |")
    for k in ks:
        n = k + 1
        ratio = med[n] / c1
        e = [expected_tokens(r, k) for r in ACCEPTANCE.values()]
        s = [x / (ratio + k * draft_rel) for x in e]
        print(f"| {k} | {med[n] * 1e3:.1f} ({min(times[n]) * 1e3:.1f}-{max(times[n]) * 1e3:.1f}) | {ratio:.2f} | "
              + "/".join(f"{x:.2f}" for x in e) + " | " + "/".join(f"{x:.2f}" for x in s) + " |")

    g = EIGHT_TOKENS
    print(f"| {g - 1} ({g} tokens, one pass over the weights) | {med[g] * 1e3:.1f} ({min(times[g]) * 1e3:.1f}-{max(times[g]) * 1e3:.1f}) | "
          f"{med[g] / c1:.2f} | | |")

    for name, gpu in GPUS.items():
        t1 = gpu_step_seconds(gpu, 1)
        td = gpu_draft_seconds(gpu)
        print(f"\n## {name} (roofline projection, ctx 4k: plain decode {t1 * 1e3:.2f} ms = {1 / t1:.1f} tok/s; "
              f"one MTP draft {td * 1e3:.2f} ms)\n")
        check = name == "RTX 5090"
        print("| k | verify ms | verify/decode | speedup low/mid/high | tok/s mid |" + (" llama.cpp measured |" if check else ""))
        print("|---:|---:|---:|---:|---:|" + ("---:|" if check else ""))
        for k in ks:
            tv = gpu_step_seconds(gpu, k + 1)
            s = [expected_tokens(r, k) * t1 / (tv + k * td) for r in ACCEPTANCE.values()]
            print(f"| {k} | {tv * 1e3:.2f} | {tv / t1:.3f} | " + "/".join(f"{x:.2f}" for x in s)
                  + f" | {s[1] / t1:.0f} |" + (f" {LLAMA_CPP_5090_SPEEDUP[k]:.2f}x |" if check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
