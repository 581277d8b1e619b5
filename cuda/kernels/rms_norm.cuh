// rms_norm.cuh: y = x / sqrt(mean(x^2) + eps) * w, one block per row.
//
// Rounding follows ggml's order -- (x * scale) * w -- so results stay within a few ulp of the CPU
// reference; the sum of squares is a float tree reduction (ggml's CPU code accumulates in double).
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"

namespace pq::cuda {

// Rows may be strided (sx, sy in elements) so per-head norms can run on views; w may be null (no weight).
template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    rms_norm_f32_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, int ncols,
                        int64_t sx, int64_t sy, float eps) {
    const int64_t row = blockIdx.x;
    x += row * sx;
    y += row * sy;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < ncols; i += BLOCK) {
        const float v = x[i];
        ss += v * v;
    }
    __shared__ float scratch[32];
    ss = block_sum<BLOCK>(ss, scratch);
    const float scale = rsqrtf(ss / (float)ncols + eps);
    for (int i = threadIdx.x; i < ncols; i += BLOCK) y[i] = w ? (x[i] * scale) * w[i] : x[i] * scale;
}

}  // namespace pq::cuda
