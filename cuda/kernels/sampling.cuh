// sampling.cuh: draw one token from a row of logits on the device (temperature, top-k, top-p, min-p).
//
// Semantics are pyqwen/sampling.py's Sampler (llama.cpp's chain order): top-k on the logits; top-p and
// min-p on the softmax of the kept logits at temperature 1; then a draw from softmax(l / T) over what is
// left. No sort is needed:
//   * top-k keeps key(l) >= the k-th largest key, found by bisection on the order-preserving 32-bit key
//     of the float logits (ties at the threshold are all kept; the CPU keeps an arbitrary subset);
//   * top-p keeps l >= tau, the largest threshold whose kept mass is still >= top_p -- the same set as
//     "the shortest prefix of the sorted candidates whose cumulative probability reaches top_p";
//   * min-p keeps l >= l_max + log(min_p);
//   * the draw is Gumbel-max: argmax over kept tokens of (l - l_max) / T + G, G = -log(-log(u)), which
//     samples exactly softmax(l / T) restricted to the kept set. u comes from a counter-based hash of
//     (seed, counter, token id), so a draw is reproducible and independent of thread scheduling.
//
// Three launches: (1) per-block maxima; (2) compaction of the candidates l >= l_max - 30 * max(1, T)
// into a short list (a token below that has probability < e^-30 relative to the maximum at T = 1 and at
// T, so the whole excluded tail weighs < 248k * e^-30 ~ 2e-8 -- below float precision of the sums);
// (3) one block does the selection and the draw over the list (or over the whole row when the list
// overflows its capacity, e.g. at very high temperature).
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"
#include "../plan/workspace_sizes.h"

namespace pq::cuda {

// kSampleBlock, kSampleMaxBlocks, kSampleCap: plan/workspace_sizes.h (the workspace is sized from them).
constexpr float kSampleCutoff = 30.0f;     // candidates: l >= l_max - kSampleCutoff * max(1, T)

struct SampleCand {
    float l;
    int32_t i;
};
static_assert(sizeof(SampleCand) == kSampleCandBytes, "workspace_sizes.h sizes the sampler workspace");

// Monotone map float -> uint32 (larger float, larger key); NaN maps to 0 (never kept).
__device__ __forceinline__ uint32_t sample_key(float f) {
    if (f != f) return 0u;
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t sample_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

// Uniform in (0, 1) from (seed, counter, token id).
__device__ __forceinline__ float sample_uniform(uint64_t seed, uint64_t counter, int32_t i) {
    uint64_t x = sample_mix64(seed + 0x9e3779b97f4a7c15ull);
    x = sample_mix64(x ^ (counter * 0xd1b54a32d192ed03ull));
    x = sample_mix64(x ^ ((uint64_t)(uint32_t)i * 0x8cb92ba72f3d8dd7ull + 0x632be59bd9b4e019ull));
    return ((float)(x >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

// (value, index) "better": larger value, then smaller index; false for a NaN value. (argmax.cuh has the
// same rule, but its kernels are defined in the header, so it is not included twice.)
__device__ __forceinline__ bool sample_better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// Block argmax of one (v, i) per thread; every thread gets the winner.
template <int BLOCK>
__device__ __forceinline__ void sample_block_argmax(float& v, int& i, float* sv, int* si) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(kFullMask, v, off);
        const int oi = __shfl_xor_sync(kFullMask, i, off);
        if (sample_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    v = lane < BLOCK / 32 ? sv[lane] : -INFINITY;
    i = lane < BLOCK / 32 ? si[lane] : INT_MAX;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(kFullMask, v, off);
        const int oi = __shfl_xor_sync(kFullMask, i, off);
        if (sample_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    __syncthreads();
}

// Sum over a block of BLOCK threads; every thread gets the total (integer or float).
template <int BLOCK, class T>
__device__ __forceinline__ T sample_block_sum(T v, T* scratch) {
    v = warp_sum(v);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < BLOCK / 32 ? scratch[lane] : T(0);
    v = warp_sum(v);
    __syncthreads();
    return v;
}

template <int BLOCK>
__device__ __forceinline__ float sample_block_max(float v, float* scratch) {
    v = warp_max(v);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < BLOCK / 32 ? scratch[lane] : -INFINITY;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// (1) partial[b] = max of block b's slice (NaN ignored); block 0 also clears the candidate count.
__global__ void __launch_bounds__(kSampleBlock)
    sample_max_kernel(const float* __restrict__ x, int64_t n, float* __restrict__ partial, int32_t* __restrict__ count) {
    __shared__ float scratch[32];
    float m = -INFINITY;
    for (int64_t j = (int64_t)blockIdx.x * kSampleBlock + threadIdx.x; j < n; j += (int64_t)gridDim.x * kSampleBlock)
        m = fmaxf(m, x[j]);
    m = sample_block_max<kSampleBlock>(m, scratch);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = m;
        if (blockIdx.x == 0) *count = 0;
    }
}

// (2) Appends every l >= max - cutoff to cand (order arbitrary; at most cap stored, count keeps counting).
__global__ void __launch_bounds__(kSampleBlock)
    sample_compact_kernel(const float* __restrict__ x, int64_t n, const float* __restrict__ partial, int nparts,
                          float cutoff, SampleCand* __restrict__ cand, int32_t* __restrict__ count, int cap) {
    __shared__ float scratch[32];
    float m = threadIdx.x < nparts ? partial[threadIdx.x] : -INFINITY;
    m = sample_block_max<kSampleBlock>(m, scratch);
    const float thr = m - cutoff;
    for (int64_t j = (int64_t)blockIdx.x * kSampleBlock + threadIdx.x; j < n; j += (int64_t)gridDim.x * kSampleBlock) {
        const float l = x[j];
        if (l >= thr) {
            const int slot = atomicAdd(count, 1);
            if (slot < cap) cand[slot] = SampleCand{l, (int32_t)j};
        }
    }
}

// (3) One block: selection + Gumbel-max draw. Candidates from the list, or (list overflowed) the row.
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    sample_select_kernel(const float* __restrict__ x, int64_t n, const float* __restrict__ partial, int nparts,
                         const SampleCand* __restrict__ cand, const int32_t* __restrict__ count, int cap,
                         float temperature, int top_k, float top_p, float min_p, uint64_t seed, uint64_t counter,
                         int32_t* __restrict__ out) {
    __shared__ float fscratch[32];
    __shared__ int iscratch[32];
    const int nc_list = *count;
    const bool use_list = nc_list <= cap;
    const int64_t nc = use_list ? nc_list : n;
    auto get = [&](int64_t j, float& l, int32_t& i) {
        if (use_list) {
            const SampleCand c = cand[j];
            l = c.l;
            i = c.i;
        } else {
            l = x[j];
            i = (int32_t)j;
        }
    };
    float m = -INFINITY;
    for (int j = threadIdx.x; j < nparts; j += BLOCK) m = fmaxf(m, partial[j]);
    m = sample_block_max<BLOCK>(m, fscratch);

    // top-k: the largest key threshold keeping at least k candidates.
    uint32_t lo = 1u;  // key 0 is NaN
    if (top_k > 0 && (int64_t)top_k < nc) {
        uint32_t hi = 0xffffffffu;
        while (lo < hi) {
            const uint32_t mid = lo + (uint32_t)(((uint64_t)hi - lo + 1) / 2);
            int c = 0;
            for (int64_t j = threadIdx.x; j < nc; j += BLOCK) {
                float l;
                int32_t i;
                get(j, l, i);
                c += sample_key(l) >= mid;
            }
            c = sample_block_sum<BLOCK>(c, iscratch);
            if (c >= top_k) lo = mid;
            else hi = mid - 1;
        }
    }
    uint32_t keep_key = lo;

    // top-p over the top-k set at temperature 1.
    if (top_p < 1.0f) {
        float z = 0.0f;
        for (int64_t j = threadIdx.x; j < nc; j += BLOCK) {
            float l;
            int32_t i;
            get(j, l, i);
            if (sample_key(l) >= keep_key) z += expf(l - m);
        }
        z = sample_block_sum<BLOCK>(z, fscratch);
        const float target = top_p * z;
        uint32_t plo = keep_key, phi = sample_key(m);
        while (plo < phi) {
            const uint32_t mid = plo + (uint32_t)(((uint64_t)phi - plo + 1) / 2);
            float s = 0.0f;
            for (int64_t j = threadIdx.x; j < nc; j += BLOCK) {
                float l;
                int32_t i;
                get(j, l, i);
                if (sample_key(l) >= mid) s += expf(l - m);
            }
            s = sample_block_sum<BLOCK>(s, fscratch);
            if (s >= target) plo = mid;
            else phi = mid - 1;
        }
        keep_key = plo;
    }
    // min-p: p >= min_p * p_max  <=>  l >= m + log(min_p).
    float lmin = -INFINITY;
    if (min_p > 0.0f) lmin = m + logf(min_p);

    // Gumbel-max draw.
    const float inv_t = 1.0f / temperature;
    float best = -INFINITY;
    int best_i = INT_MAX;
    for (int64_t j = threadIdx.x; j < nc; j += BLOCK) {
        float l;
        int32_t i;
        get(j, l, i);
        if (sample_key(l) < keep_key || !(l >= lmin)) continue;
        const float u = sample_uniform(seed, counter, i);
        const float score = (l - m) * inv_t - logf(-logf(u));
        if (sample_better(score, i, best, best_i)) {
            best = score;
            best_i = i;
        }
    }
    sample_block_argmax<BLOCK>(best, best_i, fscratch, iscratch);
    if (threadIdx.x == 0) out[0] = best_i == INT_MAX ? -1 : best_i;
}

}  // namespace pq::cuda
