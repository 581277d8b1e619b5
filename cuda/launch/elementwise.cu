// elementwise.cu: launch code for SwiGLU and residual add.
#include "../compat.cuh"
#include "../kernels/elementwise.cuh"
#include "../ops.h"

namespace pq::cuda {

cudaError_t swiglu_f32(const float* g, const float* u, float* y, int ncols, int nrows, int64_t sg, int64_t su,
                       int64_t sy, cudaStream_t stream) {
    if (nrows == 0 || ncols == 0) return cudaSuccess;
    if (nrows < 0 || ncols < 0) return cudaErrorInvalidValue;
    const dim3 grid((ncols + kElementwiseBlock - 1) / kElementwiseBlock, nrows < 65535 ? nrows : 65535);
    PQ_LAUNCH(swiglu_f32_kernel, grid, kElementwiseBlock, 0, stream, g, u, y, ncols, nrows, sg, su, sy);
    return cudaGetLastError();
}

cudaError_t add_f32(const float* a, const float* b, float* y, int64_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (n < 0) return cudaErrorInvalidValue;
    // Enough blocks to fill any current GPU; the kernel loops beyond that.
    int64_t blocks = (n + kElementwiseBlock - 1) / kElementwiseBlock;
    if (blocks > 4096) blocks = 4096;
    PQ_LAUNCH(add_f32_kernel, (unsigned)blocks, kElementwiseBlock, 0, stream, a, b, y, n);
    return cudaGetLastError();
}

}  // namespace pq::cuda
