// attention_prefill.cuh: flash attention for n > 1 queries over the KV cache (causal, GQA); fp16 rows, or
// Q8_0 / Q4_0 rows dequantized to fp16 as each tile is copied to shared memory (no dequantized cache).
//
// Query rows are packed per KV head: row i of KV head g is token t = i / G, query head g*G + i % G, so the
// G heads sharing a KV head share every K/V tile (one K/V pass serves all 6 query heads of the model's
// GQA, ~10.7 tokens per 64-row tile). Grid (ceil(n*G / 64), Hkv, nsplit), 4 warps; warp w owns rows
// [16w, 16w+16) of the tile. The shape is FlashAttention-2's for head dim 256 on sm_86/89 (64 query rows,
// 32-key tiles, 4 warps, Q, K and V tiles in shared memory, one block per SM at D = 256):
//   - Q (fp16, as llama.cpp's FA kernels) is converted into shared memory once per block; each k-step's A
//     fragment comes from ldmatrix.x4 (Q in registers took 64 of the 255 registers at D = 256, the
//     kernel sat one toolchain change from spilling; the 128 fp32 O accumulators per lane remain);
//   - per tile of kBN = 32 keys of this block's split (up to the block's last causal key), fp16 K and V
//     rows stream in with cp.async, V's copy overlapping S = Q K^T and the next K's copy overlapping the
//     softmax and P V (FlashAttention-2's schedule; quantized rows are dequantized through registers);
//     rows are padded by 8 halves, so ldmatrix's eight 16-byte rows hit eight different bank groups;
//   - S = Q K^T (tensor cores, fp32 accumulate; K fragments by ldmatrix.x4), scale and causal mask
//     (key <= pos0 + t) in fp32;
//   - online softmax in fp32 per row (quad shuffles), P re-packed from the S accumulators straight into A
//     fragments (the m16n8 C layout of two key octets is the m16n8k16 A layout), O += P V (fp32 acc; V
//     fragments by ldmatrix.x4.trans);
//   - a warp whose rows all end before the tile skips its math (causal), still joining the barriers.
// One split writes the gated output (with a rotated V cache, rotated back first: hadamard.cuh); several (small batches over long caches, e.g. speculative
// verification) write partials for attn_combine_kernel. mma_m16n8k16 (attention_common.cuh), ldmatrix and
// cp.async (tile_load.cuh) are inline PTX on the GPU and portable twins in the emulator.
#pragma once

#include "../compat.cuh"
#include "attention_common.cuh"
#include "tile_load.cuh"
#include "../plan/workspace_sizes.h"

namespace pq::cuda {

// kPrefillWarps, kPrefillBM (query rows per block): plan/workspace_sizes.h (the split count and so the
// scratch depend on them).
constexpr int kPrefillBN = 32;                  // keys per tile

// Shared memory: the Q tile, one K tile and one V tile, rows padded to D + 8 halves. D = 256: 67,584
// bytes (above the 48 KiB default: the launcher opts in, up to the 99 KiB sm_86/89/120 allow per block).
template <int D>
constexpr size_t prefill_smem_bytes() {
    return sizeof(uint16_t) * (kPrefillBM + 2 * kPrefillBN) * (D + 8);
}

// Copies keys [j0, j0 + kPrefillBN) of one head into a shared tile (row stride LD halves); keys at or past
// kend become zeros. fp16 rows go by cp.async (one commit group per tile), quantized rows are dequantized
// through registers (still one commit, empty, so the group count stays the same on both paths).
template <int D, class Copies>
__device__ __forceinline__ void prefill_load_tile(Copies& cp, uint16_t* tile, const uint8_t* head, int64_t row_bytes,
                                                  int type, int j0, int kend, int tid) {
    constexpr int LD = D + 8, CPR = D / 8;  // 16-byte chunks per row
    for (int c = tid; c < kPrefillBN * CPR; c += kPrefillWarps * 32) {
        const int key = c / CPR, part = c % CPR;
        const int j = j0 + key;
        uint16_t* dst = tile + key * LD + part * 8;
        if (type == T_F16) {
            cp.copy16(dst, reinterpret_cast<const uint16_t*>(head + (int64_t)(j < kend ? j : 0) * row_bytes) + part * 8,
                      j < kend);
        } else {
            const uint4 w = j < kend ? load_kv_half8(head + (int64_t)j * row_bytes, type, part * 8) : make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4*>(dst) = w;
        }
    }
    cp.commit();
}

template <int D>
__global__ void __launch_bounds__(kPrefillWarps * 32)
    attn_prefill_kernel(const float* __restrict__ qg, const uint8_t* __restrict__ k_cache,
                        const uint8_t* __restrict__ v_cache, KvLayout kv, float* __restrict__ out, float* __restrict__ part_o,
                        float2* __restrict__ part_ml, int H, int Hkv, int pos0, int n, int split_len,
                        float s_scale) {
    static_assert(D % 16 == 0 && D <= 256, "D a multiple of 16, at most 256");
    constexpr int LD = D + 8;      // shared row stride in halves (16-byte multiple, 16 bytes past 128)
    constexpr int KS = D / 16;     // k-steps of Q K^T
    constexpr int NT = D / 8;      // n-tiles of O
    constexpr int ST = kPrefillBN / 8;  // n-tiles of S
    constexpr int CPR = D / 8;     // 16-byte chunks per row
    // Copies a thread has in flight at most: one K tile and one V tile.
    constexpr int kCopies = 2 * ((kPrefillBN * CPR + kPrefillWarps * 32 - 1) / (kPrefillWarps * 32));
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

    PQ_DYN_SHARED(uint16_t, smem);
    uint16_t* Qs = smem;
    uint16_t* Ks = Qs + kPrefillBM * LD;
    uint16_t* Vs = Ks + kPrefillBN * LD;
    const uint8_t* kh = k_cache + (int64_t)g * kv.k_head;
    const uint8_t* vh = v_cache + (int64_t)g * kv.v_head;

    AsyncCopies<kCopies> cp;
    if (kbeg < kend) prefill_load_tile<D>(cp, Ks, kh, kv.k_row, kv.k_type, kbeg, kend, tid);

    // The Q tile (fp32 rows of qg -> fp16; rows past the batch are zeros), while K's first tile streams in.
    for (int c = tid; c < kPrefillBM * CPR; c += kPrefillWarps * 32) {
        const int r = c / CPR, part = c % CPR;
        const int row = tile0 + r;
        uint4 w = make_uint4(0, 0, 0, 0);
        if (row < rows) {
            const float* qr = qg + ((int64_t)(row / G) * H + g * G + row % G) * 2 * D + part * 8;
            const float4 lo = *reinterpret_cast<const float4*>(qr), hi = *reinterpret_cast<const float4*>(qr + 4);
            w = make_uint4(pack_half2(lo.x, lo.y), pack_half2(lo.z, lo.w), pack_half2(hi.x, hi.y),
                           pack_half2(hi.z, hi.w));
        }
        *reinterpret_cast<uint4*>(Qs + r * LD + part * 8) = w;
    }

    float o[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[nt][i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    // ldmatrix row addresses (lane 8i + r gives row r of matrix i), fixed per lane:
    //   A (Q rows 16w.., k-step ks): matrices (rows 0-7 | 8-15) x (dims 0-7 | 8-15), in a[0..3] order;
    //   B of S (keys 16p.., dims 16ks..): matrices (keys 0-7, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15,
    //     dims 0-7), (keys 8-15, dims 8-15): b of key octet 2p is {r0, r1}, of 2p + 1 {r2, r3};
    //   B of P V (.trans; keys 16kk.., dims 16p..): (keys 0-7 | 8-15) x (dims 0-7 | 8-15): b of dim octet
    //     2p is {r0, r1}, of 2p + 1 {r2, r3}.
    const int mi = lane / 8, mr = lane % 8;
    const uint16_t* a_row = Qs + (warp * 16 + mr + 8 * (mi % 2)) * LD + 8 * (mi / 2);
    const uint16_t* k_row = Ks + (mr + 8 * (mi / 2)) * LD + 8 * (mi % 2);
    const uint16_t* v_row = Vs + (mr + 8 * (mi % 2)) * LD + 8 * (mi / 2);

    for (int j0 = kbeg; j0 < kend; j0 += kPrefillBN) {
        // Ks holds (or is receiving) this tile's keys; Vs is free (the loop's last barrier).
        prefill_load_tile<D>(cp, Vs, vh, kv.v_row, kv.v_type, j0, kend, tid);
        cp.template wait<1>();  // all but V's group: this tile's K has landed (and, the first time, Q is written)
        __syncthreads();
        const bool active = j0 < warp_end;  // causal: some row of this warp reaches the tile (warp-uniform)

        float sacc[ST][4];
#pragma unroll
        for (int nt = 0; nt < ST; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) sacc[nt][i] = 0.0f;
        if (active) {
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                uint32_t a[4];
                ldmatrix_x4(a, a_row + ks * 16);
#pragma unroll
                for (int p = 0; p < ST / 2; ++p) {
                    uint32_t b[4];
                    ldmatrix_x4(b, k_row + p * 16 * LD + ks * 16);
                    const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                    mma_m16n8k16(sacc[2 * p], a, b0);
                    mma_m16n8k16(sacc[2 * p + 1], a, b1);
                }
            }
        }
        __syncthreads();  // every warp is done with Ks
        if (j0 + kPrefillBN < kend)
            prefill_load_tile<D>(cp, Ks, kh, kv.k_row, kv.k_type, j0 + kPrefillBN, kend, tid);
        else
            cp.commit();  // an empty group: the waits below count the same on the last tile

        float alpha[2] = {1.0f, 1.0f}, msafe[2] = {0.0f, 0.0f};
        if (active) {
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
        }

        cp.template wait<1>();  // all but the next K's group: this tile's V has landed
        __syncthreads();
        if (active) {
            // O += P V: k-step kk covers keys [16kk, 16kk + 16) = S n-tiles 2kk and 2kk + 1.
#pragma unroll
            for (int kk = 0; kk < kPrefillBN / 16; ++kk) {
                const uint32_t pa[4] = {pack_half2(sacc[2 * kk][0], sacc[2 * kk][1]),
                                        pack_half2(sacc[2 * kk][2], sacc[2 * kk][3]),
                                        pack_half2(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]),
                                        pack_half2(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3])};
#pragma unroll
                for (int p = 0; p < NT / 2; ++p) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, v_row + kk * 16 * LD + p * 16);
                    const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                    mma_m16n8k16(o[2 * p], pa, b0);
                    mma_m16n8k16(o[2 * p + 1], pa, b1);
                }
            }
        }
        __syncthreads();  // every warp is done with Vs
    }

    // Row sums over the quad, then the epilogue: element i of o[nt] is row e = i / 2, dim nt*8 + 2tig + i%2.
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        l[e] += __shfl_xor_sync(kFullMask, l[e], 1);
        l[e] += __shfl_xor_sync(kFullMask, l[e], 2);
    }
    if (kv.v_rot && nsplit == 1) {
        // A rotated V cache (uniform over the grid): the tile's normalised rows go through shared memory
        // (the Q/K/V tiles are no longer read) to be rotated back (hadamard.cuh), then are gated.
        static_assert(sizeof(float) * kPrefillBM * D <= sizeof(uint16_t) * (kPrefillBM + 2 * kPrefillBN) * (D + 8),
                      "the O tile fits the tiles' space (prefill_smem_bytes)");
        float* os = reinterpret_cast<float*>(smem);  // [kPrefillBM][D]
        __syncthreads();  // without a key tile (no loop) a Q-tile store may still be pending elsewhere
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const float inv = rvalid[e] ? 1.0f / l[e] : 0.0f;  // rows past the batch: zeros, not written out
            float* dst = os + (warp * 16 + gid + 8 * e) * D + 2 * tig;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[nt][2 * e] * inv, o[nt][2 * e + 1] * inv);
        }
        __syncthreads();
        hadamard_rotate(os, kPrefillBM * D, kv.v_rot, tid, kPrefillWarps * 32, BlockSync{});
        for (int idx = tid; idx < kPrefillBM * D; idx += kPrefillWarps * 32) {
            const int row = tile0 + idx / D, d = idx % D;
            if (row >= rows) break;  // rows are in order: every later idx of this thread is past the batch too
            const int64_t th = (int64_t)(row / G) * H + g * G + row % G;
            out[th * D + d] = attn_gate(os[idx], qg, th, d, D);
        }
        return;
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
