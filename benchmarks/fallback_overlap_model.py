"""Paper model of the fp16 fallback prefill matmul (cuda/launch/gemm.cu) on Qwen3.6-27B: serial tiles vs the
double-buffered overlap, per tile budget, chunk size and card. Nothing is measured (no GPU here); every
assumption is a named constant below, and benchmarks/gpu_roofline.md quotes the output.

    python benchmarks/fallback_overlap_model.py

Model per matrix (K inputs, N rows), split into tiles of prefill_tile_rows(K, N, budget) rows:
- dequant of a tile of v values: a launch plus v * (b + 2) bytes (read the quantized rows, write fp16) at
  BW_EFF of DRAM bandwidth;
- GEMM of a tile of r rows x n tokens: the best of a few cuBLAS-like CTA tiles and split-K factors, in
  whole waves over the SMs, each CTA at GEMM_EFF of its SM's fp16 (fp32-accumulate) tensor rate (times
  the CTA tile's relative efficiency); float weights (hi + lo rows) twice;
- serial: sum of dequant + GEMM per tile;
- overlapped: dequant(tile 0) + the pipeline (tile i+1's dequant runs beside tile i's GEMM; a GEMM waits
  for its tile), plus (1 - HIDE) of every hidden dequant's time as interference (SMs and DRAM shared).
"""

from __future__ import annotations

import math

CARDS = {  # SMs, fp16 tensor TFLOPS with fp32 accumulation (dense), DRAM GB/s, int8 TOPS (dense)
    "4090": (128, 165.2, 1008.0, 660.6),
    "5090": (170, 209.5, 1792.0, 838.0),
}
GEMM_EFF = 0.70   # of the per-SM fp16 tensor rate inside a full wave (cuBLAS main loop; assumption)
BW_EFF = 0.85     # of DRAM bandwidth reached by the dequant kernel (streaming; assumption)
LAUNCH_US = 3.0   # per kernel on a stream (no graph in prefill; assumption)
HIDE = 0.7        # share of a concurrent dequant's time hidden behind the GEMM (range 0.5-0.9; assumption)
MMQ_UTIL = 0.45   # int8 MMQ utilisation (gpu_roofline.md's MMQ estimate)
# CTA tiles (rows, tokens, efficiency relative to 128 x 128: less operand reuse per byte of shared memory)
CTA_TILES = [(128, 128, 1.0), (128, 64, 0.9), (64, 64, 0.75)]
SPLITS = [1, 2, 4, 8]  # split-K factors
TILE_VALUES = 16 << 20  # kTileValues (cuda/plan/workspace_sizes.h): per buffer

# Qwen3.6-27B matmuls: (K, N, matrices in the model)
SHAPES = [
    (5120, 17408, 64),       # ffn gate + up: one pipeline (matmul_swiglu), see GROUPED
    (17408, 5120, 64),       # ffn down
    (5120, 10240, 48),       # DeltaNet qkv
    (5120, 6144, 48),        # DeltaNet gate (z)
    (6144, 5120, 48),        # DeltaNet out
    (5120, 48, 2 * 48),      # DeltaNet alpha, beta
    (5120, 12288, 16),       # attention q (+ gate)
    (5120, 1024, 2 * 16),    # attention k, v
    (6144, 5120, 16),        # attention o
]
GROUPED = {(5120, 17408): 2}  # shapes whose weights share one pipeline of tiles, and how many
TYPES = {"IQ4_XS": (0.53125, False), "Q4_0": (0.5625, False), "BF16": (2.0, True), "F32": (4.0, True)}


def tile_rows(K: int, N: int, values: int) -> int:  # workspace_sizes.h prefill_tile_rows
    r = max(values // K // 64 * 64, 64)
    return min(r, N)


def tiles(K: int, N: int, values: int) -> list[int]:
    r = tile_rows(K, N, values)
    return [min(r, N - r0) for r0 in range(0, N, r)]


def gemm_time(card: str, r: int, n: int, K: int) -> float:
    """One cuBLAS GEMM of r rows x n tokens x K: the best of the CTA tiles and split-K factors in CTA_TILES /
    SPLITS (what cuBLAS's heuristics aim at), whole waves over the SMs, split-K partials reduced through DRAM."""
    sms, tflops, bw, _ = CARDS[card]
    per_sm = tflops * 1e12 / sms * GEMM_EFF
    best = math.inf
    for bm, bn, eff in CTA_TILES:
        for sk in SPLITS:
            ctas = math.ceil(r / bm) * math.ceil(n / bn) * sk
            t = math.ceil(ctas / sms) * 2 * bm * bn * math.ceil(K / sk) / (per_sm * eff)
            if sk > 1:
                t += r * n * 4 * (sk + 1) / (bw * 1e9 * BW_EFF)  # partials written and read back
            best = min(best, t)
    return best + LAUNCH_US * 1e-6


def matrix_time(card: str, K: int, N: int, n: int, b: float, split: bool, values: int,
                weights: int = 1) -> tuple[float, float, float]:
    """(serial s, overlapped s, exposed dequant s) of `weights` matrices of one shape in one pipeline of tiles
    (matmul_swiglu's gate and up: gemm_prefill_n)."""
    sms, tflops, bw, _ = CARDS[card]
    rows = tiles(K, N, values) * weights
    deq = [LAUNCH_US * 1e-6 + r * K * (b + 2) / (bw * 1e9 * BW_EFF) for r in rows]
    gemm = [gemm_time(card, r, n, K) * (2 if split else 1) for r in rows]
    serial = sum(deq) + sum(gemm)
    # pipeline: d[i] dequant end, g[i] GEMM end; buffer i % 2 is free once GEMM i-2 ended
    d_end, g_end = [], []
    for i in range(len(deq)):
        start_d = max(d_end[-1] if d_end else 0.0, g_end[i - 2] if i >= 2 else 0.0)
        d_end.append(start_d + deq[i])
        g_end.append(max(g_end[-1] if g_end else 0.0, d_end[i]) + gemm[i])
    over = g_end[-1] + (1 - HIDE) * sum(deq[1:])
    return serial, over, deq[0]


def chunk(card: str, typ: str, n: int, values: int) -> tuple[float, float]:
    b, split = TYPES[typ]
    s = o = 0.0
    for K, N, count in SHAPES:
        ms, mo, _ = matrix_time(card, K, N, n, b, split, values, GROUPED.get((K, N), 1))
        s += count * ms
        o += count * mo
    return s, o


def main() -> None:
    weights = sum(K * N * c * GROUPED.get((K, N), 1) for K, N, c in SHAPES)
    print(f"matmul weights: {weights / 1e9:.2f} G")
    for typ, (b, split) in TYPES.items():
        print(f"{typ}: dequant traffic {weights * (b + 2) / 1e9:.1f} GB written+read per chunk; the GEMM re-reads "
              f"{weights * 2 / 1e9:.1f} GB of fp16 tiles")
    print("\n| card | type | chunk | tile budget | serial ms | overlapped ms | gain | matmul tok/s serial -> overlapped |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for card in CARDS:
        for typ in ("IQ4_XS", "BF16"):
            for n in (256, 512):
                for label, values in (("16M values (32 MB) x 2", TILE_VALUES), ("48M values (96 MB) x 2", 48 << 20),
                                      ("whole matrix, 1 buffer", 1 << 40)):
                    s, o = chunk(card, typ, n, values)
                    if values == 1 << 40:
                        o = s  # one tile per matrix: nothing to overlap
                    print(f"| {card} | {typ} | {n} | {label} | {s * 1e3:.0f} | {o * 1e3:.0f} | {s / o:.2f}x | "
                          f"{n / s:,.0f} -> {n / o:,.0f} |")
    global HIDE
    print("\nSensitivity to HIDE (IQ4_XS, 16M-value tiles): overlapped gain over serial")
    for card in CARDS:
        for n in (256, 512):
            gains = []
            for h in (0.5, 0.7, 0.9, 1.0):
                HIDE = h
                s, o = chunk(card, "IQ4_XS", n, TILE_VALUES)
                gains.append(f"{h}: {s / o:.2f}x")
            HIDE = 0.7
            print(f"  {card} chunk {n}: " + ", ".join(gains))
    print("\nMMQ (Q4_K_M types), same model: matmul tok/s at", f"{MMQ_UTIL:.0%} of the int8 peak:")
    for card, (_, _, _, tops) in CARDS.items():
        t = 2 * weights / (tops * 1e12 * MMQ_UTIL)  # per token
        print(f"  {card}: {t * 1e6:.0f} us per token -> {1 / t:,.0f} tok/s at any chunk > 16 (no dequant pass)")
    print("\nfp16 cuBLAS for an MMQ type (Q4_K, 0.5625 B/weight), chunk 512, overlapped, 16M-value tiles:")
    TYPES["Q4_K"] = (0.5625, False)
    for card in CARDS:
        s, o = chunk(card, "Q4_K", 512, TILE_VALUES)
        print(f"  {card}: {512 / o:,.0f} tok/s of matmul (serial {512 / s:,.0f})")


if __name__ == "__main__":
    main()
