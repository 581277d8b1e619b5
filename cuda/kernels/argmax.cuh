// argmax.cuh: index of the largest value of each row (greedy sampling over the vocabulary).
//
// Two passes: argmax_partial_kernel splits a row over gridDim.x blocks and each block reduces its share
// to one (value, index) pair; argmax_final_kernel reduces a row's pairs. When a row fits in one block the
// first pass writes the answer directly. Ties go to the smallest index (as numpy.argmax); NaNs are
// ignored; a row with no non-NaN value gives -1.
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"
#include "../plan/workspace_sizes.h"

namespace pq::cuda {

// kArgmaxBlock, argmax_blocks: plan/workspace_sizes.h (the workspace is sized from them).

struct ArgmaxPair {
    float v;
    int i;  // INT_MAX: empty
};
static_assert(sizeof(ArgmaxPair) == kArgmaxPairBytes, "workspace_sizes.h sizes the argmax workspace");

__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);  // false for NaN v
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(kFullMask, v, off);
        const int oi = __shfl_xor_sync(kFullMask, i, off);
        if (argmax_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// Reduces one (v, i) per thread to thread 0's (v, i).
template <int BLOCK>
__device__ __forceinline__ void block_argmax(float& v, int& i) {
    __shared__ float sv[32];
    __shared__ int si[32];
    warp_argmax(v, i);
    if constexpr (BLOCK > 32) {
        const int lane = threadIdx.x % 32;
        const int warp = threadIdx.x / 32;
        if (lane == 0) {
            sv[warp] = v;
            si[warp] = i;
        }
        __syncthreads();
        if (warp == 0) {
            v = lane < BLOCK / 32 ? sv[lane] : -INFINITY;
            i = lane < BLOCK / 32 ? si[lane] : INT_MAX;
            warp_argmax(v, i);
        }
    }
}

// Grid (nblk, nrows). With out != null (nblk == 1) writes the final index, else the block's pair.
__global__ void __launch_bounds__(kArgmaxBlock)
    argmax_partial_kernel(const float* __restrict__ x, int64_t n, int64_t sx, ArgmaxPair* __restrict__ partial,
                          int32_t* __restrict__ out) {
    const int64_t row = blockIdx.y;
    const float* xr = x + row * sx;
    float v = -INFINITY;
    int i = INT_MAX;
    const int64_t stride = (int64_t)gridDim.x * kArgmaxBlock;
    for (int64_t j = (int64_t)blockIdx.x * kArgmaxBlock + threadIdx.x; j < n; j += stride) {
        const float xv = xr[j];
        if (argmax_better(xv, (int)j, v, i)) {
            v = xv;
            i = (int)j;
        }
    }
    block_argmax<kArgmaxBlock>(v, i);
    if (threadIdx.x != 0) return;
    if (out) out[row] = i == INT_MAX ? -1 : i;
    else partial[row * gridDim.x + blockIdx.x] = ArgmaxPair{v, i};
}

// Grid (nrows): reduces the nblk pairs of each row.
__global__ void __launch_bounds__(kArgmaxBlock)
    argmax_final_kernel(const ArgmaxPair* __restrict__ partial, int nblk, int32_t* __restrict__ out) {
    const int64_t row = blockIdx.x;
    float v = -INFINITY;
    int i = INT_MAX;
    for (int j = threadIdx.x; j < nblk; j += kArgmaxBlock) {
        const ArgmaxPair p = partial[row * nblk + j];
        if (argmax_better(p.v, p.i, v, i)) {
            v = p.v;
            i = p.i;
        }
    }
    block_argmax<kArgmaxBlock>(v, i);
    if (threadIdx.x == 0) out[row] = i == INT_MAX ? -1 : i;
}

}  // namespace pq::cuda
