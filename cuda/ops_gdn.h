// ops_gdn.h: host entry points of the Gated DeltaNet kernels (implemented in launch/gdn.cu). Plain C++,
// callable from g++-compiled code in both the real and the emulated build. All pointers are device
// pointers; every function only enqueues work on `stream` and returns the launch error.
//
// The math is csrc/model.cpp's Model::gdn_layer after the four in-projections (conv1d_silu is
// csrc/gdn.cpp's conv1d_silu; gdn is the rest up to, not including, the ssm_out projection).
#pragma once

#include <cstddef>
#include <cstdint>

#include "host_api.h"

namespace pq::cuda {

// Causal depthwise conv (kernel K <= 8, no bias) + SiLU over n tokens: x, y [n][C] token-major; w [C][K] with
// tap K-1 on the current token; state [C][K-1] (oldest first) read and updated in place.
// x and y must not overlap (token tiles read their halo from x).
cudaError_t conv1d_silu(const float* x, const float* w, float* state, float* y, int64_t C, int K, int64_t n,
                        cudaStream_t stream);

// The rest of the layer after the conv, for n tokens of one sequence:
//   y [n][C]: conv output, C = 2*nk*dk + nv*dv, per token [q (nk heads) | k (nk heads) | v (nv heads)];
//   alpha, b [n][nv]: the ssm_alpha / ssm_beta projections (raw); ssm_a, dt_bias [nv];
//   S [nv][dv][dk]: the recurrent state (row j of head h = column j of the k-by-v state), updated in place;
//   z [n][nv*dv]: the gate projection; norm_w [dv]: ssm_norm; out [n][nv*dv].
// Computes per token: q,k L2-normalised per head (eps 1e-6, x*rsqrt(sum+eps)), q scaled by 1/sqrt(dk),
// g = ssm_a*softplus(alpha+dt_bias), beta = sigmoid(b); per V head h (QK head h % nk): S = exp(g) S;
// u = S^T k; S += k (beta (v - u))^T; o = S^T q; then out = rms_norm(o, eps)*norm_w*silu(z) per head.
// n == 1 (decode): the recurrent step; n > 1: the chunked (chunk 64) algorithm, tokens in parallel.
// n == 1 with out == nullptr: only the state update (z may be null too) -- speculative decoding's
// rollback replays kept tokens with the very arithmetic of their decode steps.
//
// Limits: 1 <= dk <= 256, 1 <= dv <= 8192, nv % nk == 0 is not required (h % nk is used as is).
// `out` must not overlap y, z or the scratch. `scratch` must hold gdn_scratch_bytes(nk, nv, dk, dv, n)
// bytes of device memory (0 for n <= 1; about 4*n*(2*nk*dk + nv*(dk + dv + 66)) bytes otherwise, e.g.
// 80 KiB per token on the 27B: callers split long prompts into ubatches).
size_t gdn_scratch_bytes(int nk, int nv, int dk, int dv, int64_t n);
cudaError_t gdn(const float* y, const float* alpha, const float* b, const float* ssm_a, const float* dt_bias,
                float* S, const float* z, const float* norm_w, float* out, int nk, int nv, int dk, int dv,
                int64_t n, float eps, void* scratch, cudaStream_t stream);

// gdn for one token (n == 1) that also writes out's Q8_1 activations for the out-projection (the decode
// path's shared-activation layout, ops_matvec.h: out_qs nv*dv int8, out_ds nv*dv/32 (d, s) float pairs; both
// null: gdn itself). dv % 32 == 0 with out_qs. out is bit-identical with gdn's, the Q8_1 bytes with
// quantize_act_q8 of out: one launch fewer per DeltaNet layer. head_cnt (may be null): nv unsigned zeros
// (left zero) that let each head's rows spread over several blocks (kernels/gdn_decode.cuh; the same bits).
cudaError_t gdn_decode_q8(const float* y, const float* alpha, const float* b, const float* ssm_a, const float* dt_bias,
                          float* S, const float* z, const float* norm_w, float* out, int nk, int nv, int dk, int dv,
                          float eps, int8_t* out_qs, float* out_ds, unsigned* head_cnt, cudaStream_t stream);

}  // namespace pq::cuda
