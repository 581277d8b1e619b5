// gdn_avx2.cpp: AVX2+FMA version of the gated delta rule (reference: gdn.cpp delta_rule_head).
//
// The reference sums u = S^T k and o = S^T q one scalar at a time: a chain of dk dependent adds per
// state row, latency-bound (4 cycles each: about 0.1 s per token over the 27B's 48 layers x 48 heads).
// Here each row is 8-lane vectors with two partial sums, so the order of additions differs from the
// reference (tests/test_gdn_simd.py bounds the difference); it is the same for every token count, so
// a verification batch, its rollback replay and one-token steps still agree bit for bit.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "simd/avx2_util.h"

namespace pq {

void delta_rule_head_avx2(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                          int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S,
                          int64_t dk, int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride) {
    const int64_t dk8 = dk & ~int64_t(7);
    std::vector<float> qs(dk);
    for (int64_t t = 0; t < n; ++t) {
        const float* qt = q + t * q_stride;
        const float* kt = k + t * k_stride;
        const float* vt = v + t * v_stride;
        const float decay = std::exp(g[t * gb_stride]);
        const float b = beta[t * gb_stride];
        for (int64_t i = 0; i < dk; ++i) qs[i] = qt[i] * q_scale;
        const __m256 vdecay = _mm256_set1_ps(decay);
        float* ot = o + t * o_stride;
        for (int64_t j = 0; j < dv; ++j) {
            float* row = S + j * dk;
            // Pass 1: decay the row, u = row . k
            __m256 u0 = _mm256_setzero_ps(), u1 = _mm256_setzero_ps();
            int64_t i = 0;
            for (; i + 16 <= dk8; i += 16) {
                __m256 r0 = _mm256_mul_ps(_mm256_loadu_ps(row + i), vdecay);
                __m256 r1 = _mm256_mul_ps(_mm256_loadu_ps(row + i + 8), vdecay);
                _mm256_storeu_ps(row + i, r0);
                _mm256_storeu_ps(row + i + 8, r1);
                u0 = _mm256_fmadd_ps(r0, _mm256_loadu_ps(kt + i), u0);
                u1 = _mm256_fmadd_ps(r1, _mm256_loadu_ps(kt + i + 8), u1);
            }
            for (; i < dk8; i += 8) {
                __m256 r0 = _mm256_mul_ps(_mm256_loadu_ps(row + i), vdecay);
                _mm256_storeu_ps(row + i, r0);
                u0 = _mm256_fmadd_ps(r0, _mm256_loadu_ps(kt + i), u0);
            }
            float u = hsum256(_mm256_add_ps(u0, u1));
            for (; i < dk; ++i) {
                row[i] *= decay;
                u += row[i] * kt[i];
            }
            // Pass 2: row += k * delta, o = row . q
            const float delta = b * (vt[j] - u);
            const __m256 vdelta = _mm256_set1_ps(delta);
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            i = 0;
            for (; i + 16 <= dk8; i += 16) {
                __m256 r0 = _mm256_fmadd_ps(_mm256_loadu_ps(kt + i), vdelta, _mm256_loadu_ps(row + i));
                __m256 r1 = _mm256_fmadd_ps(_mm256_loadu_ps(kt + i + 8), vdelta, _mm256_loadu_ps(row + i + 8));
                _mm256_storeu_ps(row + i, r0);
                _mm256_storeu_ps(row + i + 8, r1);
                a0 = _mm256_fmadd_ps(r0, _mm256_loadu_ps(qs.data() + i), a0);
                a1 = _mm256_fmadd_ps(r1, _mm256_loadu_ps(qs.data() + i + 8), a1);
            }
            for (; i < dk8; i += 8) {
                __m256 r0 = _mm256_fmadd_ps(_mm256_loadu_ps(kt + i), vdelta, _mm256_loadu_ps(row + i));
                _mm256_storeu_ps(row + i, r0);
                a0 = _mm256_fmadd_ps(r0, _mm256_loadu_ps(qs.data() + i), a0);
            }
            float acc = hsum256(_mm256_add_ps(a0, a1));
            for (; i < dk; ++i) {
                row[i] += kt[i] * delta;
                acc += row[i] * qs[i];
            }
            ot[j] = acc;
        }
    }
}

}  // namespace pq
