// gdn_decode.cuh: one token of the Gated DeltaNet layer after the conv (n == 1, the decode step), fused:
// q/k L2 norms, decay and beta, the delta-rule update of the state, o = S^T q, and the gated RMSNorm.
//
// With out_qs, out also goes to the out-projection's Q8_1 activations (q8_act.cuh), dv % 32 == 0.
//
// One block per V head h (QK head h % nk). The state is stored S[h][j][i] (row j = v index, i = k index),
// so every row j is independent:
//   u_j = sum_i S[j][i] k[i];  delta_j = beta (v_j - exp(g) u_j);  S[j][i] = exp(g) S[j][i] + k[i] delta_j;
//   o_j = sum_i S[j][i] q[i]
// (u from the undecayed row, then scaled: algebraically the reference's S = exp(g) S; u = S^T k.)
// A warp owns RB rows at a time, each lane KPL values of a row (coalesced 128-byte segments); all RB rows
// are loaded before any is used, so a block keeps NW*RB rows (64 KiB on the 27B: the whole head) of
// loads in flight. The state is read once and written once; the per-row o_j go to shared memory for the
// head's RMSNorm, which needs the whole head.
//
// Bytes per layer per token on the 27B (nk 16, nv 48, dk = dv = 128): state 48 heads x 64 KiB = 3 MiB read
// + 3 MiB written; y (q, k, v) 40 KiB, z 24 KiB, out 24 KiB -- bandwidth-bound (~6.1 MiB, about 6 us at
// 1 TB/s). FLOPs: 7 per state value (u FMA, decay mul + update FMA, o FMA) = 7 * 48 * 128 * 128 = 5.5 MFLOP,
// i.e. ~0.9 FLOP/byte.
#pragma once

#include "../compat.cuh"
#include "gdn_common.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kGdnDecodeWarps = 16;  // at most 512 threads
constexpr int kGdnDecodeRows = 8;    // rows per warp per pass: 16 x 8 = 128 rows = one 27B head in one pass

// Warps of a decode block: enough for one pass over the head's rows, at most kGdnDecodeWarps.
inline int gdn_decode_warps(int dv) {
    const int w = (dv + kGdnDecodeRows - 1) / kGdnDecodeRows;
    return w < kGdnDecodeWarps ? w : kGdnDecodeWarps;
}

// KPL: state values per lane and row (dk <= 32 * KPL). blockDim.x = 32 * gdn_decode_warps(dv).
// Dynamic shared memory: dv floats.
template <int KPL>
__global__ void __launch_bounds__(kGdnDecodeWarps * 32)
    gdn_decode_kernel(const float* __restrict__ y, const float* __restrict__ alpha, const float* __restrict__ b,
                      const float* __restrict__ ssm_a, const float* __restrict__ dt_bias, float* __restrict__ S,
                      const float* __restrict__ z, const float* __restrict__ norm_w, float* __restrict__ out, int nk,
                      int dk, int dv, float q_scale, float eps, int8_t* __restrict__ out_qs,
                      float2* __restrict__ out_ds) {
    constexpr int RB = KPL >= 8 ? kGdnDecodeRows / 2 : kGdnDecodeRows;  // dk > 128: half the rows, no spills
    const int NW = blockDim.x / 32, NT = blockDim.x;
    PQ_DYN_SHARED(float, o_sh);  // [dv]: o before the norm
    __shared__ float red[kGdnDecodeWarps];
    const int h = blockIdx.x, kh = h % nk;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

    // q and k of QK head kh, L2-normalised by every warp itself (2*KPL loads and two warp reductions: no
    // block barrier needed before the state work starts).
    const float* qp = y + (int64_t)kh * dk;
    const float* kp = y + (int64_t)(nk + kh) * dk;
    const float* vp = y + 2LL * nk * dk + (int64_t)h * dv;
    float q[KPL], k[KPL];
    float sq = 0.0f, sk = 0.0f;
#pragma unroll
    for (int c = 0; c < KPL; ++c) {
        const int i = lane + 32 * c;
        q[c] = i < dk ? qp[i] : 0.0f;
        k[c] = i < dk ? kp[i] : 0.0f;
        sq += q[c] * q[c];
        sk += k[c] * k[c];
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    const float qs = rsqrtf(sq + kGdnL2Eps), ks = rsqrtf(sk + kGdnL2Eps);
#pragma unroll
    for (int c = 0; c < KPL; ++c) {
        q[c] = q[c] * qs * q_scale;
        k[c] = k[c] * ks;
    }
    const float decay = expf(gdn_log_decay(ssm_a[h], alpha[h], dt_bias[h]));
    const float beta = gdn_sigmoid(b[h]);

    float* Sh = S + (int64_t)h * dv * dk;
    for (int j0 = warp * RB; j0 < dv; j0 += NW * RB) {  // warp-uniform
        float s[RB][KPL];
#pragma unroll
        for (int r = 0; r < RB; ++r)
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                const int j = j0 + r, i = lane + 32 * c;
                s[r][c] = (j < dv && i < dk) ? Sh[(int64_t)j * dk + i] : 0.0f;
            }
        // u for all RB rows, reduced together (independent shuffles interleave).
        float u[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            u[r] = 0.0f;
#pragma unroll
            for (int c = 0; c < KPL; ++c) u[r] += s[r][c] * k[c];
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
#pragma unroll
            for (int r = 0; r < RB; ++r) u[r] += __shfl_xor_sync(kFullMask, u[r], off);
        float o[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int j = j0 + r;
            const float delta = j < dv ? beta * (vp[j] - decay * u[r]) : 0.0f;
            o[r] = 0.0f;
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                s[r][c] = decay * s[r][c] + k[c] * delta;
                o[r] += s[r][c] * q[c];
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
#pragma unroll
            for (int r = 0; r < RB; ++r) o[r] += __shfl_xor_sync(kFullMask, o[r], off);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int j = j0 + r;
            if (j >= dv) continue;
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                const int i = lane + 32 * c;
                if (i < dk) Sh[(int64_t)j * dk + i] = s[r][c];
            }
            if (lane == 0) o_sh[j] = o[r];
        }
    }
    if (out == nullptr) return;  // the state update alone (rollback's replay): the whole block leaves

    __syncthreads();

    // Gated RMSNorm of the head.
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dv; j += NT) ss += o_sh[j] * o_sh[j];
    ss = warp_sum(ss);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    ss = 0.0f;
    for (int w = 0; w < NW; ++w) ss += red[w];
    const float scale = rsqrtf(ss / (float)dv + eps);
    const int64_t base = (int64_t)h * dv;
    for (int j = threadIdx.x; j < dv; j += NT) {  // whole warps per trip when out_qs is set (dv % 32 == 0)
        const float v = o_sh[j] * scale * norm_w[j] * gdn_silu(z[base + j]);
        out[base + j] = v;
        // the out-projection's Q8_1 input, quantized here instead of by a launch of its own (a head is
        // whole Q8_1 blocks)
        if (out_qs) q8_act_store(v, base + j, out_qs, out_ds);
    }
}

}  // namespace pq::cuda
