// norm_q8.cuh: the decode path's layer entry in one kernel -- residual add, RMSNorm and the Q8_1
// activations every matmul of the normed row reads (issue 10: one quantization per distinct input, not
// one per matmul; the residual add folded into the next norm).
//
//   x += add (add may be null: the first layer);  y = rms_norm(x) * w;  q8 = Q8_1(y) (mv::QAct layout)
//
// Bit-identical with add_f32_kernel + rms_norm_f32_kernel<BLOCK> + quantize_act_kernel: the same sums in
// the same order (the launcher picks rms_norm_f32's BLOCK for the row length: norm_q8_block) and
// q8_act_store, the quantizer's one home. One block per row; K % 32 == 0, so every warp covers 32
// consecutive values.
//
// add_rms_norm_q8_row is that arithmetic for one row by a block of any NT threads: the kernel below runs
// it with NT == BLOCK, and the decode matvec (matvec.cuh) runs it in its last CTA on its own output --
// the next layer entry without a launch of its own (issue 10: fewer latency-bound nodes per token).
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"

namespace pq::cuda {

// rms_norm_f32's block size for a row of K values (norm.cu): the reduction tree the norm kernels share.
__host__ __device__ constexpr int norm_q8_block(int64_t K) { return K < 1024 ? 32 : 256; }

// One row: x += add (add may be null), y = rms_norm(x) * w (w may be null), Q8_1 of y into qs/ds (may be
// null), with add_rms_norm_q8_kernel<BLOCK>'s sums in its order, by a 1-D block of NT threads (whole
// warps; every thread of the block calls it). Thread j plays the kernel's threads j, j + NT, ... < BLOCK
// (its virtual threads): each keeps the kernel thread's partial sum, the virtual warps' sums go through
// `scratch` (32 floats of __shared__) and one warp tree over them as in block_sum<BLOCK>, so the bits do not
// depend on NT. AddPtr: const float* or const volatile float* (an add written by other blocks of the grid).
template <int BLOCK, int NT, class AddPtr>
__device__ __forceinline__ void add_rms_norm_q8_row(float* __restrict__ x, AddPtr add, const float* __restrict__ w,
                                                    float* __restrict__ y, int8_t* __restrict__ qs,
                                                    float2* __restrict__ ds, int K, float eps, float* scratch) {
    static_assert(BLOCK % 32 == 0 && NT % 32 == 0 && BLOCK <= 1024, "whole warps");
    static_assert(BLOCK <= NT || BLOCK % NT == 0, "virtual threads: BLOCK a multiple of NT, or at most NT");
    constexpr int V = BLOCK > NT ? BLOCK / NT : 1;  // virtual threads per thread
    const int tid = threadIdx.x, lane = tid % 32;
    float ss[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
        ss[j] = 0.0f;
        const int vt = tid + j * NT;
        if (vt >= BLOCK) continue;
        for (int i = vt; i < K; i += BLOCK) {
            float v = x[i];
            if (add) {
                v = v + add[i];
                x[i] = v;
            }
            ss[j] += v * v;
        }
    }
    float tot;
    if constexpr (BLOCK == 32 && NT == 32) {
        tot = warp_sum(ss[0]);  // block_sum<32>
    } else {
        // block_sum<BLOCK>: each virtual warp's sum, then one tree over them (lanes past BLOCK / 32 add 0,
        // which leaves every sum as it is: BLOCK == 32 gives the single warp's sum unchanged)
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const int vt = tid + j * NT;
            if (vt - lane >= BLOCK) continue;  // uniform per warp
            const float s = warp_sum(ss[j]);
            if (lane == 0) scratch[vt / 32] = s;
        }
        __syncthreads();
        tot = warp_sum(lane < BLOCK / 32 ? scratch[lane] : 0.0f);
        __syncthreads();
    }
    const float scale = rsqrtf(tot / (float)K + eps);
    for (int i = tid; i < K; i += NT) {  // whole warps per trip: K % 32 == 0
        const float v = w ? (x[i] * scale) * w[i] : x[i] * scale;
        y[i] = v;
        if (qs) q8_act_store(v, i, qs, ds);
    }
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    add_rms_norm_q8_kernel(float* __restrict__ x, const float* __restrict__ add, const float* __restrict__ w,
                           float* __restrict__ y, int8_t* __restrict__ qs, float2* __restrict__ ds, int K, float eps) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    const int64_t row = blockIdx.x;
    __shared__ float scratch[32];
    add_rms_norm_q8_row<BLOCK, BLOCK>(x + row * K, add ? add + row * K : nullptr, w, y + row * K,
                                      qs ? qs + row * K : nullptr, qs ? ds + row * (K / 32) : nullptr, K, eps, scratch);
}

}  // namespace pq::cuda
