// simd/qgemm_glue.h: the parts of the GEMM / decode kernels that do not depend on the ISA. Included by
// each simd/qgemm_*.cpp, whose flags it is compiled with: everything here is in an unnamed namespace,
// so no out-of-line copy built for one ISA can be picked by the linker for another.
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

}  // namespace
}  // namespace pq
