// blas_cublas.cu: gemm_f16 / blas_init (cuda/blas.h) on cuBLAS. Built with PQ_HAVE_CUBLAS=1 when CMake finds
// CUDA::cublas; otherwise the entry points report cudaErrorNotSupported so the module still loads.
// The emulator provides its own (emu/emu_blas.cpp), so this file is empty under PQ_CUDA_EMU.
#include "../blas.h"

#if !defined(PQ_CUDA_EMU)

#include <mutex>

#include "../plan/workspace_sizes.h"

#if PQ_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace pq::cuda {

#if PQ_HAVE_CUBLAS
namespace {
// One handle for the process, made by blas_init (or the first GEMM): a handle per host thread would
// allocate a workspace per thread behind the memory plan. Calls are serialised by the mutex (the handle's
// stream is state), which costs nothing: the model runs one forward at a time.
std::mutex g_mu;
cublasHandle_t g_handle = nullptr;
void* g_workspace = nullptr;

cudaError_t init_locked() {
    if (g_handle) return cudaSuccess;
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return cudaErrorInitializationError;
    void* ws = nullptr;
    cudaError_t e = cudaMalloc(&ws, kCublasWorkspaceBytes);
    if (e == cudaSuccess && cublasSetWorkspace(h, ws, kCublasWorkspaceBytes) != CUBLAS_STATUS_SUCCESS)
        e = cudaErrorInitializationError;
    if (e != cudaSuccess) {
        if (ws) cudaFree(ws);
        cublasDestroy(h);
        return e;
    }
    g_handle = h;
    g_workspace = ws;
    return cudaSuccess;
}

cudaError_t gemm_locked(const uint16_t* W, const uint16_t* X, float* Y, int n_out, int n_tok, int k, int ldw,
                        int ldx, int ldy, cudaStream_t stream, bool accumulate) {
    if (cublasSetStream(g_handle, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorInvalidResourceHandle;
    // cuBLAS is column-major: row-major Y[n_tok][n_out] is column-major Y^T (n_out x n_tok), and
    // Y^T = W * X^T, where row-major W[n_out][k] read column-major is W^T (hence OP_T) and row-major
    // X[n_tok][k] read column-major is X^T (OP_N).
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cublasStatus_t st =
        cublasGemmEx(g_handle, CUBLAS_OP_T, CUBLAS_OP_N, n_out, n_tok, k, &alpha, W, CUDA_R_16F, ldw, X, CUDA_R_16F,
                     ldx, &beta, Y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorLaunchFailure;
}
}  // namespace

bool blas_available() { return true; }

cudaError_t blas_init() {
    std::lock_guard<std::mutex> lock(g_mu);
    cudaError_t e = init_locked();
    if (e != cudaSuccess) return e;
    // Warm-up: one 64 x 32 x 64 GEMM loads cuBLAS's kernels (lazy module loading) now, not at the first
    // prefill after the weights filled the device.
    void* buf = nullptr;
    const size_t n = 64 * 64;
    e = cudaMalloc(&buf, n * 2 * 2 + n * 4);
    if (e != cudaSuccess) return e;
    auto* w = static_cast<uint16_t*>(buf);
    e = cudaMemset(buf, 0, n * 2 * 2);
    if (e == cudaSuccess) e = gemm_locked(w, w + n, reinterpret_cast<float*>(w + 2 * n), 64, 32, 64, 64, 64, 64, nullptr, false);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    cudaFree(buf);
    return e;
}

cudaError_t gemm_f16(const uint16_t* W, const uint16_t* X, float* Y, int n_out, int n_tok, int k, int ldw,
                     int ldx, int ldy, cudaStream_t stream, bool accumulate) {
    std::lock_guard<std::mutex> lock(g_mu);
    const cudaError_t e = init_locked();
    if (e != cudaSuccess) return e;
    return gemm_locked(W, X, Y, n_out, n_tok, k, ldw, ldx, ldy, stream, accumulate);
}
#else
bool blas_available() { return false; }
cudaError_t blas_init() { return cudaErrorNotSupported; }
cudaError_t gemm_f16(const uint16_t*, const uint16_t*, float*, int, int, int, int, int, int, cudaStream_t, bool) {
    return cudaErrorNotSupported;
}
#endif

}  // namespace pq::cuda

#endif  // !PQ_CUDA_EMU
