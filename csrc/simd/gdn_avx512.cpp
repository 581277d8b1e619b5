// gdn_avx512.cpp: the gated delta rule (reference: gdn.cpp delta_rule_head) with each state row held in
// 16-lane registers for the whole token step.
//
// delta_rule_head_avx2 walks a row twice per token (decay + u = row . k, then row += k delta and
// o = row . q): 5 loads and 2 stores per 8 values, bound by the load/store ports. Here the token's k and
// q * q_scale stay in registers across the rows, and a row (dk = 16..128, a multiple of 16) is loaded once,
// updated in registers and stored once: 1 load and 1 store per 16 values.
//
// The floats are delta_rule_head_avx2's bit for bit: its two 8-lane partial sums (values i mod 16 < 8 and
// >= 8) are the low and high halves of one 16-lane accumulator, which goes through the same FMAs in the
// same order and is then reduced as that kernel reduces u0 + u1. So the AVX2 and AVX-512 kernel sets
// agree exactly on the DeltaNet, and (as there) the order does not depend on the token count: a
// verification, its rollback replay and one-token steps agree bit for bit.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "simd/avx512_util.h"

namespace pq {

void delta_rule_head_avx2(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                          int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S,
                          int64_t dk, int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride);

namespace {

template <int NV>  // dk = 16 NV
void delta_rule_rows(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                     int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S, int64_t dv,
                     int64_t n, float q_scale, float* o, int64_t o_stride) {
    constexpr int64_t dk = 16 * NV;
    const __m512 vscale = _mm512_set1_ps(q_scale);
    for (int64_t t = 0; t < n; ++t) {
        const float* kt = k + t * k_stride;
        const float* qt = q + t * q_stride;
        const float* vt = v + t * v_stride;
        const __m512 vdecay = _mm512_set1_ps(std::exp(g[t * gb_stride]));
        const float b = beta[t * gb_stride];
        __m512 kv[NV], qs[NV];
        for (int i = 0; i < NV; ++i) {
            kv[i] = _mm512_loadu_ps(kt + 16 * i);
            qs[i] = _mm512_mul_ps(_mm512_loadu_ps(qt + 16 * i), vscale);
        }
        float* ot = o + t * o_stride;
        for (int64_t j = 0; j < dv; ++j) {
            float* row = S + j * dk;
            __m512 r[NV];
            __m512 u = _mm512_setzero_ps();
            for (int i = 0; i < NV; ++i) {
                r[i] = _mm512_mul_ps(_mm512_loadu_ps(row + 16 * i), vdecay);
                u = _mm512_fmadd_ps(r[i], kv[i], u);
            }
            const __m512 vdelta = _mm512_set1_ps(b * (vt[j] - hsum512(u)));
            __m512 a = _mm512_setzero_ps();
            for (int i = 0; i < NV; ++i) {
                r[i] = _mm512_fmadd_ps(kv[i], vdelta, r[i]);
                _mm512_storeu_ps(row + 16 * i, r[i]);
                a = _mm512_fmadd_ps(r[i], qs[i], a);
            }
            ot[j] = hsum512(a);
        }
    }
}

}  // namespace

void delta_rule_head_avx512(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                            int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S,
                            int64_t dk, int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride) {
    switch (dk % 16 ? 0 : dk / 16) {
#define PQ_ROWS(nv) \
    case nv: return delta_rule_rows<nv>(q, k, v, q_stride, k_stride, v_stride, g, beta, gb_stride, S, dv, n, q_scale, o, o_stride);
        PQ_ROWS(1) PQ_ROWS(2) PQ_ROWS(3) PQ_ROWS(4) PQ_ROWS(5) PQ_ROWS(6) PQ_ROWS(7) PQ_ROWS(8)
#undef PQ_ROWS
        default:  // longer rows or not whole vectors: the AVX2 kernel (the same floats where both apply)
            return delta_rule_head_avx2(q, k, v, q_stride, k_stride, v_stride, g, beta, gb_stride, S, dk, dv, n,
                                        q_scale, o, o_stride);
    }
}

}  // namespace pq
