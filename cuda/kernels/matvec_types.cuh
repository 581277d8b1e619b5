// matvec_types.cuh: per-type weight decoders shared by the quantized matrix-vector kernel (matvec.cuh),
// the embedding gather and the prefill dequantizer (get_rows.cuh).
//
// Every weight type is a struct of static functions over raw block bytes (formats.h layouts):
//
//   kBlockVals, kBlockBytes   block geometry (float types: a "block" of 8 values, see below)
//   kUnits                    work units per block: a unit is the 32 values (8 for float types) one
//                             lane of the matvec kernel handles; units of one block are adjacent lanes
//   kAlign                    alignment of a block inside a 16-byte-aligned row buffer, gcd(bytes, 16)
//   W / load_w(w, blk, u)     unit u of the block at blk, decoded once into registers (integer levels
//                             packed 4 per int, scales as floats)
//   A / load_a(a, act, ib, u) the matching 32 activations of one token: QAct (quantized types, the Q8_1
//                             values in the kernels' split layout, see QAct) or floats (F16/BF16/F32),
//                             where ib is the block index within the row
//   dot(w, a)                 the unit's contribution to the row's dot product
//   kSubs / dequant(blk, s, y)   values 32*s .. 32*s+31 of the block (8*s.. for float types) as floats,
//                             bit-identical with the CPU dequantizers (csrc/quants_*.cpp, which are
//                             compiled with -ffp-contract=off: hence __fmul_rn/__fadd_rn below)
//
// Integer dot products use __dp4a on int8x4 words: 4-bit/5-bit/6-bit levels are unpacked with masks, the
// signed offsets (-8, -16, -32) are applied per byte with carry-free bit tricks, and the IQ4 codebook is
// applied with __byte_perm. The min terms of Q4_K/Q5_K use the exact integer sums of the Q8_1 values
// (__dp4a against 0x01010101, as ggml's vec_dot_q4_K_q8_1), not the fp16 `s` field; only Q4_1/Q5_1 use
// `s` (m * s), exactly as the CPU reference does for those types.
//
// `blk` points into shared memory (the matvec kernel stages weight bytes there) or global memory (the
// dequantizers); loads of 32-bit words use the narrowest access the block alignment guarantees.
#pragma once

#include "../compat.cuh"

namespace pq::cuda::mv {

// ---- small helpers ---------------------------------------------------------------------------------
__device__ __forceinline__ float h2f(uint16_t bits) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
}

__device__ __forceinline__ uint16_t ld16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// 32-bit word at p, p aligned to A bytes (A = 2: two 16-bit loads).
template <int A>
__device__ __forceinline__ uint32_t ld32(const uint8_t* p) {
    if constexpr (A >= 4) {
        return *reinterpret_cast<const uint32_t*>(p);
    } else {
        const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
        return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
    }
}

__device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }

// Per-byte signed offsets, carry-free: bytes hold levels 0..2^(k+1)-1, result bytes hold level - 2^k.
// (level & (2^k-1)) | (bit k clear ? -2^k : 0): e.g. k = 3: 5 -> 5|0xF8 = -3, 12 -> 4.
__device__ __forceinline__ int sub8x4(uint32_t v) { return (int)((v & 0x07070707u) | ((~v & 0x08080808u) * 0x1Fu)); }
__device__ __forceinline__ int sub16x4(uint32_t v) { return (int)((v & 0x0F0F0F0Fu) | ((~v & 0x10101010u) * 0x0Fu)); }
__device__ __forceinline__ int sub32x4(uint32_t v) { return (int)((v & 0x1F1F1F1Fu) | ((~v & 0x20202020u) * 0x07u)); }

// Bits 0..3 of b moved to bit 4 of bytes 0..3 (the 5th bit of 4 consecutive Q5_0/Q5_1 values).
__device__ __forceinline__ uint32_t spread4_bit4(uint32_t b) {
    return ((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25);
}

// IQ4 codebook (kvalues_iq4nl) as four little-endian words: bytes 0..15 = entries 0..15.
__device__ __forceinline__ int iq4_lookup(uint32_t nib) {
    // nib: four codebook indices, one per byte (0..15). __byte_perm selects with the low 3 bits of each
    // selector nibble, so indices 0..7 and 8..15 are looked up separately and merged by bit 3.
    constexpr uint32_t T0 = 0xBFAD9881u;  // -127 -104  -83  -65 (byte 0 first)
    constexpr uint32_t T1 = 0xF6EADDCFu;  //  -49  -35  -22  -10
    constexpr uint32_t T2 = 0x26190D01u;  //    1   13   25   38
    constexpr uint32_t T3 = 0x71594535u;  //   53   69   89  113
    const uint32_t sel7 = nib & 0x07070707u;
    // byte k of sel7 -> selector nibble k
    const uint32_t t = sel7 | (sel7 >> 4);
    const uint32_t sel = (t & 0xFFu) | ((t >> 8) & 0xFF00u);
    const uint32_t lo = __byte_perm(T0, T1, sel);
    const uint32_t hi = __byte_perm(T2, T3, sel);
    const uint32_t m = ((nib >> 3) & 0x01010101u) * 0xFFu;  // 0xFF in bytes whose index is >= 8
    return (int)((lo & ~m) | (hi & m));
}

// ---- activations -------------------------------------------------------------------------------------
// Q8_1 activations of one token in the split layout written by quantize_act_kernel (matvec.cuh): the K
// int8 values contiguous (16-byte aligned), and per 32-value block (d, s) as floats (the fp16-rounded d and
// s of block_q8_1, widened). Lanes then fetch their 32 (or 2 x 16) values with 128-bit loads; with the
// 36-byte block_q8_1 a warp's 4-byte loads touch ~9 cache lines each (L1-wavefront bound from 2 tokens on).
struct QAct {
    const int8_t* qs;  // K values
    const float2* ds;  // K / 32 blocks
};

// One whole Q8_1 block: 32 int8 as 8 words, d and s.
struct Act32 {
    int q[8];
    float d, s;
};

__device__ __forceinline__ void load_act32(Act32& a, const QAct& x, int64_t b) {
    const int4* q = reinterpret_cast<const int4*>(x.qs + 32 * b);
    const int4 q0 = q[0], q1 = q[1];
    a.q[0] = q0.x, a.q[1] = q0.y, a.q[2] = q0.z, a.q[3] = q0.w;
    a.q[4] = q1.x, a.q[5] = q1.y, a.q[6] = q1.z, a.q[7] = q1.w;
    const float2 ds = x.ds[b];
    a.d = ds.x;
    a.s = ds.y;
}

__device__ __forceinline__ int dot8(const int* w, const int* a) {
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) s = dp4a(w[i], a[i], s);
    return s;
}

// ================================= 32-value formats: one unit per block ================================
// Q8_0: x = d * q.
struct TQ8_0 {
    static constexpr int kBlockVals = 32, kBlockBytes = 34, kUnits = 1, kAlign = 2, kSubs = 1;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float d;
    };
    using A = Act32;
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
        w.d = h2f(ld16(blk));
#pragma unroll
        for (int i = 0; i < 8; ++i) w.q[i] = (int)ld32<kAlign>(blk + 2 + 4 * i);
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int) { load_act32(a, x, ib); }
    __device__ static float dot(const W& w, const A& a) { return w.d * a.d * (float)dot8(w.q, a.q); }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
        const float d = h2f(ld16(blk));
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
#pragma unroll
        for (int j = 0; j < 32; ++j) y[j] = __fmul_rn((float)q[j], d);
    }
};

// Q4_0: x = d * (q - 8); value j in the low nibble of qs[j], j + 16 in the high nibble.
struct TQ4_0 {
    static constexpr int kBlockVals = 32, kBlockBytes = 18, kUnits = 1, kAlign = 2, kSubs = 1;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float d;
    };
    using A = Act32;
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
        w.d = h2f(ld16(blk));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + 2 + 4 * i);
            w.q[i] = sub8x4(v & 0x0F0F0F0Fu);
            w.q[i + 4] = sub8x4((v >> 4) & 0x0F0F0F0Fu);
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int) { load_act32(a, x, ib); }
    __device__ static float dot(const W& w, const A& a) { return w.d * a.d * (float)dot8(w.q, a.q); }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
        const float d = h2f(ld16(blk));
        const uint8_t* qs = blk + 2;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            y[j] = __fmul_rn((float)((qs[j] & 0x0F) - 8), d);
            y[j + 16] = __fmul_rn((float)((qs[j] >> 4) - 8), d);
        }
    }
};

// Q4_1: x = d * q + m; the dot uses m * s (s = d8 * sum(q8) of the Q8_1 block), as the CPU reference.
struct TQ4_1 {
    static constexpr int kBlockVals = 32, kBlockBytes = 20, kUnits = 1, kAlign = 4, kSubs = 1;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float d, m;
    };
    using A = Act32;
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
        w.d = h2f(ld16(blk));
        w.m = h2f(ld16(blk + 2));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + 4 + 4 * i);
            w.q[i] = (int)(v & 0x0F0F0F0Fu);
            w.q[i + 4] = (int)((v >> 4) & 0x0F0F0F0Fu);
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int) { load_act32(a, x, ib); }
    __device__ static float dot(const W& w, const A& a) { return w.d * a.d * (float)dot8(w.q, a.q) + w.m * a.s; }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
        const float d = h2f(ld16(blk)), m = h2f(ld16(blk + 2));
        const uint8_t* qs = blk + 4;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            y[j] = __fadd_rn(__fmul_rn((float)(qs[j] & 0x0F), d), m);
            y[j + 16] = __fadd_rn(__fmul_rn((float)(qs[j] >> 4), d), m);
        }
    }
};

// Q5_0: x = d * (q - 16); bit 4 of value j is bit j of qh.
struct TQ5_0 {
    static constexpr int kBlockVals = 32, kBlockBytes = 22, kUnits = 1, kAlign = 2, kSubs = 1;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float d;
    };
    using A = Act32;
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
        w.d = h2f(ld16(blk));
        const uint32_t qh = ld32<kAlign>(blk + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + 6 + 4 * i);
            w.q[i] = sub16x4((v & 0x0F0F0F0Fu) | spread4_bit4((qh >> (4 * i)) & 0xFu));
            w.q[i + 4] = sub16x4(((v >> 4) & 0x0F0F0F0Fu) | spread4_bit4((qh >> (16 + 4 * i)) & 0xFu));
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int) { load_act32(a, x, ib); }
    __device__ static float dot(const W& w, const A& a) { return w.d * a.d * (float)dot8(w.q, a.q); }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
        const float d = h2f(ld16(blk));
        const uint32_t qh = ld32<kAlign>(blk + 2);
        const uint8_t* qs = blk + 6;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int x0 = ((qs[j] & 0x0F) | (int)(((qh >> j) << 4) & 0x10)) - 16;
            const int x1 = ((qs[j] >> 4) | (int)((qh >> (j + 12)) & 0x10)) - 16;
            y[j] = __fmul_rn((float)x0, d);
            y[j + 16] = __fmul_rn((float)x1, d);
        }
    }
};

// Q5_1: x = d * q + m (5-bit q), dot with m * s.
struct TQ5_1 {
    static constexpr int kBlockVals = 32, kBlockBytes = 24, kUnits = 1, kAlign = 8, kSubs = 1;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float d, m;
    };
    using A = Act32;
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
        w.d = h2f(ld16(blk));
        w.m = h2f(ld16(blk + 2));
        const uint32_t qh = ld32<kAlign>(blk + 4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + 8 + 4 * i);
            w.q[i] = (int)((v & 0x0F0F0F0Fu) | spread4_bit4((qh >> (4 * i)) & 0xFu));
            w.q[i + 4] = (int)(((v >> 4) & 0x0F0F0F0Fu) | spread4_bit4((qh >> (16 + 4 * i)) & 0xFu));
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int) { load_act32(a, x, ib); }
    __device__ static float dot(const W& w, const A& a) { return w.d * a.d * (float)dot8(w.q, a.q) + w.m * a.s; }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
        const float d = h2f(ld16(blk)), m = h2f(ld16(blk + 2));
        const uint32_t qh = ld32<kAlign>(blk + 4);
        const uint8_t* qs = blk + 8;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int x0 = (qs[j] & 0x0F) | (int)(((qh >> j) << 4) & 0x10);
            const int x1 = (qs[j] >> 4) | (int)((qh >> (j + 12)) & 0x10);
            y[j] = __fadd_rn(__fmul_rn((float)x0, d), m);
            y[j + 16] = __fadd_rn(__fmul_rn((float)x1, d), m);
        }
    }
};

// IQ4_NL: x = d * kvalues_iq4nl[nibble]; same nibble order as Q4_0.
struct TIQ4_NL {
    static constexpr int kBlockVals = 32, kBlockBytes = 18, kUnits = 1, kAlign = 2, kSubs = 1;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float d;
    };
    using A = Act32;
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
        w.d = h2f(ld16(blk));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + 2 + 4 * i);
            w.q[i] = iq4_lookup(v & 0x0F0F0F0Fu);
            w.q[i + 4] = iq4_lookup((v >> 4) & 0x0F0F0F0Fu);
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int) { load_act32(a, x, ib); }
    __device__ static float dot(const W& w, const A& a) { return w.d * a.d * (float)dot8(w.q, a.q); }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
        const float d = h2f(ld16(blk));
        const uint8_t* qs = blk + 2;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            y[j] = __fmul_rn(d, (float)pq::kvalues_iq4nl[qs[j] & 0xF]);
            y[j + 16] = __fmul_rn(d, (float)pq::kvalues_iq4nl[qs[j] >> 4]);
        }
    }
};

// ================================= 256-value formats: 8 units per block ================================
// IQ4_XS: unit u = sub-block u (32 values): scale ls = 6 bits from scales_l/scales_h, x = d*(ls-32)*kv.
struct TIQ4_XS {
    static constexpr int kBlockVals = 256, kBlockBytes = 136, kUnits = 8, kAlign = 8, kSubs = 8;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[8];
        float dl;
    };
    using A = Act32;
    __device__ static int scale(const uint8_t* blk, int ib) {
        const int lo = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
        const int hi = (ld16(blk + 2) >> (2 * ib)) & 3;
        return (lo | (hi << 4)) - 32;
    }
    __device__ static void load_w(W& w, const uint8_t* blk, int u) {
        w.dl = h2f(ld16(blk)) * (float)scale(blk, u);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + 8 + 16 * u + 4 * i);
            w.q[i] = iq4_lookup(v & 0x0F0F0F0Fu);
            w.q[i + 4] = iq4_lookup((v >> 4) & 0x0F0F0F0Fu);
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int u) { load_act32(a, x, ib * 8 + u); }
    __device__ static float dot(const W& w, const A& a) { return w.dl * a.d * (float)dot8(w.q, a.q); }
    __device__ static void dequant(const uint8_t* blk, int s, float* y) {
        const float dl = __fmul_rn(h2f(ld16(blk)), (float)scale(blk, s));
        const uint8_t* qs = blk + 8 + 16 * s;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            y[j] = __fmul_rn(dl, (float)pq::kvalues_iq4nl[qs[j] & 0xF]);
            y[j + 16] = __fmul_rn(dl, (float)pq::kvalues_iq4nl[qs[j] >> 4]);
        }
    }
};

// Q4_K / Q5_K: unit u = 16 bytes of qs: j = u/2 (64-value group), h = u%2 (half of the group's 32 bytes).
// Low nibbles are values 64j + 16h + i (sub-block 2j), high nibbles 64j + 32 + 16h + i (sub-block 2j+1),
// i = 0..15. x = d*sc*q - dmin*m per sub-block, so the unit contributes
//   d * (d8a*sc_a*dot_a + d8b*sc_b*dot_b) - dmin * (d8a*m_a*sum_a + d8b*m_b*sum_b)
// with dot/sum over the unit's 16 values of each sub-block (sum = sum of the q8 values, exact).
struct ActK2 {  // halves of two Q8_1 blocks (16 values each)
    int a[4], b[4];
    float da, db;
};

template <bool kQ5>
struct TQxK {
    static constexpr int kBlockVals = 256, kBlockBytes = kQ5 ? 176 : 144, kUnits = 8, kAlign = 16, kSubs = 8;
    static constexpr int kQs = kQ5 ? 48 : 16;  // offset of qs in the block
    static constexpr bool kFloatAct = false;
    struct W {
        int lo[4], hi[4];
        float d, dmin;
        int sca, scb, ma, mb;
    };
    using A = ActK2;
    __device__ static void load_w(W& w, const uint8_t* blk, int u) {
        const int j = u >> 1, h = u & 1;
        w.d = h2f(ld16(blk));
        w.dmin = h2f(ld16(blk + 2));
        uint8_t sc, m;
        pq::get_scale_min_k4(2 * j, blk + 4, &sc, &m);
        w.sca = sc;
        w.ma = m;
        pq::get_scale_min_k4(2 * j + 1, blk + 4, &sc, &m);
        w.scb = sc;
        w.mb = m;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = ld32<kAlign>(blk + kQs + 32 * j + 16 * h + 4 * i);
            uint32_t lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu;
            if constexpr (kQ5) {
                const uint32_t qh = ld32<kAlign>(blk + 16 + 16 * h + 4 * i);
                lo |= ((qh >> (2 * j)) & 0x01010101u) << 4;
                hi |= ((qh >> (2 * j + 1)) & 0x01010101u) << 4;
            }
            w.lo[i] = (int)lo;
            w.hi[i] = (int)hi;
        }
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int u) {
        const int j = u >> 1, h = u & 1;
        const int8_t* q = x.qs + 256 * ib + 64 * j + 16 * h;
        const int4 qa = *reinterpret_cast<const int4*>(q), qb = *reinterpret_cast<const int4*>(q + 32);
        a.a[0] = qa.x, a.a[1] = qa.y, a.a[2] = qa.z, a.a[3] = qa.w;
        a.b[0] = qb.x, a.b[1] = qb.y, a.b[2] = qb.z, a.b[3] = qb.w;
        const float4 ds = *reinterpret_cast<const float4*>(x.ds + ib * 8 + 2 * j);  // blocks 2j, 2j+1
        a.da = ds.x;
        a.db = ds.z;
    }
    __device__ static float dot(const W& w, const A& a) {
        int dota = 0, dotb = 0, suma = 0, sumb = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            dota = dp4a(w.lo[i], a.a[i], dota);
            dotb = dp4a(w.hi[i], a.b[i], dotb);
            suma = dp4a(0x01010101, a.a[i], suma);
            sumb = dp4a(0x01010101, a.b[i], sumb);
        }
        const float sd = a.da * (float)(dota * w.sca) + a.db * (float)(dotb * w.scb);
        const float sm = a.da * (float)(suma * w.ma) + a.db * (float)(sumb * w.mb);
        return w.d * sd - w.dmin * sm;
    }
    __device__ static void dequant(const uint8_t* blk, int s, float* y) {
        const float d = h2f(ld16(blk)), dmin = h2f(ld16(blk + 2));
        uint8_t sc, m;
        pq::get_scale_min_k4(s, blk + 4, &sc, &m);
        const float dl = __fmul_rn(d, (float)sc), ml = __fmul_rn(dmin, (float)m);
        const uint8_t* qs = blk + kQs + 32 * (s >> 1);
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            int q = (qs[l] >> shift) & 0xF;
            if constexpr (kQ5) q |= ((blk[16 + l] >> s) & 1) << 4;
            y[l] = __fsub_rn(__fmul_rn(dl, (float)q), ml);
        }
    }
};
using TQ4_K = TQxK<false>;
using TQ5_K = TQxK<true>;

// Q6_K: unit u: n = u/4 (128-value half), lq = u%4 covers l = 8lq .. 8lq+7 of the four 32-value quarters
// k = 0..3 (values 128n + 32k + l): levels from ql[64n + l] / ql[64n + 32 + l] nibbles and bit pairs of
// qh[32n + l]; scale sc[8n + lq/2 + 2k]. x = d * sc * (q - 32).
struct ActQ6 {
    int q[4][2];
    float d[4];
};

struct TQ6_K {
    static constexpr int kBlockVals = 256, kBlockBytes = 210, kUnits = 8, kAlign = 2, kSubs = 8;
    static constexpr bool kFloatAct = false;
    struct W {
        int q[4][2];
        int sc[4];
        float d;
    };
    using A = ActQ6;
    __device__ static void load_w(W& w, const uint8_t* blk, int u) {
        const int n = u >> 2, lq = u & 3;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint32_t ql0 = ld32<kAlign>(blk + 64 * n + 8 * lq + 4 * i);
            const uint32_t ql1 = ld32<kAlign>(blk + 64 * n + 32 + 8 * lq + 4 * i);
            const uint32_t qh = ld32<kAlign>(blk + 128 + 32 * n + 8 * lq + 4 * i);
            w.q[0][i] = sub32x4((ql0 & 0x0F0F0F0Fu) | ((qh << 4) & 0x30303030u));
            w.q[1][i] = sub32x4((ql1 & 0x0F0F0F0Fu) | ((qh << 2) & 0x30303030u));
            w.q[2][i] = sub32x4(((ql0 >> 4) & 0x0F0F0F0Fu) | (qh & 0x30303030u));
            w.q[3][i] = sub32x4(((ql1 >> 4) & 0x0F0F0F0Fu) | ((qh >> 2) & 0x30303030u));
        }
        const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * n + (lq >> 1));
#pragma unroll
        for (int k = 0; k < 4; ++k) w.sc[k] = sc[2 * k];
        w.d = h2f(ld16(blk + 208));
    }
    __device__ static void load_a(A& a, const QAct& x, int64_t ib, int u) {
        const int n = u >> 2, lq = u & 3;
        const int8_t* q = x.qs + 256 * ib + 128 * n + 8 * lq;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int2 v = *reinterpret_cast<const int2*>(q + 32 * k);
            a.q[k][0] = v.x;
            a.q[k][1] = v.y;
        }
        const float4* ds = reinterpret_cast<const float4*>(x.ds + ib * 8 + 4 * n);  // blocks 4n .. 4n+3
        const float4 d01 = ds[0], d23 = ds[1];
        a.d[0] = d01.x, a.d[1] = d01.z, a.d[2] = d23.x, a.d[3] = d23.z;
    }
    __device__ static float dot(const W& w, const A& a) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int dk = dp4a(w.q[k][1], a.q[k][1], dp4a(w.q[k][0], a.q[k][0], 0));
            s += a.d[k] * (float)(dk * w.sc[k]);
        }
        return w.d * s;
    }
    __device__ static void dequant(const uint8_t* blk, int s, float* y) {
        const int n = s >> 2, k = s & 3;
        const float d = h2f(ld16(blk + 208));
        const uint8_t* ql = blk + 64 * n + 32 * (k & 1);
        const uint8_t* qh = blk + 128 + 32 * n;
        const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * n + 2 * k);
        const int shift = 4 * (k >> 1);
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            const int q = (((ql[l] >> shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
            y[l] = __fmul_rn(__fmul_rn(d, (float)sc[l / 16]), (float)q);
        }
    }
};

// ================================= float weights: units of 8 values ===================================
// A "block" is 8 values (16 bytes of F16/BF16, 32 of F32); activations stay float.
struct ActF8 {
    float x[8];
};

template <int kType>
struct TFloat {
    static constexpr int kElem = kType == pq::T_F32 ? 4 : 2;
    static constexpr int kBlockVals = 8, kBlockBytes = 8 * kElem, kUnits = 1, kAlign = 16, kSubs = 1;
    static constexpr bool kFloatAct = true;
    struct W {
        float w[8];
    };
    using A = ActF8;
    __device__ static float value(const uint8_t* blk, int i) {
        if constexpr (kType == pq::T_F32) {
            return reinterpret_cast<const float*>(blk)[i];
        } else if constexpr (kType == pq::T_F16) {
            return h2f(reinterpret_cast<const uint16_t*>(blk)[i]);
        } else {
            return pq::bf16_to_fp32(reinterpret_cast<const uint16_t*>(blk)[i]);
        }
    }
    __device__ static void load_w(W& w, const uint8_t* blk, int) {
#pragma unroll
        for (int i = 0; i < 8; ++i) w.w[i] = value(blk, i);
    }
    __device__ static void load_a(A& a, const float* x, int64_t ib, int) {
        const float4* p = reinterpret_cast<const float4*>(x + 8 * ib);
        const float4 v0 = p[0], v1 = p[1];
        a.x[0] = v0.x, a.x[1] = v0.y, a.x[2] = v0.z, a.x[3] = v0.w;
        a.x[4] = v1.x, a.x[5] = v1.y, a.x[6] = v1.z, a.x[7] = v1.w;
    }
    __device__ static float dot(const W& w, const A& a) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(w.w[i], a.x[i], s);
        return s;
    }
    __device__ static void dequant(const uint8_t* blk, int, float* y) {
#pragma unroll
        for (int i = 0; i < 8; ++i) y[i] = value(blk, i);
    }
};
using TF32 = TFloat<pq::T_F32>;
using TF16 = TFloat<pq::T_F16>;
using TBF16 = TFloat<pq::T_BF16>;

// Calls f(T{}) with the decoder struct of `type`; returns `otherwise` for types without one.
template <class F, class R>
R dispatch_type(int type, R otherwise, F&& f) {
    switch (type) {
        case pq::T_Q4_0: return f(TQ4_0{});
        case pq::T_Q4_1: return f(TQ4_1{});
        case pq::T_Q5_0: return f(TQ5_0{});
        case pq::T_Q5_1: return f(TQ5_1{});
        case pq::T_Q8_0: return f(TQ8_0{});
        case pq::T_Q4_K: return f(TQ4_K{});
        case pq::T_Q5_K: return f(TQ5_K{});
        case pq::T_Q6_K: return f(TQ6_K{});
        case pq::T_IQ4_NL: return f(TIQ4_NL{});
        case pq::T_IQ4_XS: return f(TIQ4_XS{});
        case pq::T_F16: return f(TF16{});
        case pq::T_BF16: return f(TBF16{});
        case pq::T_F32: return f(TF32{});
        default: return otherwise;
    }
}

}  // namespace pq::cuda::mv
