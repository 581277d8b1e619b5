// norm.cu: launch code for RMSNorm.
#include "../compat.cuh"
#include "../kernels/rms_norm.cuh"
#include "../ops.h"

namespace pq::cuda {

cudaError_t rms_norm_f32(const float* x, const float* w, float* y, int ncols, int nrows, int64_t sx, int64_t sy,
                         float eps, cudaStream_t stream) {
    if (nrows == 0 || ncols == 0) return cudaSuccess;
    if (nrows < 0 || ncols < 0) return cudaErrorInvalidValue;
    // Short rows (per-head norms) get one warp each: no shared memory or barrier on that path.
    if (ncols < 1024) PQ_LAUNCH(rms_norm_f32_kernel<32>, nrows, 32, 0, stream, x, w, y, ncols, sx, sy, eps);
    else PQ_LAUNCH(rms_norm_f32_kernel<256>, nrows, 256, 0, stream, x, w, y, ncols, sx, sy, eps);
    return cudaGetLastError();
}

}  // namespace pq::cuda
