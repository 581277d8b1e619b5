// ops_sampling.h: host entry points of the device sampler (launch/sampling.cu). Plain C++, callable from
// g++-compiled code in the real and the emulated build; pointers are device pointers, nothing syncs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "host_api.h"
#include "plan/workspace_sizes.h"  // sample_workspace_bytes

namespace pq::cuda {

// Sampling on the device (see sampling.cu): temperature <= 0 (or < 1e-5) is greedy.
struct SampleParams {
    float temperature = 0.0f;
    int top_k = 0;          // 0 = off
    float top_p = 1.0f;     // 1 = off
    float min_p = 0.0f;     // 0 = off
    uint64_t seed = 0;
    uint64_t counter = 0;   // draw number: (seed, counter) picks the random numbers of one draw
};

// Device sampling (sampling.cu): draws one token from a row of n logits with p's temperature, top-k,
// top-p and min-p (the order and meaning of pyqwen/sampling.py, see sampling.cuh), writing its id to
// out[0]. Uses `workspace` (sample_workspace_bytes(n) bytes of device memory); never syncs.
cudaError_t sample_token(const float* logits, int64_t n, const SampleParams& p, int32_t* out, void* workspace,
                         size_t workspace_bytes, cudaStream_t stream);
// The same with a smaller candidate-list capacity (tests: forces the whole-row fallback on short rows).
cudaError_t sample_token_cap(const float* logits, int64_t n, const SampleParams& p, int32_t* out, void* workspace,
                             size_t workspace_bytes, int cap, cudaStream_t stream);

}  // namespace pq::cuda
