// mmq.cuh: the quantized prefill matmul (launch/mmq.cu) on int8 tensor cores, straight from the GGUF blocks.
//
//   y[t][r] = sum over 32-value sub-blocks s of  wsc[r][s] * ad[t][s] * (q_w[r][s] . q_a[t][s])
//                                               - wmn[r][s] * ad[t][s] * sum(q_a[t][s])
//
// q_a: the Q8_1 activations of the decode path (matvec.cuh quantize_act_kernel: d = amax/127 per 32 values,
// split layout), quantized once per call for every weight row; q_w: the weight levels unpacked to int8
// in shared memory (Q4_K/Q5_K: 0..15/0..31, Q6_K: -32..31, Q8_0: -128..127); wsc: the sub-block scale
// (d*sc, d for Q8_0; Q6_K has one per 16 values, so its 32-value sub-block carries two); wmn: the k-quant
// min (dmin*m; 0 for Q6_K/Q8_0). The dot products are mma.sync m16n8k32 s8 (Q6_K: two m16n8k16, one per
// scale) with exact int32 accumulation, one sub-block at a time; each is then turned into float and scaled.
// The min term uses the exact integer sum of the activation block (as matvec_types.cuh), not the fp16 `s`.
//
// The same arithmetic as the CPU reference up to the activations (Q8_1 per 32 here, Q8_K per 256 on the
// CPU for the k-quants) and float rounding: every integer product is exact, |acc| <= 32 * 127 * 128 < 2^22.
//
// Tiling (constants in plan/workspace_sizes.h, kMmq*): a CTA computes kMmqBM weight rows x kMmqBN tokens
// with 4 warps in a 2 x 2 grid, each warp 32 rows x 32 tokens = 2 x 4 fragments of m16n8, 32 float
// accumulators per thread. Per K step of 256 values (one k-quant super-block, 8 Q8_0 blocks) the CTA
// unpacks its rows' blocks and copies its tokens' Q8_1 values into shared memory (row stride 272 bytes:
// the 8 x 4 lanes of a fragment load hit 32 distinct banks), then every warp runs 8 sub-blocks x 8
// fragments of MMA. Scales live transposed ([sub][row], [sub][token]) so a warp's scale loads are
// conflict-free too. Grid: x = token tiles (fastest), y = row tiles, so the CTAs in flight together share
// a weight tile (one DRAM read of each weight byte per launch, the rest from L2) while the activations
// (n_tok * K * 1.03 bytes) stay L2-resident.
#pragma once

#include "../compat.cuh"
#include "../plan/workspace_sizes.h"
#include "matvec_types.cuh"
#include "reduce.cuh"

namespace pq::cuda {

// ---- int8 tensor-core MMA ------------------------------------------------------------------------------

// Register pairs for the twins' 64-bit shuffles (one rendezvous for two registers under the emulator).
__device__ __forceinline__ uint64_t pack64(uint32_t lo, uint32_t hi) { return (uint64_t)lo | ((uint64_t)hi << 32); }
__device__ __forceinline__ int lo32(uint64_t v) { return (int)(uint32_t)v; }
__device__ __forceinline__ int hi32(uint64_t v) { return (int)(uint32_t)(v >> 32); }

// c[4] (16x8 s32) += A (16x32 s8, row-major) * B (32x8 s8, "col": stored by columns), one warp.
// Fragments (PTX ISA, mma.m16n8k32 .s8), gid = lane / 4, tig = lane % 4, four int8 per register, the lowest
// k in the low byte:
//   a[0] = A[gid][4tig .. 4tig+3]       a[1] = A[gid+8][4tig .. 4tig+3]
//   a[2] = A[gid][16+4tig .. 16+4tig+3] a[3] = A[gid+8][16+4tig .. 16+4tig+3]
//   b[0] = B[4tig .. 4tig+3][gid]       b[1] = B[16+4tig .. 16+4tig+3][gid]
//   c[0], c[1] = C[gid][2tig, 2tig+1]   c[2], c[3] = C[gid+8][2tig, 2tig+1]
// The portable twin (emulator, pre-Ampere parts) fetches the two rows of A and the two columns of B this
// lane's outputs need with 16 64-bit shuffles and sums exact dp4a products: bit-identical to the tensor cores
// (integer arithmetic, no overflow for |C| < 2^31), so the emulated tests check the callers' bookkeeping.
__device__ __forceinline__ void mma_m16n8k32_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    const int lane = threadIdx.x % 32;
    const int gid = lane / 4, tig = lane % 4;
    // two registers per 64-bit shuffle: rows gid / gid+8 of A, k-halves of a column of B
    const uint64_t a01 = pack64(a[0], a[1]), a23 = pack64(a[2], a[3]), b01 = pack64(b[0], b[1]);
    int c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // k = 4j..4j+3 (a[0]/a[1], b[0]) and 16+4j..16+4j+3 (a[2]/a[3], b[1])
        const int src_a = gid * 4 + j;                                         // holds rows gid, gid+8
        const int src_b0 = (2 * tig) * 4 + j, src_b1 = (2 * tig + 1) * 4 + j;  // columns 2tig, 2tig+1
        const uint64_t x01 = __shfl_sync(kFullMask, a01, src_a), x23 = __shfl_sync(kFullMask, a23, src_a);
        const uint64_t y0 = __shfl_sync(kFullMask, b01, src_b0), y1 = __shfl_sync(kFullMask, b01, src_b1);
        const int a0 = lo32(x01), a1 = hi32(x01), a2 = lo32(x23), a3 = hi32(x23);
        const int b00 = lo32(y0), b10 = hi32(y0), b01_ = lo32(y1), b11 = hi32(y1);
        c0 = __dp4a(a2, b10, __dp4a(a0, b00, c0));
        c1 = __dp4a(a2, b11, __dp4a(a0, b01_, c1));
        c2 = __dp4a(a3, b10, __dp4a(a1, b00, c2));
        c3 = __dp4a(a3, b11, __dp4a(a1, b01_, c3));
    }
    c[0] = c0;
    c[1] = c1;
    c[2] = c2;
    c[3] = c3;
#endif
}

// c[4] (16x8 s32) += A (16x16 s8) * B (16x8 s8), one warp: mma.m16n8k16 .s8, whose fragments are the first
// half of m16n8k32's (a[0] = A[gid][4tig..], a[1] = A[gid+8][4tig..], b[0] = B[4tig..][gid]; C the same).
// Q6_K uses it: one scale per 16 values.
__device__ __forceinline__ void mma_m16n8k16_s8(int (&c)[4], const uint32_t (&a)[2], uint32_t b) {
#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
#else
    const int lane = threadIdx.x % 32;
    const int gid = lane / 4, tig = lane % 4;
    const uint64_t a01 = pack64(a[0], a[1]);
    int c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int src_a = gid * 4 + j;
        const int src_b0 = (2 * tig) * 4 + j, src_b1 = (2 * tig + 1) * 4 + j;
        const uint64_t x01 = __shfl_sync(kFullMask, a01, src_a);
        const int a0 = lo32(x01), a1 = hi32(x01);
        const int b0 = (int)__shfl_sync(kFullMask, b, src_b0), b1 = (int)__shfl_sync(kFullMask, b, src_b1);
        c0 = __dp4a(a0, b0, c0);
        c1 = __dp4a(a0, b1, c1);
        c2 = __dp4a(a1, b0, c2);
        c3 = __dp4a(a1, b1, c3);
    }
    c[0] = c0;
    c[1] = c1;
    c[2] = c2;
    c[3] = c3;
#endif
}

// An int32 of magnitude < 2^22 as float, exactly, with an integer and a float add instead of I2F (a
// quarter-rate conversion on Ampere/Ada, which at 4 conversions per MMA would outrun the tensor cores):
// 0x4B400000 is 1.5 * 2^23, whose ulp is 1, so adding x to its bits adds x to its value.
__device__ __forceinline__ float small_int_to_float(int x) { return __int_as_float(0x4B400000 + x) - 12582912.0f; }

// ---- weight unpackers: sub-block s (32 values) of a K step (256 values) --------------------------------
// unpack(step, s, q, sc, mn): q = the 32 levels as 8 words of int8 (value 4i+b in byte b of q[i]),
// sc[2] = the scale of values 0..15 and 16..31, mn = the min (subtracted, times the activation sum).
// `step` points at the K step's bytes of one row (kStepBytes), 16-byte aligned for Q4_K/Q5_K, 2 otherwise.
namespace mmq {

using mv::h2f;
using mv::ld16;
using mv::ld32;

// Q4_K / Q5_K: the sub-block's 6-bit scale and min times the block's fp16 d and dmin.
__device__ inline void scale_min_k(const uint8_t* blk, int s, float (&sc)[2], float& mn) {
    uint8_t scv, mval;
    pq::get_scale_min_k4(s, blk + 4, &scv, &mval);
    sc[0] = sc[1] = h2f(ld16(blk)) * (float)scv;
    mn = h2f(ld16(blk + 2)) * (float)mval;
}

struct Q4K {
    static constexpr int kStepBytes = 144;
    static constexpr bool kSplit16 = false, kHasMin = true;
    __device__ static void unpack(const uint8_t* blk, int s, uint32_t (&q)[8], float (&sc)[2], float& mn) {
        scale_min_k(blk, s, sc, mn);
        const uint8_t* qs = blk + 16 + 32 * (s >> 1);
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = (ld32<16>(qs + 4 * i) >> shift) & 0x0F0F0F0Fu;
    }
};

struct Q5K {
    static constexpr int kStepBytes = 176;
    static constexpr bool kSplit16 = false, kHasMin = true;
    __device__ static void unpack(const uint8_t* blk, int s, uint32_t (&q)[8], float (&sc)[2], float& mn) {
        scale_min_k(blk, s, sc, mn);
        const uint8_t* qh = blk + 16;  // bit s of qh[l]: bit 4 of value l of sub-block s
        const uint8_t* qs = blk + 48 + 32 * (s >> 1);
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i)
            q[i] = ((ld32<16>(qs + 4 * i) >> shift) & 0x0F0F0F0Fu) | (((ld32<16>(qh + 4 * i) >> s) & 0x01010101u) << 4);
    }
};

struct Q6K {
    static constexpr int kStepBytes = 210;
    static constexpr bool kSplit16 = true, kHasMin = false;
    __device__ static void unpack(const uint8_t* blk, int s, uint32_t (&q)[8], float (&sc)[2], float& mn) {
        const int n = s >> 2, k = s & 3;  // 128-value half n, quarter k: values 128n + 32k + l
        const uint8_t* ql = blk + 64 * n + 32 * (k & 1);
        const uint8_t* qh = blk + 128 + 32 * n;
        const int shift = 4 * (k >> 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t lo = (ld32<2>(ql + 4 * i) >> shift) & 0x0F0F0F0Fu;
            const uint32_t hi = ((ld32<2>(qh + 4 * i) >> (2 * k)) & 0x03030303u) << 4;
            q[i] = (uint32_t)mv::sub32x4(lo | hi);
        }
        const int8_t* scs = reinterpret_cast<const int8_t*>(blk + 192 + 8 * n + 2 * k);
        const float d = h2f(ld16(blk + 208));
        sc[0] = d * (float)scs[0];
        sc[1] = d * (float)scs[1];
        mn = 0.0f;
    }
};

struct Q80 {
    static constexpr int kStepBytes = 8 * 34;
    static constexpr bool kSplit16 = false, kHasMin = false;
    __device__ static void unpack(const uint8_t* blk, int s, uint32_t (&q)[8], float (&sc)[2], float& mn) {
        const uint8_t* b = blk + 34 * s;
        sc[0] = sc[1] = h2f(ld16(b));
        mn = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = ld32<2>(b + 2 + 4 * i);
    }
};

struct Args {
    const uint8_t* w;     // N rows of row_bytes
    int64_t row_bytes;
    const int8_t* qa;     // Q8_1 values [n_tok][K]
    const float2* ds;     // (d, s) [n_tok][K/32]
    int64_t K, N, n_tok;
    float* y;             // [n_tok][ldy]
    int64_t ldy;
};

}  // namespace mmq

// The shared-memory offsets as scalar constants (device code may read constexpr scalars, not call the
// host-side layout function).
constexpr size_t kMmqOffAq = mmq_smem_layout().aq, kMmqOffWsc = mmq_smem_layout().wsc;
constexpr size_t kMmqOffWmn = mmq_smem_layout().wmn, kMmqOffAd = mmq_smem_layout().ad;
constexpr size_t kMmqOffAs = mmq_smem_layout().as;

// Grid (cdiv(n_tok, kMmqBN), cdiv(N, kMmqBM)), kMmqThreads threads, mmq_smem_bytes() of dynamic shared memory.
template <class T>
__global__ void __launch_bounds__(kMmqThreads) mmq_kernel(const mmq::Args p) {
    PQ_DYN_SHARED(uint8_t, smem);
    uint8_t* wq = smem;                                       // [kMmqBM][kMmqRowStride] int8 levels
    uint8_t* aq = smem + kMmqOffAq;                           // [kMmqBN][kMmqRowStride] int8 activations
    float* wsc = reinterpret_cast<float*>(smem + kMmqOffWsc);  // [2 * kMmqSubs][kMmqBM] scale per 16 values
    float* wmn = reinterpret_cast<float*>(smem + kMmqOffWmn);  // [kMmqSubs][kMmqBM] min
    float* ad = reinterpret_cast<float*>(smem + kMmqOffAd);    // [kMmqSubs][kMmqBN] activation d
    float* as = reinterpret_cast<float*>(smem + kMmqOffAs);    // [kMmqSubs][kMmqBN] d * sum(q)

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int gid = lane / 4, tig = lane % 4;
    const int64_t tok0 = (int64_t)blockIdx.x * kMmqBN, row0 = (int64_t)blockIdx.y * kMmqBM;
    const int wm = (warp % 2) * 32, wn = (warp / 2) * 32;  // the warp's rows / tokens inside the tile
    const int64_t nsteps = p.K / kMmqKStep;
    const int64_t kblk = p.K / 32;

    float acc[2][4][4];
#pragma unroll
    for (int mf = 0; mf < 2; ++mf)
#pragma unroll
        for (int nf = 0; nf < 4; ++nf)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mf][nf][i] = 0.0f;

    for (int64_t ks = 0; ks < nsteps; ++ks) {
        // weights: unit u = (row u / kMmqSubs, sub-block u % kMmqSubs); rows past N are zeros
        for (int u = tid; u < kMmqBM * kMmqSubs; u += kMmqThreads) {
            const int r = u / kMmqSubs, s = u % kMmqSubs;
            uint32_t q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            float sc[2] = {0.0f, 0.0f}, mn = 0.0f;
            if (row0 + r < p.N) T::unpack(p.w + (row0 + r) * p.row_bytes + ks * T::kStepBytes, s, q, sc, mn);
            uint4* dst = reinterpret_cast<uint4*>(wq + r * kMmqRowStride + 32 * s);
            dst[0] = make_uint4(q[0], q[1], q[2], q[3]);
            dst[1] = make_uint4(q[4], q[5], q[6], q[7]);
            wsc[(2 * s) * kMmqBM + r] = sc[0];
            wsc[(2 * s + 1) * kMmqBM + r] = sc[1];
            wmn[s * kMmqBM + r] = mn;
        }
        // activations: unit u = (token u / kMmqSubs, block u % kMmqSubs); tokens past n_tok are zeros
        for (int u = tid; u < kMmqBN * kMmqSubs; u += kMmqThreads) {
            const int t = u / kMmqSubs, s = u % kMmqSubs;
            uint4 v0 = make_uint4(0, 0, 0, 0), v1 = v0;
            float d = 0.0f, ds = 0.0f;
            if (tok0 + t < p.n_tok) {
                const int64_t b = (tok0 + t) * kblk + ks * kMmqSubs + s;
                const uint4* src = reinterpret_cast<const uint4*>(p.qa + 32 * b);
                v0 = src[0];
                v1 = src[1];
                int sum = 0;
                sum = __dp4a((int)v0.x, 0x01010101, sum), sum = __dp4a((int)v0.y, 0x01010101, sum);
                sum = __dp4a((int)v0.z, 0x01010101, sum), sum = __dp4a((int)v0.w, 0x01010101, sum);
                sum = __dp4a((int)v1.x, 0x01010101, sum), sum = __dp4a((int)v1.y, 0x01010101, sum);
                sum = __dp4a((int)v1.z, 0x01010101, sum), sum = __dp4a((int)v1.w, 0x01010101, sum);
                d = p.ds[b].x;
                ds = d * (float)sum;
            }
            uint4* dst = reinterpret_cast<uint4*>(aq + t * kMmqRowStride + 32 * s);
            dst[0] = v0;
            dst[1] = v1;
            ad[s * kMmqBN + t] = d;
            as[s * kMmqBN + t] = ds;
        }
        __syncthreads();

#pragma unroll 1
        for (int s = 0; s < kMmqSubs; ++s) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int mf = 0; mf < 2; ++mf) {
                const uint8_t* r = wq + (wm + 16 * mf + gid) * kMmqRowStride + 32 * s + 4 * tig;
                a[mf][0] = *reinterpret_cast<const uint32_t*>(r);
                a[mf][1] = *reinterpret_cast<const uint32_t*>(r + 8 * kMmqRowStride);
                a[mf][2] = *reinterpret_cast<const uint32_t*>(r + 16);
                a[mf][3] = *reinterpret_cast<const uint32_t*>(r + 8 * kMmqRowStride + 16);
            }
#pragma unroll
            for (int nf = 0; nf < 4; ++nf) {
                const uint8_t* c = aq + (wn + 8 * nf + gid) * kMmqRowStride + 32 * s + 4 * tig;
                b[nf][0] = *reinterpret_cast<const uint32_t*>(c);
                b[nf][1] = *reinterpret_cast<const uint32_t*>(c + 16);
            }
            // scales of this lane's rows (wm + 16mf + gid + 8h) and tokens (wn + 8nf + 2tig + e)
            float sw[2][2][2], mw[2][2], da[4][2], sa[4][2];
#pragma unroll
            for (int mf = 0; mf < 2; ++mf)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = wm + 16 * mf + gid + 8 * h;
                    sw[mf][h][0] = wsc[(2 * s) * kMmqBM + r];
                    sw[mf][h][1] = wsc[(2 * s + 1) * kMmqBM + r];
                    mw[mf][h] = wmn[s * kMmqBM + r];
                }
#pragma unroll
            for (int nf = 0; nf < 4; ++nf)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int t = wn + 8 * nf + 2 * tig + e;
                    da[nf][e] = ad[s * kMmqBN + t];
                    sa[nf][e] = as[s * kMmqBN + t];
                }
#pragma unroll
            for (int mf = 0; mf < 2; ++mf)
#pragma unroll
                for (int nf = 0; nf < 4; ++nf) {
                    int c[4] = {0, 0, 0, 0};
                    if constexpr (T::kSplit16) {
                        int c2[4] = {0, 0, 0, 0};
                        const uint32_t a_lo[2] = {a[mf][0], a[mf][1]}, a_hi[2] = {a[mf][2], a[mf][3]};
                        mma_m16n8k16_s8(c, a_lo, b[nf][0]);
                        mma_m16n8k16_s8(c2, a_hi, b[nf][1]);
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const int h = i / 2, e = i % 2;
                            const float v = sw[mf][h][0] * small_int_to_float(c[i]) +
                                            sw[mf][h][1] * small_int_to_float(c2[i]);
                            acc[mf][nf][i] += da[nf][e] * v;
                        }
                    } else {
                        mma_m16n8k32_s8(c, a[mf], b[nf]);
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const int h = i / 2, e = i % 2;
                            acc[mf][nf][i] += (sw[mf][h][0] * da[nf][e]) * small_int_to_float(c[i]);
                            if constexpr (T::kHasMin) acc[mf][nf][i] -= mw[mf][h] * sa[nf][e];
                        }
                    }
                }
        }
        __syncthreads();  // the next step overwrites the tiles
    }

#pragma unroll
    for (int mf = 0; mf < 2; ++mf)
#pragma unroll
        for (int nf = 0; nf < 4; ++nf)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int64_t r = row0 + wm + 16 * mf + gid + 8 * (i / 2);
                const int64_t t = tok0 + wn + 8 * nf + 2 * tig + i % 2;
                if (r < p.N && t < p.n_tok) p.y[t * p.ldy + r] = acc[mf][nf][i];
            }
}

}  // namespace pq::cuda
