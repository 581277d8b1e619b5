// dot_avx512.cpp: AVX-512 versions of the F16/BF16 weight dot products (reference: matmul.cpp *_ref).
//
// 16-lane sums over 32-element steps (two accumulators), then the scalar tail: the one-token and the
// several-token kernels below share that order exactly, so a token's result does not depend on how
// many tokens share the pass over a weight row. Up to 8 tokens per pass (16 accumulators + the two
// converted weight vectors fit the 32 zmm registers): a speculative verification of up to 8 tokens
// reads and converts each weight once.
#include <immintrin.h>

#include <cstdint>

namespace pq {

namespace {

inline __m512 load_w(const uint16_t* p, bool bf16) {
    const __m256i h = _mm256_loadu_si256((const __m256i*)p);
    return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

inline float scalar_w(uint16_t h, bool bf16) {
    if (bf16) {
        uint32_t b = (uint32_t)h << 16;
        float f;
        __builtin_memcpy(&f, &b, 4);
        return f;
    }
    return _cvtsh_ss(h);
}

template <int M, class Load>
inline void dots_m(Load load, int64_t n, const float* x, int64_t x_stride, float* y, int64_t y_stride) {
    __m512 a0[M], a1[M];
    for (int t = 0; t < M; ++t) a0[t] = a1[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i + 32 <= n; i += 32) {
        const __m512 w0 = load(i), w1 = load(i + 16);
        for (int t = 0; t < M; ++t) {
            a0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * x_stride + i), a0[t]);
            a1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * x_stride + i + 16), a1[t]);
        }
    }
    for (int t = 0; t < M; ++t) y[t * y_stride] = _mm512_reduce_add_ps(_mm512_add_ps(a0[t], a1[t]));
}

template <class Load, class Scalar>
void dots_any(Load load, Scalar scalar, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
              int64_t y_stride) {
    for (int64_t t = 0; t < m; t += 8) {
        const float* xt = x + t * x_stride;
        float* yt = y + t * y_stride;
        switch (m - t < 8 ? m - t : 8) {
            case 8: dots_m<8>(load, n, xt, x_stride, yt, y_stride); break;
            case 7: dots_m<7>(load, n, xt, x_stride, yt, y_stride); break;
            case 6: dots_m<6>(load, n, xt, x_stride, yt, y_stride); break;
            case 5: dots_m<5>(load, n, xt, x_stride, yt, y_stride); break;
            case 4: dots_m<4>(load, n, xt, x_stride, yt, y_stride); break;
            case 3: dots_m<3>(load, n, xt, x_stride, yt, y_stride); break;
            case 2: dots_m<2>(load, n, xt, x_stride, yt, y_stride); break;
            default: dots_m<1>(load, n, xt, x_stride, yt, y_stride); break;
        }
    }
    for (int64_t u = 0; u < m; ++u) {  // the scalar tail
        float s = y[u * y_stride];
        for (int64_t i = n & ~int64_t(31); i < n; ++i) s += scalar(i) * x[u * x_stride + i];
        y[u * y_stride] = s;
    }
}

}  // namespace

void dots_f16_avx512(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                     int64_t y_stride) {
    dots_any([w](int64_t i) { return load_w(w + i, false); }, [w](int64_t i) { return scalar_w(w[i], false); }, x,
             x_stride, m, n, y, y_stride);
}

void dots_bf16_avx512(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                      int64_t y_stride) {
    dots_any([w](int64_t i) { return load_w(w + i, true); }, [w](int64_t i) { return scalar_w(w[i], true); }, x,
             x_stride, m, n, y, y_stride);
}

float dot_f16_avx512(const uint16_t* w, const float* x, int64_t n) {
    float y;
    dots_f16_avx512(w, x, 0, 1, n, &y, 0);
    return y;
}

float dot_bf16_avx512(const uint16_t* w, const float* x, int64_t n) {
    float y;
    dots_bf16_avx512(w, x, 0, 1, n, &y, 0);
    return y;
}

}  // namespace pq
