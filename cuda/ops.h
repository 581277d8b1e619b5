// ops.h: host entry points of the CUDA kernels (implemented in launch/*.cu). Plain C++: callable from
// g++-compiled code (the pybind11 module) in both the real and the emulated build. All pointers are
// device pointers; every function only enqueues work on `stream` and returns the launch error.
#pragma once

#include <cstddef>
#include <cstdint>

#include "host_api.h"
#include "plan/workspace_sizes.h"  // argmax_workspace_bytes

namespace pq::cuda {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for nrows rows of ncols; strides in elements; w may be null.
cudaError_t rms_norm_f32(const float* x, const float* w, float* y, int ncols, int nrows, int64_t sx, int64_t sy,
                         float eps, cudaStream_t stream);

// sizeof(pq::block_q8_1) (formats.h; checked in launch/quantize.cu), for code that does not include it.
constexpr size_t kQ8_1BlockBytes = 36;

// Quantizes nrows rows of ncols floats (row stride sx) to block_q8_1; row r starts at block
// r * ceil(ncols/32) of y (blocks are contiguous, 36 bytes each).
cudaError_t quantize_q8_1(const float* x, void* y, int ncols, int nrows, int64_t sx, cudaStream_t stream);

// y = silu(g) * u element-wise over nrows rows of ncols (row strides in elements).
cudaError_t swiglu_f32(const float* g, const float* u, float* y, int ncols, int nrows, int64_t sg, int64_t su,
                       int64_t sy, cudaStream_t stream);

// y = a + b over n values; y may alias a or b.
cudaError_t add_f32(const float* a, const float* b, float* y, int64_t n, cudaStream_t stream);

// out[r] = argmax of row r (n values, row stride sx); ties -> smallest index, NaNs ignored.
// `workspace` must hold argmax_workspace_bytes(n, nrows) bytes of device memory (may be 0 bytes).
cudaError_t argmax_f32(const float* x, int64_t n, int nrows, int64_t sx, int32_t* out, void* workspace,
                       cudaStream_t stream);

}  // namespace pq::cuda
