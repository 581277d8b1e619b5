// conv1d.cuh: causal depthwise conv1d (kernel K <= 8, no bias) + SiLU with the rolling conv state -- the
// first step of a Gated DeltaNet layer after its in-projection (csrc/gdn.cpp conv1d_silu is the spec).
//
// Per channel ch, over the sequence X = [state (K-1 values, oldest first) | x (n tokens)]:
//   y[t][ch] = silu(sum_j X[t + j][ch] * w[ch][j])      (tap K-1 on token t itself)
// and the new state is X[n .. n+K-2]. One thread per channel, coalesced over channels (x, y are
// token-major [n][C]). Its K-1 previous inputs live in registers and shift by one per token. Long
// sequences are split into token tiles (blockIdx.y): a tile reads its K-1 halo tokens from x, the first
// tile from the state. The thread of tile 0 is the only reader of the old state, so it alone writes the
// new one, after its own reads: no ordering between blocks is needed.
//
// Traffic on the 27B (C = 10240, K = 4), n tokens: x read n*40 KiB (+ (K-1)/tile halo, 64-token tiles),
// y written n*40 KiB, w 160 KiB, state 120 KiB read + written. ~12 FLOP per value (4 FMA + SiLU). Decode
// (n = 1): ~0.5 MB per layer, a few microseconds at most, latency-bound.
#pragma once

#include "../compat.cuh"

namespace pq::cuda {

constexpr int kConvBlock = 128;     // channels per block
constexpr int kConvTile = 64;       // tokens per block (>= K-1, so only tile 0 touches the state)
constexpr int kConvMaxKernel = 8;

__device__ __forceinline__ float conv_silu(float x) { return x / (1.0f + expf(-x)); }

template <int K>
__global__ void __launch_bounds__(kConvBlock)
    conv1d_silu_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ state,
                       float* __restrict__ y, int64_t C, int64_t n) {
    static_assert(K >= 1 && K <= kConvMaxKernel && kConvTile >= K - 1, "conv kernel size");
    const int64_t ch = (int64_t)blockIdx.x * kConvBlock + threadIdx.x;
    if (ch >= C) return;  // no barriers below
    const int64_t t0 = (int64_t)blockIdx.y * kConvTile;
    const int64_t t1 = t0 + kConvTile < n ? t0 + kConvTile : n;

    float wr[K];
#pragma unroll
    for (int j = 0; j < K; ++j) wr[j] = w[ch * K + j];

    // hist[0..K-2]: X[t .. t+K-2] before token t (X index t + K-1); hist[K-1]: token t itself.
    // old[]: the incoming state (tile 0 only), kept for the update when n < K-1.
    float hist[K], old[K];
#pragma unroll
    for (int j = 0; j < K - 1; ++j) {
        const int64_t xi = t0 + j;  // index into X
        old[j] = blockIdx.y == 0 ? state[ch * (K - 1) + j] : 0.0f;
        hist[j] = xi < K - 1 ? old[j] : x[(xi - (K - 1)) * C + ch];
    }
    for (int64_t t = t0; t < t1; ++t) {
        hist[K - 1] = x[t * C + ch];
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < K; ++j) s += hist[j] * wr[j];
        y[t * C + ch] = conv_silu(s);
#pragma unroll
        for (int j = 0; j < K - 1; ++j) hist[j] = hist[j + 1];
    }
    if (blockIdx.y == 0) {
#pragma unroll
        for (int j = 0; j < K - 1; ++j) {
            const int64_t xi = n + j;  // new state = X[n .. n+K-2]
            float v = 0.0f;
            if (xi >= K - 1) v = x[(xi - (K - 1)) * C + ch];
#pragma unroll
            for (int m = 0; m < K - 1; ++m)  // n < K-1: part of the old state survives (no dynamic indexing)
                if (xi == m) v = old[m];
            state[ch * (K - 1) + j] = v;
        }
    }
}

}  // namespace pq::cuda
