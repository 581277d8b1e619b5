// gdn_decode.cuh: one token of the Gated DeltaNet layer after the conv (n == 1, the decode step), fused:
// q/k L2 norms, decay and beta, the delta-rule update of the state, o = S^T q, and the gated RMSNorm.
//
// With out_qs, out also goes to the out-projection's Q8_1 activations (q8_act.cuh), dv % 32 == 0.
//
// One block per V head h (QK head h % nk) and part of its rows (the whole head without counters; else
// 32 rows, see kGdnDecodePartRows below). The state is stored S[h][j][i] (row j = v index, i = k index),
// so every row j is independent:
//   u_j = sum_i S[j][i] k[i];  delta_j = beta (v_j - exp(g) u_j);  S[j][i] = exp(g) S[j][i] + k[i] delta_j;
//   o_j = sum_i S[j][i] q[i]
// (u from the undecayed row, then scaled: algebraically the reference's S = exp(g) S; u = S^T k.)
// A warp owns RB rows at a time, each lane KPL values of a row (coalesced 128-byte segments); all RB rows
// are loaded before any is used, so a block keeps NW*RB rows (16 KiB of a 27B head per part block, 192
// blocks in all) of loads in flight. The state is read once and written once; the per-row o_j go to
// shared memory (and, split, through out to the head's last block) for the head's RMSNorm, which needs
// the whole head.
//
// Bytes per layer per token on the 27B (nk 16, nv 48, dk = dv = 128): state 48 heads x 64 KiB = 3 MiB read
// + 3 MiB written; y (q, k, v) 40 KiB, z 24 KiB, out 24 KiB -- bandwidth-bound (~6.1 MiB, about 6 us at
// 1 TB/s). FLOPs: 7 per state value (u FMA, decay mul + update FMA, o FMA) = 7 * 48 * 128 * 128 = 5.5 MFLOP,
// i.e. ~0.9 FLOP/byte.
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "gdn_common.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kGdnDecodeWarps = 16;  // at most 512 threads
constexpr int kGdnDecodeRows = 8;    // rows per warp per pass: 16 x 8 = 128 rows = one 27B head in one pass

// Warps of a decode block over `rows` rows: one pass over them, at most kGdnDecodeWarps.
__host__ __device__ inline int gdn_decode_warps(int rows) {
    const int w = (rows + kGdnDecodeRows - 1) / kGdnDecodeRows;
    return w < kGdnDecodeWarps ? w : kGdnDecodeWarps;
}

// Spread (issue 10): a head's rows are independent until the gated RMSNorm, so with a counter per head the
// rows are cut into parts of kGdnDecodePartRows, one block each (the 27B: 48 heads x 4 = 192 blocks
// instead of 48 on 128 SMs). Each part writes its rows' o to out; the last part of a head to finish
// (counted, the counter reset for the next launch) norms the whole head there. Its norm sums o^2 in the
// one-block kernel's order (virtual threads of 32 * gdn_decode_warps(dv)), so both give the same bits.
constexpr int kGdnDecodePartRows = 32;

// KPL: state values per lane and row (dk <= 32 * KPL). Grid (nv, parts); rows of part p: [p * rpp,
// min(dv, (p + 1) * rpp)); blockDim.x = 32 * gdn_decode_warps(rpp). parts > 1 needs head_cnt (nv unsigned
// zeros; left zero). Dynamic shared memory: dv floats.
template <int KPL>
__global__ void __launch_bounds__(kGdnDecodeWarps * 32)
    gdn_decode_kernel(const float* __restrict__ y, const float* __restrict__ alpha, const float* __restrict__ b,
                      const float* __restrict__ ssm_a, const float* __restrict__ dt_bias, float* __restrict__ S,
                      const float* __restrict__ z, const float* __restrict__ norm_w, float* __restrict__ out, int nk,
                      int dk, int dv, float q_scale, float eps, int8_t* __restrict__ out_qs,
                      float2* __restrict__ out_ds, int rpp, unsigned* __restrict__ head_cnt) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    constexpr int RB = KPL >= 8 ? kGdnDecodeRows / 2 : kGdnDecodeRows;  // dk > 128: half the rows, no spills
    const int NW = blockDim.x / 32;
    PQ_DYN_SHARED(float, o_sh);  // [dv]: o before the norm
    __shared__ float red[kGdnDecodeWarps];
    __shared__ unsigned last_part;
    const int h = blockIdx.x, kh = h % nk;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int r0 = blockIdx.y * rpp, r1 = min(dv, r0 + rpp);
    const bool split = gridDim.y > 1;

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
    for (int j0 = r0 + warp * RB; j0 < r1; j0 += NW * RB) {  // warp-uniform
        float s[RB][KPL];
#pragma unroll
        for (int r = 0; r < RB; ++r)
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                const int j = j0 + r, i = lane + 32 * c;
                s[r][c] = (j < r1 && i < dk) ? Sh[(int64_t)j * dk + i] : 0.0f;
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
            const float delta = j < r1 ? beta * (vp[j] - decay * u[r]) : 0.0f;
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
            if (j >= r1) continue;
#pragma unroll
            for (int c = 0; c < KPL; ++c) {
                const int i = lane + 32 * c;
                if (i < dk) Sh[(int64_t)j * dk + i] = s[r][c];
            }
            if (lane == 0) {
                o_sh[j] = o[r];
                if (split && out) out[(int64_t)h * dv + j] = o[r];  // for the head's last part
            }
        }
    }
    if (out == nullptr) return;  // the state update alone (rollback's replay): the whole block leaves

    const int64_t base = (int64_t)h * dv;
    if (split) {
        // threadfence reduction: this part's o fenced before the count; the last part reads them all
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            last_part = atomicAdd(&head_cnt[h], 1u) == gridDim.y - 1;
            if (last_part) head_cnt[h] = 0u;  // every part of this head has counted: ready for the next launch
        }
        __syncthreads();
        if (!last_part) return;  // the whole block
        __threadfence();
        const volatile float* ov = out + base;  // other blocks' rows: not from this SM's L1
        for (int j = threadIdx.x; j < dv; j += blockDim.x) o_sh[j] = ov[j];
    }
    __syncthreads();

    // Gated RMSNorm of the head. The sum of squares in the one-block kernel's order (virtual thread t of
    // 32 * gdn_decode_warps(dv) sums j = t, t + NTv, ...; warp sums; then warps 0, 1, ... in order).
    const int NWv = gdn_decode_warps(dv), NTv = 32 * NWv;
    for (int vw = warp; vw < NWv; vw += NW) {  // warp-uniform
        float ss = 0.0f;
        for (int j = vw * 32 + lane; j < dv; j += NTv) ss += o_sh[j] * o_sh[j];
        ss = warp_sum(ss);
        if (lane == 0) red[vw] = ss;
    }
    __syncthreads();
    float ss = 0.0f;
    for (int w = 0; w < NWv; ++w) ss += red[w];
    const float scale = rsqrtf(ss / (float)dv + eps);
    const int NT = blockDim.x;
    for (int j = threadIdx.x; j < dv; j += NT) {  // whole warps per trip when out_qs is set (dv % 32 == 0)
        const float v = o_sh[j] * scale * norm_w[j] * gdn_silu(z[base + j]);
        out[base + j] = v;
        // the out-projection's Q8_1 input, quantized here instead of by a launch of its own (a head is
        // whole Q8_1 blocks)
        if (out_qs) q8_act_store(v, base + j, out_qs, out_ds);
    }
}

}  // namespace pq::cuda
