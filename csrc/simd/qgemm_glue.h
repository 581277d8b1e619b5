// simd/qgemm_glue.h: the parts of the prefill GEMM micro-kernels that do not depend on the ISA: the
// float steps of the spec per super-block. Included by each simd/qgemm_*.cpp, whose flags
// it is compiled with: everything here is in an unnamed namespace, so no out-of-line copy built for one
// ISA can be picked by the linker for another.
#pragma once

#include <immintrin.h>

#include "qgemm.h"

namespace pq {
namespace {

// The sum of the 4 int32 of p.
inline int32_t hsum4(__m128i p) {
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4E));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xB1));
    return _mm_cvtsi128_si32(p);
}

// fma(a, b, c) rounded once, as the reference's std::fma (this header may not call <cmath>'s inline
// functions: see the note at the top).
inline float fma_ss(float a, float b, float c) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

// The spec's float steps of one super-block (kx_vec_dot in quants_q4k_q5k.cpp; without the min term
// q6_k_dot in quants_q6k.cpp): acc = fma(d_w * d_a, isum, acc); acc = fma(-(dmin_w * d_a), summ, acc).
inline float kq_step(float acc, float d_w, float d_a, int32_t isum) { return fma_ss(d_w * d_a, (float)isum, acc); }
inline float kq_min_step(float acc, float dmin_w, float d_a, int32_t summ) {
    return fma_ss(-(dmin_w * d_a), (float)summ, acc);
}

}  // namespace
}  // namespace pq
