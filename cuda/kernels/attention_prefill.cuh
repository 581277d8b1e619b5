// attention_prefill.cuh: flash attention for n > 1 queries over the KV cache (causal, GQA); fp16 rows, or
// Q8_0 / Q4_0 rows dequantized to fp16 as each tile is copied to shared memory (no dequantized cache).
//
// Query rows are packed per KV head: row i of KV head g is token t = i / G, query head g*G + i % G, so the
// G heads sharing a KV head share every K/V tile (6 heads x ~10.7 tokens per 64-row tile for the model).
// Grid (ceil(n*G / 64), Hkv, nsplit), 4 warps; warp w owns rows [16w, 16w+16) of the tile.
//   - Q (fp16, as llama.cpp's FA kernels) lives in registers as m16n8k16 A fragments for the whole block;
//   - per tile of kBN = 32 keys of this block's split (up to the block's last causal key), K and V rows
//     are copied to shared memory (rows padded by 8 halves: conflict-free fragment loads);
//   - S = Q K^T (tensor cores, fp32 accumulate), scale and causal mask (key <= pos0 + t) in fp32;
//   - online softmax in fp32 per row (quad shuffles), P re-packed from the S accumulators straight into A
//     fragments (the m16n8 C layout of two key octets is the m16n8k16 A layout), O += P V (fp32 acc);
//   - a warp whose rows all end before the tile skips it (causal), still joining the barriers.
// One split writes the gated output; several (small batches over long caches, e.g. speculative
// verification) write partials for attn_combine_kernel. mma_m16n8k16 is inline PTX on the GPU and a
// shuffle twin in the emulator (attention_common.cuh).
#pragma once

#include "../compat.cuh"
#include "attention_common.cuh"
#include "../plan/workspace_sizes.h"

namespace pq::cuda {

// kPrefillWarps, kPrefillBM (query rows per block): plan/workspace_sizes.h (the split count and so the
// scratch depend on them).
constexpr int kPrefillBN = 32;                  // keys per tile

template <int D>
constexpr size_t prefill_smem_bytes() {
    return sizeof(uint16_t) * 2 * kPrefillBN * (D + 8);
}

template <int D>
__global__ void __launch_bounds__(kPrefillWarps * 32)
    attn_prefill_kernel(const float* __restrict__ qg, const uint8_t* __restrict__ k_cache,
                        const uint8_t* __restrict__ v_cache, KvLayout kv, float* __restrict__ out, float* __restrict__ part_o,
                        float2* __restrict__ part_ml, int H, int Hkv, int pos0, int n, int split_len,
                        float s_scale) {
    static_assert(D % 16 == 0 && D <= 256, "D a multiple of 16, at most 256");
    constexpr int LD = D + 8;      // shared row stride in halves (16-byte multiple)
    constexpr int KS = D / 16;     // k-steps of Q K^T
    constexpr int NT = D / 8;      // n-tiles of O
    constexpr int ST = kPrefillBN / 8;  // n-tiles of S
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int gid = lane / 4, tig = lane % 4;
    const int G = H / Hkv, g = blockIdx.y;
    const int s = blockIdx.z, nsplit = gridDim.z;
    // Row, token and key indices are int: the launcher guarantees n * G and n_ctx below 2^31 (positions
    // are < 2^24); only memory offsets are 64-bit.
    const int rows = n * G;
    const int tile0 = blockIdx.x * kPrefillBM;

    // This lane's two rows (gid, gid + 8 of the warp's 16): token, query head, last key (causal).
    int rt[2], rh[2], rlast[2];
    bool rvalid[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int row = tile0 + warp * 16 + gid + 8 * e;
        rvalid[e] = row < rows;
        rt[e] = rvalid[e] ? row / G : 0;
        rh[e] = g * G + (rvalid[e] ? row % G : 0);
        rlast[e] = rvalid[e] ? pos0 + rt[e] : -1;  // invalid rows see no key
    }
    const int last_row = (tile0 + kPrefillBM < rows ? tile0 + kPrefillBM : rows) - 1;
    const int block_end = pos0 + last_row / G + 1;  // keys [0, block_end) are seen by some row
    const int warp_row = tile0 + warp * 16 + 15 < rows ? tile0 + warp * 16 + 15 : rows - 1;
    const int warp_end = tile0 + warp * 16 < rows ? pos0 + warp_row / G + 1 : 0;

    const int kbeg = s * split_len;
    const int kend = kbeg + split_len < block_end ? kbeg + split_len : block_end;

    // Q fragments (fp16) for the whole key loop.
    uint32_t qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const float* qr = qg + ((int64_t)rt[e] * H + rh[e]) * 2 * D + ks * 16 + 2 * tig;
            const float2 lo = rvalid[e] ? *reinterpret_cast<const float2*>(qr) : make_float2(0.0f, 0.0f);
            const float2 hi = rvalid[e] ? *reinterpret_cast<const float2*>(qr + 8) : make_float2(0.0f, 0.0f);
            qa[ks][e] = pack_half2(lo.x, lo.y);
            qa[ks][2 + e] = pack_half2(hi.x, hi.y);
        }

    float o[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[nt][i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    PQ_DYN_SHARED(uint16_t, smem);
    uint16_t* Ks = smem;
    uint16_t* Vs = smem + kPrefillBN * LD;
    const uint8_t* kh = k_cache + (int64_t)g * kv.k_head;
    const uint8_t* vh = v_cache + (int64_t)g * kv.v_head;

    for (int j0 = kbeg; j0 < kend; j0 += kPrefillBN) {
        __syncthreads();  // the previous tile is consumed
        constexpr int CPR = D / 8;  // 16-byte chunks per row
        for (int c = tid; c < kPrefillBN * CPR; c += kPrefillWarps * 32) {
            const int key = c / CPR, part = c % CPR;
            const int j = j0 + key;
            uint4 kw = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);  // keys past kend: zeros
            if (j < kend) {
                kw = load_kv_half8(kh + (int64_t)j * kv.k_row, kv.k_type, part * 8);
                vv = load_kv_half8(vh + (int64_t)j * kv.v_row, kv.v_type, part * 8);
            }
            *reinterpret_cast<uint4*>(Ks + key * LD + part * 8) = kw;
            *reinterpret_cast<uint4*>(Vs + key * LD + part * 8) = vv;
        }
        __syncthreads();
        if (j0 >= warp_end) continue;  // causal: no row of this warp reaches the tile (warp-uniform)

        float sacc[ST][4];
#pragma unroll
        for (int nt = 0; nt < ST; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) sacc[nt][i] = 0.0f;
            const uint16_t* kr = Ks + (nt * 8 + gid) * LD + 2 * tig;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                const uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(kr + ks * 16),
                                       *reinterpret_cast<const uint32_t*>(kr + ks * 16 + 8)};
                mma_m16n8k16(sacc[nt], qa[ks], b);
            }
        }

        // Scale, mask, online softmax; element i of sacc[nt]: row e = i / 2, key j0 + nt*8 + 2*tig + i%2.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < ST; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int e = i / 2;
                const int j = j0 + nt * 8 + 2 * tig + i % 2;
                const float v = (j <= rlast[e] && j < kend) ? sacc[nt][i] * s_scale : -INFINITY;
                sacc[nt][i] = v;
                mx[e] = fmaxf(mx[e], v);
            }
        float alpha[2], msafe[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            mx[e] = fmaxf(mx[e], __shfl_xor_sync(kFullMask, mx[e], 1));
            mx[e] = fmaxf(mx[e], __shfl_xor_sync(kFullMask, mx[e], 2));
            const float mn = fmaxf(m[e], mx[e]);
            msafe[e] = mn == -INFINITY ? 0.0f : mn;  // a row with no key yet: keep everything 0
            alpha[e] = exp2f(m[e] - msafe[e]);
            m[e] = mn;
            l[e] *= alpha[e];
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            o[nt][0] *= alpha[0];
            o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1];
            o[nt][3] *= alpha[1];
        }
#pragma unroll
        for (int nt = 0; nt < ST; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float p = exp2f(sacc[nt][i] - msafe[i / 2]);
                sacc[nt][i] = p;
                l[i / 2] += p;
            }

        // O += P V: k-step kk covers keys [16kk, 16kk + 16) = S n-tiles 2kk and 2kk + 1.
#pragma unroll
        for (int kk = 0; kk < kPrefillBN / 16; ++kk) {
            const uint32_t pa[4] = {pack_half2(sacc[2 * kk][0], sacc[2 * kk][1]),
                                    pack_half2(sacc[2 * kk][2], sacc[2 * kk][3]),
                                    pack_half2(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]),
                                    pack_half2(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3])};
            const uint16_t* vr = Vs + (kk * 16 + 2 * tig) * LD + gid;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                // B = V[key][dim]: b[0] holds keys 2tig, 2tig+1 of dim nt*8 + gid, b[1] keys + 8.
                const uint16_t* vp = vr + nt * 8;
                const uint32_t b[2] = {(uint32_t)vp[0] | ((uint32_t)vp[LD] << 16),
                                       (uint32_t)vp[8 * LD] | ((uint32_t)vp[9 * LD] << 16)};
                mma_m16n8k16(o[nt], pa, b);
            }
        }
    }

    // Row sums over the quad, then the epilogue: element i of o[nt] is row e = i / 2, dim nt*8 + 2tig + i%2.
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        l[e] += __shfl_xor_sync(kFullMask, l[e], 1);
        l[e] += __shfl_xor_sync(kFullMask, l[e], 2);
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        if (!rvalid[e]) continue;
        const int64_t th = (int64_t)rt[e] * H + rh[e];
        if (nsplit == 1) {
            const float inv = 1.0f / l[e];
            const float* gate = qg + th * 2 * D + D + 2 * tig;
            float* dst = out + th * D + 2 * tig;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const float2 gv = *reinterpret_cast<const float2*>(gate + nt * 8);
                *reinterpret_cast<float2*>(dst + nt * 8) =
                    make_float2(o[nt][2 * e] * inv * sigmoid_f(gv.x), o[nt][2 * e + 1] * inv * sigmoid_f(gv.y));
            }
        } else {
            const int64_t ps = th * nsplit + s;
            if (tig == 0) part_ml[ps] = make_float2(m[e], l[e]);
            if (m[e] == -INFINITY) continue;  // no key of this split for the row: O is not read
            float* dst = part_o + ps * D + 2 * tig;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[nt][2 * e], o[nt][2 * e + 1]);
        }
    }
}

}  // namespace pq::cuda
