// norm_q8.cuh: the decode path's layer entry in one kernel -- residual add, RMSNorm and the Q8_1
// activations every matmul of the normed row reads (issue 10: one quantization per distinct input, not
// one per matmul; the residual add folded into the next norm).
//
//   x += add (add may be null: the first layer);  y = rms_norm(x) * w;  q8 = Q8_1(y) (mv::QAct layout)
//
// Bit-identical with add_f32_kernel + rms_norm_f32_kernel<BLOCK> + quantize_act_kernel: the same sums in
// the same order (the launcher picks rms_norm_f32's BLOCK for the row length) and q8_act_store, the
// quantizer's one home. One block per row; K % 32 == 0, so every warp covers 32 consecutive values.
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"

namespace pq::cuda {

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    add_rms_norm_q8_kernel(float* __restrict__ x, const float* __restrict__ add, const float* __restrict__ w,
                           float* __restrict__ y, int8_t* __restrict__ qs, float2* __restrict__ ds, int K, float eps) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    const int64_t row = blockIdx.x;
    x += row * K;
    y += row * K;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < K; i += BLOCK) {
        float v = x[i];
        if (add) {
            v = v + add[row * K + i];
            x[i] = v;
        }
        ss += v * v;
    }
    __shared__ float scratch[32];
    ss = block_sum<BLOCK>(ss, scratch);
    const float scale = rsqrtf(ss / (float)K + eps);
    for (int i = threadIdx.x; i < K; i += BLOCK) {  // whole warps per trip: K % 32 == 0
        const float v = w ? (x[i] * scale) * w[i] : x[i] * scale;
        y[i] = v;
        if (qs) q8_act_store(v, i, qs + row * K, ds + row * (K / 32));
    }
}

}  // namespace pq::cuda
