// attention_decode.cuh: one query token over the KV cache (fp16, Q8_0 or Q4_0 rows; K and V each their
// own type), split-K (flash-decoding).
//
// Grid (nsplit, Hkv * G / NR), 4 warps per block. A block owns one KV head g, NR of its G query heads
// (NR == G whenever G <= 8 is in {1, 2, 3, 4, 6, 8}: the model's 6 heads share one pass, so every K/V
// byte is read once per token) and the keys [s * split_len, min(L, (s+1) * split_len)). Warp w takes the
// chunks of 32 keys w, w + 4, ...:
//   - scores: lane l holds dims [l*D/32, (l+1)*D/32) of q (NR heads, pre-scaled by log2(e)/sqrt(D)) and of
//     each K row (one 16-byte load per lane for D = 256: the warp reads the 512-byte row coalesced),
//     NR warp sums per key; lane kk of the warp keeps the score of key kk of the chunk;
//   - online softmax once per chunk (fp32): chunk max over the lanes, rescale of l and O;
//   - O += p V: every lane accumulates its D/32 dims of NR heads, p broadcast by shuffle.
// Rows are loaded 4 at a time (clamped to the last valid key) so each warp has 4 loads in flight. A
// quantized V row is dequantized by the lane's load into registers (load_kv_values: its D/32 values lie
// in one block). Against a quantized K the query is quantized to Q8_0 first, as the CPU backend (and
// llama.cpp's CPU and CUDA vector kernels) do: each lane holds its values' levels and the block scale
// (the 32/DPL lanes of a block agree on its amax by shuffles), the K row's levels come from the cache,
// and a lane's partial score is (sum of level products, exact in fp32) * d_k * d_q. The 4
// warps are merged through shared memory and every split writes its partial (m, l, O) for
// attn_combine_kernel, even a single one: the decode step is always the same launches (CUDA graphs).
// Splits past the live keys (a graph's bucket-sized grid) write only the neutral (m, l) = (-inf, 0).
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "attention_common.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kDecodeWarps = 4;

template <int D, int NR>
constexpr size_t decode_smem_bytes() {
    return sizeof(float) * (size_t)kDecodeWarps * NR * (D + 2);
}

// One block's split (the kernel below without its combine tail).
template <int D, int NR>
__device__ __forceinline__ void attn_decode_split(const float* __restrict__ qg, const uint8_t* __restrict__ k_cache,
                                                  const uint8_t* __restrict__ v_cache, const KvLayout& kv,
                                                  float* __restrict__ part_o, float2* __restrict__ part_ml, int H,
                                                  int Hkv, int64_t L_arg, const int* __restrict__ pos_dev,
                                                  int64_t split_len, float q_scale) {
    constexpr int DPL = D / 32;  // dims per lane
    static_assert(D % 32 == 0 && DPL <= 8, "D in {32, 64, 128, 256}");
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int G = H / Hkv, groups = G / NR;
    const int g = blockIdx.y / groups;
    const int h0 = g * G + (blockIdx.y % groups) * NR;
    const int s = blockIdx.x, nsplit = gridDim.x;
    // pos_dev: the query's position is in device memory (a decode graph replayed at every position of a
    // bucket, ops_attention.h attention_decode_graph): L = pos + 1 keys, and the grid may hold more splits
    // than L needs. A split without keys writes the neutral partial (m = -inf, l = 0) that the combine
    // skips -- what a live split with no key would write -- so the output does not depend on the grid.
    const int64_t L = pos_dev ? (int64_t)*pos_dev + 1 : L_arg;
    if ((int64_t)s * split_len >= L) {
        for (int r = threadIdx.x; r < NR; r += kDecodeWarps * 32)
            part_ml[(int64_t)(h0 + r) * nsplit + s] = make_float2(-INFINITY, 0.0f);
        return;  // the whole block: no barrier below is reached by anyone
    }

    // q: fp32 pre-scaled by log2(e)/sqrt(D) for an fp16 K; for a quantized K its Q8_0 levels (exact
    // integers in fp32) with qd = d_q * the scale (formats.h quantize_block_q8_0's arithmetic per value).
    const bool k_quant = kv.k_type != T_F16;
    float q[NR][DPL], qd[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            q[r][i] = qg[(int64_t)(h0 + r) * 2 * D + lane * DPL + i];
            amax = fmaxf(amax, fabsf(q[r][i]));
        }
        qd[r] = 1.0f;
        if (k_quant) {
#pragma unroll
            for (int o = 1; o < 32 / DPL; o *= 2) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, o));
            const float d = amax / 127;
            const float id = d ? 1.0f / d : 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; ++i) q[r][i] = (float)trunc_to_i8(roundf(q[r][i] * id));
            qd[r] = half_bits_to_float(float_to_half_bits(d)) * q_scale;
        } else {
#pragma unroll
            for (int i = 0; i < DPL; ++i) q[r][i] *= q_scale;
        }
    }

    float m[NR], l[NR], acc[NR][DPL];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[r][i] = 0.0f;
    }

    const int64_t k0 = (int64_t)s * split_len;
    const int64_t k1 = k0 + split_len < L ? k0 + split_len : L;
    const uint8_t* kb = k_cache + (int64_t)g * kv.k_head;
    const uint8_t* vb = v_cache + (int64_t)g * kv.v_head;

    for (int64_t c0 = k0 + warp * 32; c0 < k1; c0 += kDecodeWarps * 32) {
        const int nk = (int)(k1 - c0 < 32 ? k1 - c0 : 32);  // valid keys of this chunk, >= 1
        float sc[NR];
#pragma unroll
        for (int r = 0; r < NR; ++r) sc[r] = -INFINITY;
        for (int kk = 0; kk < nk; kk += 4) {
            float kf[4][DPL], kd[4];  // values (fp16 K) or levels and block scale (quantized K)
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int j = kk + u < nk ? kk + u : nk - 1;
                kd[u] = load_kv_levels<DPL>(kb + (c0 + j) * kv.k_row, kv.k_type, lane * DPL, kf[u]);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
#pragma unroll
                for (int r = 0; r < NR; ++r) {
                    float d = 0.0f;
#pragma unroll
                    for (int i = 0; i < DPL; ++i) d += q[r][i] * kf[u][i];
                    if (k_quant) d *= kd[u] * qd[r];
                    d = warp_sum(d);
                    if (lane == kk + u && kk + u < nk) sc[r] = d;
                }
            }
        }
        float p[NR];
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const float mn = fmaxf(m[r], warp_max(sc[r]));  // finite: key c0 is valid
            const float alpha = exp2f(m[r] - mn);
            p[r] = exp2f(sc[r] - mn);  // 0 for lanes past nk
            l[r] = l[r] * alpha + p[r];
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[r][i] *= alpha;
            m[r] = mn;
        }
        for (int kk = 0; kk < nk; kk += 4) {
            float vf[4][DPL];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int j = kk + u < nk ? kk + u : nk - 1;
                load_kv_values<DPL>(vb + (c0 + j) * kv.v_row, kv.v_type, lane * DPL, vf[u]);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int src = kk + u < 32 ? kk + u : 31;
#pragma unroll
                for (int r = 0; r < NR; ++r) {
                    // p of key kk+u; keys past nk have p == 0 (their row is a clamped duplicate, finite)
                    const float pr = __shfl_sync(kFullMask, p[r], src);
#pragma unroll
                    for (int i = 0; i < DPL; ++i) acc[r][i] += pr * vf[u][i];
                }
            }
        }
    }

    // Merge the 4 warps: [warp][r] -> (m, l, O[D]) in shared memory.
    PQ_DYN_SHARED(float, sm);
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        const float lw = warp_sum(l[r]);
        float* e = sm + (warp * NR + r) * (D + 2);
        if (lane == 0) {
            e[0] = m[r];
            e[1] = lw;
        }
#pragma unroll
        for (int i = 0; i < DPL; ++i) e[2 + lane * DPL + i] = acc[r][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < NR * D; idx += kDecodeWarps * 32) {
        const int r = idx / D, d = idx % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, sm[(w * NR + r) * (D + 2)]);
        float lsum = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) {
            const float* e = sm + (w * NR + r) * (D + 2);
            if (e[0] == -INFINITY) continue;  // this warp had no chunk
            const float wt = exp2f(e[0] - M);
            lsum += wt * e[1];
            o += wt * e[2 + d];
        }
        const int64_t ps = (int64_t)(h0 + r) * nsplit + s;  // token 0
        part_o[ps * D + d] = o;
        if (d == 0) part_ml[ps] = make_float2(M, lsum);
    }
}

// With cnt (one query: the decode step), the combine runs here, not as attn_combine_kernel: the last of a
// row's nsplit blocks to finish (cnt[blockIdx.y] counts them and is reset to 0 by the last; zero before
// the first launch) combines its NR heads -- attn_combine_raw, the rotation back of a rotated V cache
// (hadamard.cuh) and attn_gate, the combine kernel's arithmetic, and
// the output projection's Q8_1 when out_qs -- the CUDA guide's threadfence reduction, as the matvec's
// quantizing CTAs (matvec.cuh). One latency-bound node fewer per attention layer (issue 10).
template <int D, int NR>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attn_decode_kernel(const float* __restrict__ qg, const uint8_t* __restrict__ k_cache,
                       const uint8_t* __restrict__ v_cache, KvLayout kv, float* __restrict__ part_o,
                       float2* __restrict__ part_ml, int H, int Hkv, int64_t L_arg, const int* __restrict__ pos_dev,
                       int64_t split_len, float q_scale, float* __restrict__ out, int8_t* __restrict__ out_qs,
                       float2* __restrict__ out_ds, unsigned* __restrict__ cnt) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    attn_decode_split<D, NR>(qg, k_cache, v_cache, kv, part_o, part_ml, H, Hkv, L_arg, pos_dev, split_len, q_scale);
    if (!cnt) return;  // uniform over the grid
    __shared__ unsigned last_split;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last_split = atomicAdd(&cnt[blockIdx.y], 1u) == gridDim.x - 1;
        if (last_split) cnt[blockIdx.y] = 0u;  // ready for the next launch (every split has counted)
    }
    __syncthreads();
    if (!last_split) return;
    __threadfence();
    const int G = H / Hkv, groups = G / NR;
    const int h0 = (blockIdx.y / groups) * G + (blockIdx.y % groups) * NR;
    const volatile float* po = part_o;  // written by the other split blocks
    const volatile float* pml = reinterpret_cast<const volatile float*>(part_ml);
    if (kv.v_rot) {
        // A rotated V cache: the NR normalised rows go through shared memory (the split's merge buffer,
        // free since the barrier above) to be rotated back, then are gated -- attn_combine_kernel's steps.
        PQ_DYN_SHARED(float, rows);  // NR * D <= kDecodeWarps * NR * (D + 2) floats
        for (int idx = threadIdx.x; idx < NR * D; idx += kDecodeWarps * 32)
            rows[idx] = attn_combine_raw(po, pml, h0 + idx / D, idx % D, D, (int)gridDim.x);
        __syncthreads();
        hadamard_rotate(rows, NR * D, kv.v_rot, threadIdx.x, kDecodeWarps * 32, BlockSync{});
        for (int idx = threadIdx.x; idx < NR * D; idx += kDecodeWarps * 32) {
            const int h = h0 + idx / D, d = idx % D;
            const float r = attn_gate(rows[idx], qg, h, d, D);
            out[(int64_t)h * D + d] = r;
            if (out_qs) q8_act_store(r, (int64_t)h * D + d, out_qs, out_ds);
        }
        return;
    }
    for (int idx = threadIdx.x; idx < NR * D; idx += kDecodeWarps * 32) {  // whole warps: D % 32 == 0
        const int h = h0 + idx / D, d = idx % D;
        const float r = attn_gate(attn_combine_raw(po, pml, h, d, D, (int)gridDim.x), qg, h, d, D);
        out[(int64_t)h * D + d] = r;
        if (out_qs) q8_act_store(r, (int64_t)h * D + d, out_qs, out_ds);
    }
}

}  // namespace pq::cuda
