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

// The same rule over chunks of `chunk` tokens in the WY/UT form (plain loops: the spec of gdn_chunk.cpp).
// Within a chunk (tokens 0..L-1, k and q = q_scale * q as above), with dec(i, j) the decay from just after
// token j to token i (the product of exp(g_s) for j < s <= i; j = -1: from the chunk's start) and S the
// math state [dk][dv] entering the chunk:
//   A = I + strictly-lower(beta_i (k_i . k_j) dec(i, j)),   T = A^-1 (forward substitution)
//   U = T diag(beta) V,   W = T diag(beta) (k_t dec(t, -1))_t,   V' = U - W S
//   o_t = dec(t, -1) S^T q_t + sum_{s <= t} (q_t . k_s) dec(t, s) V'_s
//   S <- dec(L-1, -1) S + sum_t (k_t dec(L-1, t)) V'_t^T
// which in exact arithmetic equals delta_rule_head. The decays are running products of the per-token
// exp(g) (never exp of a cumulative sum's difference), so they underflow to 0 as the recurrence's do.
void delta_rule_chunked_ref(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                            int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S,
                            int64_t dk, int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride,
                            int64_t chunk);

// The longest chunk the chunked kernels take.
constexpr int64_t kGdnChunkMax = 256;

// dec(i, j) of one chunk: D[i * (L + 1) + j + 1] for -1 <= j <= i < L (0 above the diagonal), from the
// chunk's L <= kGdnChunkMax values of g (stride gb_stride). Shared by the reference and the fast chunked kernel.
void gdn_chunk_decays(const float* g, int64_t gb_stride, int64_t L, float* D);

}  // namespace pq
