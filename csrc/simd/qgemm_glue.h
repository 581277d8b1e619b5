// simd/qgemm_glue.h: the parts of the prefill GEMM micro-kernels that do not depend on the ISA: the
// tile epilogue (8 float lane sums -> one output, in the reference's order) and the dispatch from a
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

// y[t * ldy + r] = sumf[r][t] + lane 0 + ... + lane 7 of sums[r][t] (tile_ref's last loop).
template <int R, int T>
inline void store_tile(const __m256 (&sums)[R][T], const float (&sumf)[R][T], float* y, int64_t ldy) {
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < T; ++t) {
            alignas(32) float l[8];
            _mm256_store_ps(l, sums[r][t]);
            float s = sumf[r][t];
            for (int k = 0; k < 8; ++k) s += l[k];
            y[t * ldy + r] = s;
        }
    }
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
