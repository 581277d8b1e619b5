// quants_legacy.cpp: the 32-value "legacy" formats Q4_0, Q4_1, Q5_0 and Q5_1.
//
// llama-quantize falls back to them when a row is not a multiple of 256 (Q4_K -> Q5_0, Q5_K -> Q5_1),
// and whole community files use them, so the runtime must read them. Quantizers are byte-identical to
// ggml's quantize_row_*_ref (the C expressions are reproduced with the same float operations, in the
// same order, including the float -> int8/uint8 truncations); dequantizers match dequantize_row_*.
//
// Dot products follow ggml's CPU backend: Q4_0/Q5_0 weights take Q8_0 activations, Q4_1/Q5_1 take Q8_1
// (whose s = d * sum(q) folds in the weight's offset m). The integer part of each block is exact, so
// the weights are unpacked to signed bytes and summed by the same block-sum kernel as Q8_0 (scalar or
// AVX2: bit-identical), then the float steps run in ggml's order (ggml_vec_dot_*_generic).
#include <cfloat>
#include <cmath>

#include "quants_internal.h"

namespace pq {
namespace qi {

namespace {

// MIN(maxq, (int8_t)v) stored into a uint8_t, as the ggml reference writes it.
inline uint8_t clamp_trunc(int maxq, float v) {
    const int q = trunc_to_i8(v);
    return (uint8_t)(maxq < q ? maxq : q);
}

// (uint8_t)v in C: truncation through a 32-bit int, low byte kept (what x86-64 compilers emit).
inline uint8_t trunc_to_u8(float v) { return (uint8_t)trunc_to_i8(v); }

inline void min_max(const float* x, int n, float* mn, float* mx) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; ++j) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

// The block header of Q4_1 / Q5_1 (levels 0..nmax): d = (max - min) / nmax and m = min stored into y;
// returns min and 1/d (0 for a flat block), with which the levels are (x - min) * id + 0.5 truncated.
struct MinScale {
    float mn, id;
};
template <class Block>
inline MinScale put_min_scale(const float* x, int nmax, Block& y) {
    static_assert(QK4_1 == QK5_1, "one block size");
    float mn, mx;
    min_max(x, QK4_1, &mn, &mx);
    const float d = (mx - mn) / nmax;
    y.d = fp32_to_fp16(d);
    y.m = fp32_to_fp16(mn);
    return {mn, d ? 1.0f / d : 0.0f};
}

// Q5_0 / Q5_1 storage of a block's 32 unsigned 5-bit levels: values j and j + 16 share byte qs[j] (low,
// high nibble), their 5th bits are bits j and j + 16 of the 32-bit qh.
inline void q5_pack(const uint8_t* lv, uint8_t* qs, uint8_t* qh_bytes) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        qs[j] = (uint8_t)((lv[j] & 0x0F) | ((lv[j + 16] & 0x0F) << 4));
        qh |= ((lv[j] & 0x10u) >> 4) << (j + 0);
        qh |= ((lv[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    memcpy(qh_bytes, &qh, sizeof(qh));
}

inline void q5_levels(const uint8_t* qs, const uint8_t* qh_bytes, uint8_t* lv) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, sizeof(qh));
    for (int j = 0; j < 16; ++j) {
        lv[j] = (uint8_t)((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10));
        lv[j + 16] = (uint8_t)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
    }
}

}  // namespace

// ---- Q4_0: d = max / -8 (max = the signed value of largest |x|), q = x/d + 8 in [0, 15] ----
void q4_0_from_float(const float* x, void* dst, int64_t n) {
    block_q4_0* y = (block_q4_0*)dst;
    for (int64_t i = 0; i < n / QK4_0; ++i) quantize_block_q4_0(x + i * QK4_0, y + i);  // formats.h
}

void q4_0_to_float(const void* src, float* y, int64_t n) {
    const block_q4_0* b = (const block_q4_0*)src;
    for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

// ---- Q4_1: d = (max - min) / 15, m = min, q = (x - min)/d in [0, 15] ----
void q4_1_from_float(const float* x, void* dst, int64_t n) {
    block_q4_1* y = (block_q4_1*)dst;
    for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
        const auto [mn, id] = put_min_scale(x, (1 << 4) - 1, y[i]);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const uint8_t xi0 = clamp_trunc(15, (x[j] - mn) * id + 0.5f);
            const uint8_t xi1 = clamp_trunc(15, (x[QK4_1 / 2 + j] - mn) * id + 0.5f);
            y[i].qs[j] = xi0;
            y[i].qs[j] |= (uint8_t)(xi1 << 4);
        }
    }
}

void q4_1_to_float(const void* src, float* y, int64_t n) {
    const block_q4_1* b = (const block_q4_1*)src;
    for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = (b[i].qs[j] & 0x0F) * d + m;
            y[j + QK4_1 / 2] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

// ---- Q5_0: d = max / -16, q = x/d + 16 in [0, 31]; low nibbles in qs, 5th bits in qh ----
void q5_0_from_float(const float* x, void* dst, int64_t n) {
    block_q5_0* y = (block_q5_0*)dst;
    for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
        const float d = signed_absmax(x, QK5_0) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        uint8_t lv[QK5_0];
        for (int j = 0; j < QK5_0; ++j) lv[j] = clamp_trunc(31, x[j] * id + 16.5f);
        q5_pack(lv, y[i].qs, y[i].qh);
    }
}

void q5_0_to_float(const void* src, float* y, int64_t n) {
    const block_q5_0* b = (const block_q5_0*)src;
    for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
        const float d = fp16_to_fp32(b[i].d);
        uint8_t lv[QK5_0];
        q5_levels(b[i].qs, b[i].qh, lv);
        for (int j = 0; j < QK5_0; ++j) y[j] = (lv[j] - 16) * d;
    }
}

// ---- Q5_1: d = (max - min) / 31, m = min, q = (x - min)/d in [0, 31] ----
void q5_1_from_float(const float* x, void* dst, int64_t n) {
    block_q5_1* y = (block_q5_1*)dst;
    for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
        const auto [mn, id] = put_min_scale(x, (1 << 5) - 1, y[i]);
        uint8_t lv[QK5_1];
        // No clamp here in ggml: (x - min)/d never exceeds 31.5 for finite input.
        for (int j = 0; j < QK5_1; ++j) lv[j] = trunc_to_u8((x[j] - mn) * id + 0.5f);
        q5_pack(lv, y[i].qs, y[i].qh);
    }
}

void q5_1_to_float(const void* src, float* y, int64_t n) {
    const block_q5_1* b = (const block_q5_1*)src;
    for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        uint8_t lv[QK5_1];
        q5_levels(b[i].qs, b[i].qh, lv);
        for (int j = 0; j < QK5_1; ++j) y[j] = lv[j] * d + m;
    }
}

// ---- dot products ----------------------------------------------------------------------------------
namespace {

using BlockSums = void (*)(int64_t nb, const block_q8_0* w, const block_q8_0* a, int32_t* sumi);

void block_sums_ref(int64_t nb, const block_q8_0* w, const block_q8_0* a, int32_t* sumi) {
    for (int64_t i = 0; i < nb; ++i) {
        int32_t s = 0;
        for (int j = 0; j < QK8_0; ++j) s += w[i].qs[j] * a[i].qs[j];
        sumi[i] = s;
    }
}

// Signed weight levels of one block in activation order (value j pairs with activation j).
inline void unpack(const block_q4_0& b, int8_t* q) {
    for (int j = 0; j < 16; ++j) {
        q[j] = (int8_t)((b.qs[j] & 0x0F) - 8);
        q[j + 16] = (int8_t)((b.qs[j] >> 4) - 8);
    }
}
inline void unpack(const block_q4_1& b, int8_t* q) {
    for (int j = 0; j < 16; ++j) {
        q[j] = (int8_t)(b.qs[j] & 0x0F);
        q[j + 16] = (int8_t)(b.qs[j] >> 4);
    }
}
inline void unpack(const block_q5_0& b, int8_t* q) {
    uint8_t lv[32];
    q5_levels(b.qs, b.qh, lv);
    for (int j = 0; j < 32; ++j) q[j] = (int8_t)(lv[j] - 16);
}
inline void unpack(const block_q5_1& b, int8_t* q) {
    uint8_t lv[32];
    q5_levels(b.qs, b.qh, lv);
    for (int j = 0; j < 32; ++j) q[j] = (int8_t)lv[j];
}

inline const int8_t* act_qs(const block_q8_0& a) { return a.qs; }
inline const int8_t* act_qs(const block_q8_1& a) { return a.qs; }

// Float step per block, exactly as in ggml_vec_dot_*_generic (evaluation order included).
inline void accumulate(float& sumf, const block_q4_0& w, const block_q8_0& a, int32_t sumi) {
    sumf += sumi * fp16_to_fp32(w.d) * fp16_to_fp32(a.d);
}
inline void accumulate(float& sumf, const block_q5_0& w, const block_q8_0& a, int32_t sumi) {
    sumf += (fp16_to_fp32(w.d) * fp16_to_fp32(a.d)) * sumi;
}
template <class B>
inline void accumulate(float& sumf, const B& w, const block_q8_1& a, int32_t sumi) {  // Q4_1, Q5_1
    sumf += (fp16_to_fp32(w.d) * fp16_to_fp32(a.d)) * sumi + fp16_to_fp32(w.m) * fp16_to_fp32(a.s);
}

template <class WB, class AB>
float legacy_dot(int64_t n, const void* w, const void* x, BlockSums sums) {
    const WB* b = (const WB*)w;
    const AB* a = (const AB*)x;
    constexpr int64_t kChunk = 64;
    block_q8_0 wq[kChunk], aq[kChunk];  // unpacked weights / activation bytes (d unused)
    int32_t sumi[kChunk];
    float sumf = 0;
    const int64_t nb = n / QK8_0;
    for (int64_t i0 = 0; i0 < nb; i0 += kChunk) {
        const int64_t m = nb - i0 < kChunk ? nb - i0 : kChunk;
        for (int64_t i = 0; i < m; ++i) {
            unpack(b[i0 + i], wq[i].qs);
            memcpy(aq[i].qs, act_qs(a[i0 + i]), QK8_0);
        }
        sums(m, wq, aq, sumi);
        for (int64_t i = 0; i < m; ++i) accumulate(sumf, b[i0 + i], a[i0 + i], sumi[i]);
    }
    return sumf;
}

}  // namespace

float q4_0_vec_dot(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q4_0, block_q8_0>(n, w, x, block_sums_ref);
}
float q4_1_vec_dot(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q4_1, block_q8_1>(n, w, x, block_sums_ref);
}
float q5_0_vec_dot(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q5_0, block_q8_0>(n, w, x, block_sums_ref);
}
float q5_1_vec_dot(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q5_1, block_q8_1>(n, w, x, block_sums_ref);
}

#if defined(PQ_HAVE_AVX2_KERNELS)
float q4_0_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q4_0, block_q8_0>(n, w, x, avx2::q8_0_block_sums);
}
float q4_1_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q4_1, block_q8_1>(n, w, x, avx2::q8_0_block_sums);
}
float q5_0_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q5_0, block_q8_0>(n, w, x, avx2::q8_0_block_sums);
}
float q5_1_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return legacy_dot<block_q5_1, block_q8_1>(n, w, x, avx2::q8_0_block_sums);
}
#endif

}  // namespace qi
}  // namespace pq
