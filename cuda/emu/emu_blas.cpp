// emu_blas.cpp: the emulator's gemm_f16 (cuda/blas.h) -- a plain host GEMM standing in for cuBLAS.
//
// Accumulates in float in k order; cuBLAS sums in another order (and may use split-k), so results agree
// to rounding only -- compare with a tolerance. Queued on the stream like cuBLAS's kernels (it reads what
// earlier work on the stream wrote, when the stream gets to it).
#include <vector>

#include "../blas.h"
#include "emu_qualifiers.h"  // formats.h marks its functions __host__ __device__ under PQ_CUDA_EMU
#include "formats.h"

namespace pq::cuda {

namespace {
void gemm_now(const uint16_t* W, const uint16_t* X, float* Y, int n_out, int n_tok, int k, int ldw, int ldx,
              int ldy, bool accumulate) {
    std::vector<float> xr(k);
    for (int t = 0; t < n_tok; ++t) {
        for (int i = 0; i < k; ++i) xr[i] = pq::fp16_to_fp32(X[(size_t)t * ldx + i]);
        for (int o = 0; o < n_out; ++o) {
            const uint16_t* w = W + (size_t)o * ldw;
            float acc = 0.0f;
            for (int i = 0; i < k; ++i) acc += pq::fp16_to_fp32(w[i]) * xr[i];
            float& y = Y[(size_t)t * ldy + o];
            y = accumulate ? y + acc : acc;
        }
    }
}
}  // namespace

cudaError_t gemm_f16(const uint16_t* W, const uint16_t* X, float* Y, int n_out, int n_tok, int k, int ldw,
                     int ldx, int ldy, cudaStream_t stream, bool accumulate) {
    if (n_out < 0 || n_tok < 0 || k < 0 || ldw < k || ldx < k || ldy < n_out) return cudaErrorInvalidValue;
    pq_emu::enqueue(stream, [=]() {
        pq_emu::count_kernel();
        gemm_now(W, X, Y, n_out, n_tok, k, ldw, ldx, ldy, accumulate);
    }, "cublas_gemm");
    return cudaSuccess;
}

}  // namespace pq::cuda

namespace pq::cuda {
bool blas_available() { return true; }
cudaError_t blas_init() { return cudaSuccess; }  // the host GEMM needs no handle or workspace
}  // namespace pq::cuda
