// dot_avx2.cpp: AVX2+FMA+F16C versions of the float dot products (reference: matmul.cpp *_ref).
#include <cmath>
#include <immintrin.h>

#include <cstdint>

#include "simd/avx2_util.h"

namespace pq {

float dot_f32_avx2(const float* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) s += w[i] * x[i];
    return s;
}

float dot_f16_avx2(const uint16_t* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i + 8)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) s += _cvtsh_ss(w[i]) * x[i];
    return s;
}

float dot_bf16_avx2(const uint16_t* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w + i)));
        __m256i h1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w + i + 8)));
        __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(h0, 16));
        __m256 w1 = _mm256_castsi256_ps(_mm256_slli_epi32(h1, 16));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) {
        uint32_t b = (uint32_t)w[i] << 16;
        float f;
        __builtin_memcpy(&f, &b, 4);
        s += f * x[i];
    }
    return s;
}

// ---- several tokens per weight row ---------------------------------------------------------------
//
// y[t * y_stride] = dot(w, x + t * x_stride) for t < m, each with exactly the accumulation of the
// one-token kernel above (two 8-lane sums over 16-element steps, then hsum, then the scalar tail), so
// a token's result does not depend on how many tokens share the call: verification batches equal
// one-token decode steps bit for bit. The weight vector is loaded and converted once for up to 4 tokens.

template <int M, class T, class Load>
static inline void dots_m(Load load, const T* w, const float* x, int64_t x_stride, int64_t n, float* y,
                          int64_t y_stride) {
    __m256 a0[M], a1[M];
    for (int t = 0; t < M; ++t) a0[t] = a1[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        const __m256 w0 = load(w + i), w1 = load(w + i + 8);
        for (int t = 0; t < M; ++t) {
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * x_stride + i), a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * x_stride + i + 8), a1[t]);
        }
    }
    for (int t = 0; t < M; ++t) y[t * y_stride] = hsum256(_mm256_add_ps(a0[t], a1[t]));
}

template <class T, class Load, class Scalar>
static void dots_any(Load load, Scalar scalar, const T* w, const float* x, int64_t x_stride, int64_t m, int64_t n,
                     float* y, int64_t y_stride) {
    int64_t t = 0;
    for (; t + 4 <= m; t += 4) dots_m<4>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride);
    switch (m - t) {
        case 3: dots_m<3>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride); break;
        case 2: dots_m<2>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride); break;
        case 1: dots_m<1>(load, w, x + t * x_stride, x_stride, n, y + t * y_stride, y_stride); break;
        default: break;
    }
    for (int64_t u = 0; u < m; ++u) {  // the scalar tail, as the one-token kernels add it
        float s = y[u * y_stride];
        for (int64_t i = n & ~int64_t(15); i < n; ++i) s += scalar(w[i]) * x[u * x_stride + i];
        y[u * y_stride] = s;
    }
}

static inline __m256 load_f32(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline __m256 load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline float f32_scalar(float v) { return v; }
static inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
static inline float bf16_scalar(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &b, 4);
    return f;
}

void dots_f32_avx2(const float* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                   int64_t y_stride) {
    dots_any(load_f32, f32_scalar, w, x, x_stride, m, n, y, y_stride);
}

void dots_f16_avx2(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                   int64_t y_stride) {
    dots_any(load_f16, f16_scalar, w, x, x_stride, m, n, y, y_stride);
}

void dots_bf16_avx2(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                    int64_t y_stride) {
    dots_any(load_bf16, bf16_scalar, w, x, x_stride, m, n, y, y_stride);
}

void axpy_f16_avx2(float* acc, const uint16_t* h, float a, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i)));
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(acc + i)));
    }
    for (; i < n; ++i) acc[i] += a * _cvtsh_ss(h[i]);
}

// acc[d] += w[s] * V[s][d] for s in order, one fma per step as axpy_f16_avx2 does, with 32 columns of acc
// held in registers across the keys (the attention's P V for one row over a block of keys).
void wsum_avx2(float* acc, const float* V, const float* w, int64_t nk, int64_t D) {
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        __m256 a2 = _mm256_loadu_ps(acc + d + 16), a3 = _mm256_loadu_ps(acc + d + 24);
        for (int64_t s = 0; s < nk; ++s) {
            const __m256 ws = _mm256_set1_ps(w[s]);
            const float* v = V + s * D + d;
            a0 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(ws, _mm256_loadu_ps(v + 24), a3);
        }
        _mm256_storeu_ps(acc + d, a0);
        _mm256_storeu_ps(acc + d + 8, a1);
        _mm256_storeu_ps(acc + d + 16, a2);
        _mm256_storeu_ps(acc + d + 24, a3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 a = _mm256_loadu_ps(acc + d);
        for (int64_t s = 0; s < nk; ++s) a = _mm256_fmadd_ps(_mm256_set1_ps(w[s]), _mm256_loadu_ps(V + s * D + d), a);
        _mm256_storeu_ps(acc + d, a);
    }
    for (; d < D; ++d)
        for (int64_t s = 0; s < nk; ++s) acc[d] = std::fma(w[s], V[s * D + d], acc[d]);
}

}  // namespace pq
