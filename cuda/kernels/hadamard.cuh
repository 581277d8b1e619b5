// hadamard.cuh: the KV cache's Hadamard rotation (csrc/common/model_spec.h kv_rotation_block), the one
// home of its arithmetic on the device.
//
// A quantized K (V) cache stores each head's row times the orthonormal Sylvester Hadamard matrix of `block`
// values (H[i][j] = (-1)^popcount(i & j) / sqrt(block)), block by block; q is rotated with k (scores are
// unchanged: H is orthonormal) and the attention output rotated back before the sigmoid gate (H H = I).
// The transform is csrc/ops.cpp hadamard()'s fast Walsh-Hadamard transform, stage for stage: stride
// h = 1, 2, ..., block/2, each butterfly (a, c) -> (a + c, a - c) in float, then every value times
// 1/sqrt(block). Every value therefore sees the CPU's very float operations in the very order, whichever
// thread does a butterfly: a row rotated here is bit-identical with the CPU's (tests/cuda/test_kv_rotation_emu.py).
#pragma once

#include "../compat.cuh"

namespace pq::cuda {

// A valid rotation block for head rows of D values: 0 (not rotated) or a power of two >= 2 dividing D.
__host__ __device__ inline bool hadamard_block_ok(int block, int D) {
    return block == 0 || (block >= 2 && (block & (block - 1)) == 0 && D > 0 && D % block == 0);
}

// x[0, n) (n a multiple of block: consecutive rows of whole blocks) rotated block by block, in place. x is
// memory every cooperating thread sees (shared memory; a warp's own global row also works): threads
// tid = 0..nthreads-1 share the butterflies; sync() orders their accesses between stages (__syncthreads
// for a block, __syncwarp for one warp) and is called by every thread the same number of times, also
// after the last stage (x is then final for all of them).
template <class Sync>
__device__ __forceinline__ void hadamard_rotate(float* x, int n, int block, int tid, int nthreads, Sync sync) {
    for (int h = 1; h < block; h *= 2) {
        for (int p = tid; p < n / 2; p += nthreads) {  // butterfly p: pair (i, i + h) of its 2h-group
            const int i = (p / h) * 2 * h + p % h;
            const float a = x[i], c = x[i + h];
            x[i] = a + c;
            x[i + h] = a - c;
        }
        sync();
    }
    // csrc's scale: 1.0f / std::sqrt((float)block), both IEEE-rounded (exact for blocks 4^k: 64, 256)
    const float scale = __fdiv_rn(1.0f, __fsqrt_rn((float)block));
    for (int i = tid; i < n; i += nthreads) x[i] *= scale;
    sync();
}

struct BlockSync {
    __device__ __forceinline__ void operator()() const { __syncthreads(); }
};
struct WarpSync {
    __device__ __forceinline__ void operator()() const { __syncwarp(); }
};

// Test kernel (launch/attention.cu hadamard_probe): rows [rows][D] rotated in place, one row per block of
// D threads (BlockSync) or of one warp (WarpSync), through shared memory as the attention kernels do.
template <bool kWarp>
__global__ void __launch_bounds__(256) hadamard_probe_kernel(float* __restrict__ x, int D, int block) {
    __shared__ float row[256];
    float* xr = x + (int64_t)blockIdx.x * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) row[i] = xr[i];
    if constexpr (kWarp) {
        __syncwarp();
        hadamard_rotate(row, D, block, threadIdx.x, 32, WarpSync{});
    } else {
        __syncthreads();
        hadamard_rotate(row, D, block, threadIdx.x, blockDim.x, BlockSync{});
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) xr[i] = row[i];
}

}  // namespace pq::cuda
