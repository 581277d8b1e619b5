// quants_q6k.cpp: Q6_K (symmetric 6-bit, 16 sub-blocks of 16 with int8 scales and one fp16 d).
#include <cmath>

#include "quants_internal.h"

namespace pq {
namespace qi {

namespace {

// Levels (0..63, value = level - 32) in natural order. Each 128-value half uses 64 ql bytes and
// 32 qh bytes: the four 32-value quarters take ql[l] low, ql[l+32] low, ql[l] high, ql[l+32] high
// nibbles and bit pairs 0, 2, 4, 6 of qh[l].
inline void q6_k_levels(const block_q6_K& b, int8_t* q) {
    for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b.ql + 64 * h;
        const uint8_t* qh = b.qh + 32 * h;
        int8_t* o = q + 128 * h;
        for (int l = 0; l < 32; ++l) {
            o[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

}  // namespace

void q6_k_from_float(const float* x, void* dst, int64_t n) {
    block_q6_K* y = (block_q6_K*)dst;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        // Per sub-block signed scale; the one of largest magnitude sets d (it maps to int8 -128).
        float max_scale = 0, max_abs = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            scales[ib] = search_scale_sym(16, 32, x + 16 * ib, L + 16 * ib);
            const float a = fabsf(scales[ib]);
            if (a > max_abs) {
                max_abs = a;
                max_scale = scales[ib];
            }
        }
        if (max_abs < kGroupMaxEps) {
            memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }

        const float iscale = -128.f / max_scale;
        y[i].d = fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const int s = nearest_int(iscale * scales[ib]);
            y[i].scales[ib] = (int8_t)(s < 127 ? s : 127);
        }

        // Requantize against the decoded scales; sub-blocks whose scale decodes to 0 keep the levels
        // from the search (as ggml does).
        const float d_all = fp16_to_fp32(y[i].d);
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = d_all * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = l < -32 ? -32 : (l > 31 ? 31 : l);
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }

        // Inverse of q6_k_levels.
        for (int h = 0; h < 2; ++h) {
            uint8_t* ql = y[i].ql + 64 * h;
            uint8_t* qh = y[i].qh + 32 * h;
            const int8_t* Lh = L + 128 * h;
            for (int l = 0; l < 32; ++l) {
                const int a = Lh[l], b = Lh[l + 32], c = Lh[l + 64], e = Lh[l + 96];
                ql[l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
                ql[l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
                qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
            }
        }
    }
}

void q6_k_to_float(const void* src, float* y, int64_t n) {
    const block_q6_K* b = (const block_q6_K*)src;
    int8_t q[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        q6_k_levels(b[i], q);
        const float d = fp16_to_fp32(b[i].d);
        for (int e = 0; e < QK_K; ++e) y[e] = d * b[i].scales[e / 16] * q[e];  // (d*sc)*q as ggml
    }
}

namespace {

// The Q6_K dot (the spec of every kernel, as the Q4_K/Q5_K one in quants_q4k_q5k.cpp): per super-block
// one exact integer isum = sum over the 16 sub-blocks j of sc_j * sum over its 16 values of (u - 32) * q8,
// |isum| <= 128 * 32 * 128 * 256 = 134,217,728 < 2^31 in any summation order (int8 scales, levels
// u - 32 in [-32, 31], |q8| <= 128), then one fused multiply-add per super-block into one accumulator.
int32_t q6_k_isum_ref(const block_q6_K& b, const int8_t* q8) {
    int8_t q[QK_K];
    q6_k_levels(b, q);
    return subblock_isum<16>(q, q8, b.scales);
}

template <class IsumFn>
float q6_k_dot(int64_t n, const void* w, const void* x, IsumFn isum_of) {
    const block_q6_K* b = (const block_q6_K*)w;
    const block_q8_K* a = (const block_q8_K*)x;
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int32_t isum = isum_of(b[i], a[i].qs);
        acc = std::fma(fp16_to_fp32(b[i].d) * a[i].d, (float)isum, acc);
    }
    return acc;
}

#if defined(PQ_HAVE_AVX2_KERNELS)
// The AVX2 lane kernel's 8 partial integer sums add up to isum exactly.
int32_t q6_k_isum_avx2(const block_q6_K& b, const int8_t* q8) {
    int32_t lane[8];
    avx2::q6_k_lanes(b, q8, lane);
    int32_t isum = 0;
    for (int l = 0; l < 8; ++l) isum += lane[l];
    return isum;
}
#endif

}  // namespace

float q6_k_vec_dot(int64_t n, const void* w, const void* x) { return q6_k_dot(n, w, x, q6_k_isum_ref); }

void q6_k_pack16(const void* block, PackedW16* o) {
    const block_q6_K& b = *(const block_q6_K*)block;
    int8_t q[QK_K];
    int s16[16];
    q6_k_levels(b, q);
    for (int g = 0; g < 16; ++g) s16[g] = b.scales[g];
    pack_lane_pairs(q, s16, o->w);
    o->d = fp16_to_fp32(b.d);
    o->dmin = 0;
    for (int j = 0; j < 8; ++j) o->m[j] = 0;
}

#if defined(PQ_HAVE_AVX2_KERNELS)
float q6_k_vec_dot_avx2(int64_t n, const void* w, const void* x) { return q6_k_dot(n, w, x, q6_k_isum_avx2); }
#endif

}  // namespace qi
}  // namespace pq
