// blas.h: the only door to cuBLAS. Real builds implement it with cublasGemmEx (launch/blas_cublas.cu);
// the emulator replaces it with a host GEMM (emu/emu_blas.cpp), so code calling it is testable on a CPU.
#pragma once

#include <cstdint>

#include "host_api.h"

namespace pq::cuda {

// Y[t][o] = sum_k W[o][k] * X[t][k] for t < n_tok, o < n_out -- the ggml layout: W holds one row of K
// fp16 values per output feature, X one row per token. fp16 inputs (raw bits), fp32 output and
// accumulation. Leading dimensions are in elements (ldw, ldx >= k; ldy >= n_out). Row-major throughout.
// accumulate: Y += the product (cuBLAS beta = 1) instead of Y = it.
// Returns cudaErrorNotSupported when the build has no cuBLAS.
cudaError_t gemm_f16(const uint16_t* W, const uint16_t* X, float* Y, int n_out, int n_tok, int k, int ldw,
                     int ldx, int ldy, cudaStream_t stream, bool accumulate = false);

// Whether gemm_f16 has cuBLAS behind it (false: a build without cuBLAS, prefill runs on the mmv kernels).
bool blas_available();

// Creates the process's cuBLAS handle on the current device, gives it its workspace (kCublasWorkspaceBytes,
// plan/workspace_sizes.h, allocated here so cuBLAS never allocates behind the memory plan's back) and runs
// one small GEMM, so that everything cuBLAS needs is resident before the caller measures free memory and
// plans. Idempotent. cudaErrorNotSupported without cuBLAS.
cudaError_t blas_init();

}  // namespace pq::cuda
