// gdn.h: the two sequence kernels of the Gated DeltaNet layer (reference versions).
#pragma once

#include <cstdint>

namespace pq {

// Causal depthwise conv (kernel K, no bias) + SiLU over n tokens for channels [c0, c1).
// x, y: [n][C] (token-major); w: [C][K] with tap K-1 on the current token; state: [C][K-1], the
// previous K-1 raw inputs of each channel (oldest first), updated in place.
void conv1d_silu(const float* x, const float* w, float* state, float* y, int64_t C, int64_t K, int64_t n,
                 int64_t c0, int64_t c1);

// The gated delta rule for one V head over n tokens, state S stored transposed ([dv][dk]: row j is
// column j of the k-by-v state). Per token t, with decay = exp(g[t]):
//   S = decay*S;  u = S^T k;  S += k (beta[t] (v - u))^T;  o = S^T q * q_scale
// q, k, v, o advance by their strides per token; q and k are expected L2-normalised.
void delta_rule_head(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                     int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S, int64_t dk,
                     int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride);

}  // namespace pq
