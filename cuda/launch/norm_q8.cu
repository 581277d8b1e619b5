// norm_q8.cu: launch code of the fused residual add + RMSNorm + Q8_1 activations (kernels/norm_q8.cuh).
#include "../compat.cuh"
#include "../kernels/norm_q8.cuh"
#include "../ops_matvec.h"

namespace pq::cuda {

cudaError_t add_rms_norm_q8(float* x, const float* add, const float* w, float* y, void* q8, int64_t K,
                            int64_t n_tok, float eps, cudaStream_t stream) {
    if (n_tok == 0) return cudaSuccess;
    if (K <= 0 || K % 32 != 0 || K > INT_MAX || n_tok < 0 || n_tok > INT_MAX || !x || !y) return cudaErrorInvalidValue;
    auto* qs = static_cast<int8_t*>(q8);
    auto* ds = q8 ? reinterpret_cast<float2*>(static_cast<char*>(q8) + q8_values_bytes(K, n_tok)) : nullptr;
    // rms_norm_f32's block size for this row length (norm.cu): the same reduction, hence the same bits.
    if (norm_q8_block(K) == 32) PQ_LAUNCH_PDL(add_rms_norm_q8_kernel<32>, (unsigned)n_tok, 32, 0, stream, x, add, w, y, qs, ds, (int)K, eps);
    else PQ_LAUNCH_PDL(add_rms_norm_q8_kernel<256>, (unsigned)n_tok, 256, 0, stream, x, add, w, y, qs, ds, (int)K, eps);
    return cudaGetLastError();
}

}  // namespace pq::cuda
