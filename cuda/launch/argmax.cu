// argmax.cu: launch code for the row argmax.
#include "../compat.cuh"
#include "../kernels/argmax.cuh"
#include "../ops.h"

namespace pq::cuda {

// argmax_blocks / argmax_workspace_bytes: plan/workspace_sizes.h.

cudaError_t argmax_f32(const float* x, int64_t n, int nrows, int64_t sx, int32_t* out, void* workspace,
                       cudaStream_t stream) {
    if (nrows == 0) return cudaSuccess;
    if (nrows < 0 || nrows > 65535 || n < 0 || n > INT_MAX) return cudaErrorInvalidValue;
    const int nblk = argmax_blocks(n);
    auto* partial = static_cast<ArgmaxPair*>(workspace);
    if (nblk == 1) {
        PQ_LAUNCH(argmax_partial_kernel, dim3(1, nrows), kArgmaxBlock, 0, stream, x, n, sx, partial, out);
        return cudaGetLastError();
    }
    if (!workspace) return cudaErrorInvalidValue;
    PQ_LAUNCH(argmax_partial_kernel, dim3(nblk, nrows), kArgmaxBlock, 0, stream, x, n, sx, partial,
              (int32_t*)nullptr);
    PQ_LAUNCH(argmax_final_kernel, nrows, kArgmaxBlock, 0, stream, partial, nblk, out);
    return cudaGetLastError();
}

}  // namespace pq::cuda
