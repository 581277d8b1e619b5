// elementwise.cuh: SwiGLU and residual add -- memory-bound element-wise kernels.
#pragma once

#include "../compat.cuh"

namespace pq::cuda {

constexpr int kElementwiseBlock = 256;

// y = silu(g) * u with silu(v) = v / (1 + exp(-v)) (ggml_silu_f32). Rows are strided so that g and u
// can be the two halves of one fused gate|up projection. Grid: x over columns, y over rows (looping when
// there are more rows than gridDim.y allows).
__global__ void __launch_bounds__(kElementwiseBlock)
    swiglu_f32_kernel(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y, int ncols,
                      int nrows, int64_t sg, int64_t su, int64_t sy) {
    const int col = blockIdx.x * kElementwiseBlock + threadIdx.x;
    if (col >= ncols) return;
    for (int64_t row = blockIdx.y; row < nrows; row += gridDim.y) {
        const float gv = g[row * sg + col];
        y[row * sy + col] = gv / (1.0f + expf(-gv)) * u[row * su + col];
    }
}

// y = a + b over n contiguous values (y may alias a or b: the residual stream is updated in place).
__global__ void __launch_bounds__(kElementwiseBlock)
    add_f32_kernel(const float* a, const float* b, float* y, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * kElementwiseBlock;
    for (int64_t i = (int64_t)blockIdx.x * kElementwiseBlock + threadIdx.x; i < n; i += stride) y[i] = a[i] + b[i];
}

}  // namespace pq::cuda
