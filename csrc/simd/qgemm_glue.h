// simd/qgemm_glue.h: the parts of the prefill GEMM micro-kernels that do not depend on the ISA: the
// float steps of the spec per super-block and the dispatch from a
// (rows, tokens) tile size to a compile-time instance. Included by each simd/qgemm_*.cpp, whose flags
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

// The sum of the 8 int32 of p (exact: the callers' sums are bounded far below 2^31).
inline int32_t hsum8(__m256i p) {
    return hsum4(_mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
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

using TileInstFn = void (*)(const qi::PackedW16*, int64_t, const qi::PackedA16*, int64_t, int64_t, bool, float*,
                            int64_t);

// K::run<R, T> is the micro-kernel of R rows x T tokens (T <= 4, R <= K::kRows).
template <class K, int R>
constexpr TileInstFn tile_inst(int nt) {
    return nt == 1 ? K::template run<R, 1> : nt == 2 ? K::template run<R, 2> : nt == 3 ? K::template run<R, 3>
                                                                                       : K::template run<R, 4>;
}

// The QgemmTileFn of a kernel set: picks the instance for a partial tile at the panel edges.
template <class K>
void tile_any(const qi::PackedW16* w, int64_t ws, int nr, const qi::PackedA16* a, int64_t as, int nt, int64_t nb,
              bool has_min, float* y, int64_t ldy) {
    static_assert(K::kRows >= 1 && K::kRows <= 4, "register block of 1 to 4 rows");
    TileInstFn f = tile_inst<K, 1>(nt);
    if constexpr (K::kRows >= 2) if (nr == 2) f = tile_inst<K, 2>(nt);
    if constexpr (K::kRows >= 3) if (nr == 3) f = tile_inst<K, 3>(nt);
    if constexpr (K::kRows >= 4) if (nr >= 4) f = tile_inst<K, 4>(nt);
    f(w, ws, a, as, nb, has_min, y, ldy);
}

}  // namespace
}  // namespace pq
