// blas_cublas.cu: gemm_f16 (cuda/blas.h) on cuBLAS. Built with PQ_HAVE_CUBLAS=1 when CMake finds
// CUDA::cublas; otherwise the entry point reports cudaErrorNotSupported so the module still loads.
// The emulator provides its own gemm_f16 (emu/emu_blas.cpp), so this file is empty under PQ_CUDA_EMU.
#include "../blas.h"

#if !defined(PQ_CUDA_EMU)

#if PQ_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace pq::cuda {

#if PQ_HAVE_CUBLAS
namespace {
// One handle per host thread: cuBLAS handles are not safe to share between threads.
cublasHandle_t handle() {
    thread_local cublasHandle_t h = nullptr;
    if (!h && cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) h = nullptr;
    return h;
}
}  // namespace

cudaError_t gemm_f16(const uint16_t* W, const uint16_t* X, float* Y, int n_out, int n_tok, int k, int ldw,
                     int ldx, int ldy, cudaStream_t stream) {
    cublasHandle_t h = handle();
    if (!h) return cudaErrorInitializationError;
    if (cublasSetStream(h, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorInvalidResourceHandle;
    // cuBLAS is column-major: row-major Y[n_tok][n_out] is column-major Y^T (n_out x n_tok), and
    // Y^T = W * X^T, where row-major W[n_out][k] read column-major is W^T (hence OP_T) and row-major
    // X[n_tok][k] read column-major is X^T (OP_N).
    const float alpha = 1.0f, beta = 0.0f;
    const cublasStatus_t st =
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, n_tok, k, &alpha, W, CUDA_R_16F, ldw, X, CUDA_R_16F, ldx,
                     &beta, Y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorLaunchFailure;
}
#else
cudaError_t gemm_f16(const uint16_t*, const uint16_t*, float*, int, int, int, int, int, int, cudaStream_t) {
    return cudaErrorNotSupported;
}
#endif

}  // namespace pq::cuda

#endif  // !PQ_CUDA_EMU
