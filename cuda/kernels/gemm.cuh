// gemm.cuh: device helpers of the prefill matmul (launch/gemm.cu): activations to fp16 for cuBLAS.
// The weight tiles are dequantized by get_rows.cuh's dequant_rows_kernel<T, true>.
#pragma once

#include "../compat.cuh"

namespace pq::cuda {

constexpr int kToF16Threads = 256;

// y[i] = fp16(x[i]) (round to nearest even, as numpy), grid-stride over n values.
__global__ void __launch_bounds__(kToF16Threads)
    f32_to_f16_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * kToF16Threads;
    for (int64_t i = (int64_t)blockIdx.x * kToF16Threads + threadIdx.x; i < n; i += stride)
        y[i] = pq::fp32_to_fp16(x[i]);
}

}  // namespace pq::cuda
