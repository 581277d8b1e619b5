// quants_q4k_q5k.cpp: Q4_K and Q5_K (asymmetric 4/5-bit, 8 sub-blocks of 32 with 6-bit scale and min).
//
// The two formats share everything except the number of levels and how the 5th bit is stored, so
// the scale selection lives in one routine parametrised the way ggml's two reference quantizers are.
#include <cmath>

#include "quants_internal.h"

namespace pq {
namespace qi {

namespace {

// ggml's search parameters per format (make_qkx2_quants arguments in quantize_row_q{4,5}_K_ref).
struct KxParams {
    int nmax;
    float rmin, rdelta;
    int nstep;
};
constexpr KxParams kQ4K{15, -1.f, 0.1f, 20};
constexpr KxParams kQ5K{31, -0.5f, 0.1f, 15};

// One 256-value super-block: choose per-sub-block scale/min, quantize them to 6 bits against fp16
// super-scales d/dmin, then requantize every value against the scales as they will be decoded.
// Writes d, dmin, the 12 packed scale bytes and the levels L[256] in [0, nmax].
void choose_levels(const float* x, const KxParams& p, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales12,
                   uint8_t* L) {
    float sub_scale[QK_K / 32], sub_min[QK_K / 32];
    float weights[32];
    uint8_t Laux[32];
    float max_scale = 0, max_min = 0;  // scales and mins are both >= 0 here
    for (int j = 0; j < QK_K / 32; ++j) {
        const float* xs = x + 32 * j;
        // Weight each value by the sub-block RMS plus its own magnitude: large values matter more.
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(xs[l]);
        sub_scale[j] = search_scale_min(32, p.nmax, xs, weights, L + 32 * j, &sub_min[j], Laux, p.rmin, p.rdelta,
                                        p.nstep);
        if (sub_scale[j] > max_scale) max_scale = sub_scale[j];
        if (sub_min[j] > max_min) max_min = sub_min[j];
    }

    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[QK_K / 32], lm[QK_K / 32];
    for (int j = 0; j < QK_K / 32; ++j) {
        // ggml truncates to uint8 before clamping; keep that order (matters only for degenerate input).
        const uint8_t a = (uint8_t)nearest_int(inv_scale * sub_scale[j]);
        const uint8_t b = (uint8_t)nearest_int(inv_min * sub_min[j]);
        ls[j] = a < 63 ? a : 63;
        lm[j] = b < 63 ? b : 63;
    }
    pack_scale_min_k4(ls, lm, scales12);
    *d_out = fp32_to_fp16(max_scale / 63.f);
    *dmin_out = fp32_to_fp16(max_min / 63.f);

    // Requantize with the decoded (rounded) scales so the levels fit what the reader will compute.
    // Sub-blocks whose decoded scale is 0 keep the levels from the search, as ggml does.
    const float d_all = fp16_to_fp32(*d_out), dmin_all = fp16_to_fp32(*dmin_out);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales12, &sc, &m);
        const float d = d_all * sc;
        if (!d) continue;
        const float dm = dmin_all * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            l = l < 0 ? 0 : (l > p.nmax ? p.nmax : l);
            L[32 * j + ii] = (uint8_t)l;
        }
    }
}

// Unpack the 8 (scale, min) pairs of a super-block.
inline void unpack_scales(const uint8_t* scales12, uint8_t* sc, uint8_t* m) {
    for (int j = 0; j < 8; ++j) get_scale_min_k4(j, scales12, &sc[j], &m[j]);
}

// The Q4_K/Q5_K dot (the spec every SIMD kernel and the prefill GEMM reproduce bit for bit). Per
// super-block two exact integers:
//   isum = sum_j sc_j * (sum over sub-block j of q[e] * q8[e])   (j < 8 sub-blocks of 32 values)
//   summ = sum_j m_j * (sum of q8 over sub-block j)              (from Q8_K's bsums, two per sub-block)
// Both fit int32 in any summation order: |isum| <= 63 * 31 * 128 * 256 = 63,995,904 and |summ| <=
// 63 * 128 * 256 = 2,064,384, far below 2^31 (levels <= 31, 6-bit scales/mins <= 63, |q8| <= 128).
// Then one fixed float sequence per super-block into one accumulator (kx_step), written with explicit
// fused multiply-adds so that no compiler can contract it differently; every kernel uses the same one.
// (ggml's scalar order -- 8 int32 lanes, each in its own float sum -- pinned the SIMD data layout; this
// one differs from it only by float rounding, see test_quants.py.)
inline float kx_step(float acc, float d_w, float dmin_w, float d_a, int32_t isum, int32_t summ) {
    acc = std::fma(d_w * d_a, (float)isum, acc);
    return std::fma(-(dmin_w * d_a), (float)summ, acc);
}

template <class Block, class IsumFn>
float kx_vec_dot(int64_t n, const void* w, const void* x, IsumFn isum_of) {
    const Block* b = (const Block*)w;
    const block_q8_K* a = (const block_q8_K*)x;
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        uint8_t sc[8], m[8];
        unpack_scales(b[i].scales, sc, m);
        const int32_t isum = isum_of(b[i], a[i].qs, sc);
        int32_t summ = 0;
        for (int j = 0; j < QK_K / 16; ++j) summ += a[i].bsums[j] * m[j / 2];
        acc = kx_step(acc, fp16_to_fp32(b[i].d), fp16_to_fp32(b[i].dmin), a[i].d, isum, summ);
    }
    return acc;
}

// Levels of a Q4_K block in natural order: each 64-value group takes the low nibbles of 32 bytes
// for its first half and the high nibbles for its second half.
inline void q4_k_levels(const block_q4_K& b, uint8_t* q) {
    for (int g = 0; g < QK_K / 64; ++g) {
        const uint8_t* qs = b.qs + 32 * g;
        for (int l = 0; l < 32; ++l) {
            q[64 * g + l] = qs[l] & 0xF;
            q[64 * g + 32 + l] = qs[l] >> 4;
        }
    }
}

// Q5_K adds bit 4 from qh: value 64g+l uses bit 2g of qh[l], value 64g+32+l bit 2g+1.
inline void q5_k_levels(const block_q5_K& b, uint8_t* q) {
    for (int g = 0; g < QK_K / 64; ++g) {
        const uint8_t* qs = b.qs + 32 * g;
        for (int l = 0; l < 32; ++l) {
            q[64 * g + l] = (uint8_t)((qs[l] & 0xF) | (((b.qh[l] >> (2 * g)) & 1) << 4));
            q[64 * g + 32 + l] = (uint8_t)((qs[l] >> 4) | (((b.qh[l] >> (2 * g + 1)) & 1) << 4));
        }
    }
}

// Reference integer parts: isum = sum_j sc[j] * sum over the 32 values e of sub-block j of q8[e] * q[e].
template <class Block, void (*levels)(const Block&, uint8_t*)>
int32_t kx_isum_ref(const Block& b, const int8_t* q8, const uint8_t* sc) {
    uint8_t q[QK_K];
    levels(b, q);
    return subblock_isum<32>(q, q8, sc);
}

#if defined(PQ_HAVE_AVX2_KERNELS)
// The AVX2 lane kernels give 8 partial integer sums; their total is isum exactly (integer).
template <class Block, void (*lanes)(const Block&, const int8_t*, const uint8_t*, int32_t*)>
int32_t kx_isum_avx2(const Block& b, const int8_t* q8, const uint8_t* sc) {
    int32_t lane[8];
    lanes(b, q8, sc, lane);
    int32_t isum = 0;
    for (int l = 0; l < 8; ++l) isum += lane[l];
    return isum;
}
#endif

// Decode value = d*sc*q - dmin*m with ggml's rounding: (d*sc)*q - (dmin*m).
inline void kx_decode(const uint8_t* q, uint16_t d16, uint16_t dmin16, const uint8_t* scales12, float* y) {
    uint8_t sc[8], m[8];
    unpack_scales(scales12, sc, m);
    const float d = fp16_to_fp32(d16), dmin = fp16_to_fp32(dmin16);
    for (int j = 0; j < 8; ++j) {
        const float dl = d * sc[j], ml = dmin * m[j];
        for (int l = 0; l < 32; ++l) y[32 * j + l] = dl * q[32 * j + l] - ml;
    }
}

// Q4_K / Q5_K dequantization: the two differ only in how their levels are stored.
template <class Block, void (*levels)(const Block&, uint8_t*)>
void kx_to_float(const void* src, float* y, int64_t n) {
    const Block* b = (const Block*)src;
    uint8_t q[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        levels(b[i], q);
        kx_decode(q, b[i].d, b[i].dmin, b[i].scales, y);
    }
}

}  // namespace

// ---- Q4_K ----
void q4_k_from_float(const float* x, void* dst, int64_t n) {
    block_q4_K* y = (block_q4_K*)dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        choose_levels(x, kQ4K, &y[i].d, &y[i].dmin, y[i].scales, L);
        for (int g = 0; g < QK_K / 64; ++g) {
            for (int l = 0; l < 32; ++l) y[i].qs[32 * g + l] = (uint8_t)(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
        }
    }
}

void q4_k_to_float(const void* src, float* y, int64_t n) { kx_to_float<block_q4_K, q4_k_levels>(src, y, n); }

float q4_k_vec_dot(int64_t n, const void* w, const void* x) {
    return kx_vec_dot<block_q4_K>(n, w, x, kx_isum_ref<block_q4_K, q4_k_levels>);
}

#if defined(PQ_HAVE_AVX2_KERNELS)
float q4_k_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return kx_vec_dot<block_q4_K>(n, w, x, kx_isum_avx2<block_q4_K, avx2::q4_k_lanes>);
}
#endif

// One Q4_K/Q5_K block for the prefill GEMM (qgemm.h): levels and per-16 scales in lane-pair order, the
// super-block scales, the 8 mins. The two formats differ only in how their levels are stored.
template <class Block, void (*levels)(const Block&, uint8_t*)>
void kx_pack16(const void* block, PackedW16* o) {
    const Block& b = *(const Block*)block;
    uint8_t q[QK_K], sc[8], m[8];
    int s16[16];
    levels(b, q);
    unpack_scales(b.scales, sc, m);
    for (int g = 0; g < 16; ++g) s16[g] = sc[g / 2];
    pack_lane_pairs(q, s16, o->w);
    o->d = fp16_to_fp32(b.d);
    o->dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 8; ++j) o->m[j] = m[j];
}

void q4_k_pack16(const void* block, PackedW16* o) { kx_pack16<block_q4_K, q4_k_levels>(block, o); }

// ---- Q5_K ----
void q5_k_from_float(const float* x, void* dst, int64_t n) {
    block_q5_K* y = (block_q5_K*)dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        choose_levels(x, kQ5K, &y[i].d, &y[i].dmin, y[i].scales, L);
        memset(y[i].qh, 0, sizeof(y[i].qh));
        for (int g = 0; g < QK_K / 64; ++g) {
            for (int l = 0; l < 32; ++l) {
                const int lo = L[64 * g + l], hi = L[64 * g + 32 + l];
                y[i].qs[32 * g + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
                y[i].qh[l] |= (uint8_t)(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
            }
        }
    }
}

void q5_k_to_float(const void* src, float* y, int64_t n) { kx_to_float<block_q5_K, q5_k_levels>(src, y, n); }

float q5_k_vec_dot(int64_t n, const void* w, const void* x) {
    return kx_vec_dot<block_q5_K>(n, w, x, kx_isum_ref<block_q5_K, q5_k_levels>);
}

void q5_k_pack16(const void* block, PackedW16* o) { kx_pack16<block_q5_K, q5_k_levels>(block, o); }

#if defined(PQ_HAVE_AVX2_KERNELS)
float q5_k_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return kx_vec_dot<block_q5_K>(n, w, x, kx_isum_avx2<block_q5_K, avx2::q5_k_lanes>);
}
#endif

}  // namespace qi
}  // namespace pq
