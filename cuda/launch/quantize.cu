// quantize.cu: launch code for the activation quantizer (f32 -> q8_1).
#include "../compat.cuh"
#include "../kernels/quantize_q8_1.cuh"
#include "../ops.h"

namespace pq::cuda {

static_assert(sizeof(pq::block_q8_1) == kQ8_1BlockBytes, "ops.h and formats.h disagree on block_q8_1");

cudaError_t quantize_q8_1(const float* x, void* y, int ncols, int nrows, int64_t sx, cudaStream_t stream) {
    if (nrows == 0 || ncols == 0) return cudaSuccess;
    if (nrows < 0 || ncols < 0 || nrows > 65535) return cudaErrorInvalidValue;
    const int nblocks_row = (ncols + QK8_0 - 1) / QK8_0;
    const dim3 grid((nblocks_row * QK8_0 + kQuantizeBlock - 1) / kQuantizeBlock, nrows);
    PQ_LAUNCH(quantize_q8_1_kernel, grid, kQuantizeBlock, 0, stream, x, static_cast<pq::block_q8_1*>(y), ncols, sx,
              nblocks_row);
    return cudaGetLastError();
}

}  // namespace pq::cuda
