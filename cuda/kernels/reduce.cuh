// reduce.cuh: warp and block reductions shared by the kernels.
#pragma once

#include "../compat.cuh"

namespace pq::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
    return v;
}

// Sum over a 1-D block of BLOCK threads (a multiple of 32); every thread gets the total. `scratch` is
// __shared__ storage for 32 floats owned by the caller. Ends with a barrier so the caller may reuse it.
template <int BLOCK>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "block of whole warps");
    v = warp_sum(v);
    if constexpr (BLOCK > 32) {
        const int lane = threadIdx.x % 32;
        const int warp = threadIdx.x / 32;
        if (lane == 0) scratch[warp] = v;
        __syncthreads();
        v = lane < BLOCK / 32 ? scratch[lane] : 0.0f;
        v = warp_sum(v);
        __syncthreads();
    }
    return v;
}

}  // namespace pq::cuda
