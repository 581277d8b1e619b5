// dot_avx512.cpp: AVX-512 versions of the F16/BF16 weight dot products (reference: matmul.cpp *_ref).
//
// 16-lane sums over 32-element steps (two accumulators), then the scalar tail: the one-token and the
// several-token kernels below share that order exactly, so a token's result does not depend on how
// many tokens share the pass over a weight row. Up to 8 tokens per pass (16 accumulators + the two
// converted weight vectors fit the 32 zmm registers): a speculative verification of up to 8 tokens
// reads and converts each weight once.
//
// The 16-lane sum is folded by an explicit tree (avx512_util.h hsum512: GCC's _mm512_reduce_add_ps
// order, written out so no compiler's intrinsic decides it), and the several-row kernel (rows_*) folds
// four sums at once by the same tree with transposing shuffles (reduce4): on the demo model's short rows (K = 256) the
// per-(row, token) fold was a third of a dot's instructions, on the ports the FMAs and the F16
// conversions need.
#include <immintrin.h>

#include <cstdint>

#include "simd/avx512_util.h"

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

// hsum512 of a, b, c, d (avx512_util.h: the one-token dot's own tree) into out[0..3], picked from a
// stored vector (the form the several-row kernel was measured with).
inline void reduce4(__m512 a, __m512 b, __m512 c, __m512 d, float* out) {
    alignas(64) float t[16];
    _mm512_store_ps(t, hsum512x4_lanes(a, b, c, d));
    out[0] = t[0];
    out[1] = t[4];
    out[2] = t[8];
    out[3] = t[12];
}

// The scalar tail after the 32-element steps (both kernels below use this one expression).
template <class Scalar>
inline float add_tail(float s, Scalar scalar, const float* x, int64_t n) {
    for (int64_t i = n & ~int64_t(31); i < n; ++i) s += scalar(i) * x[i];
    return s;
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
    for (int t = 0; t < M; ++t) y[t * y_stride] = hsum512(_mm512_add_ps(a0[t], a1[t]));
}

// R weight rows x M tokens: out[r * M + t] = the 16-lane sum vector (a0 + a1) of row r and token t,
// each accumulated exactly as dots_m accumulates it.
// 8 rows: 4 KB ahead on the demo's K = 256 rows (4-16 rows measured within noise of each other; none
// 1.4-1.7x slower on a 25 MB weight, 2-5 tokens).
constexpr int64_t kPrefetchRows = 8;

template <int R, int M, class Load, class Prefetch>
inline void vecs_rm(Load load, Prefetch pf, int64_t w_stride, int64_t n, const float* x, int64_t x_stride, __m512* out) {
    __m512 a0[R][M], a1[R][M];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < M; ++t) a0[r][t] = a1[r][t] = _mm512_setzero_ps();
    for (int64_t i = 0; i + 32 <= n; i += 32) {
        for (int r = 0; r < R; ++r) {
            // The weights stream from beyond the private caches (the demo's 24 MB does not fit L2) and a
            // row is a few cache lines: the hardware prefetcher alone leaves a several-token pass waiting
            // on them. Each step asks for the line kPrefetchRows rows ahead (a hint: past the end of the
            // tensor it is dropped, never a fault).
            pf(r * w_stride + i + kPrefetchRows * w_stride);
            const __m512 w0 = load(r * w_stride + i), w1 = load(r * w_stride + i + 16);
            for (int t = 0; t < M; ++t) {
                a0[r][t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * x_stride + i), a0[r][t]);
                a1[r][t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * x_stride + i + 16), a1[r][t]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < M; ++t) out[r * M + t] = _mm512_add_ps(a0[r][t], a1[r][t]);
}

template <int R, class Load, class Prefetch>
inline void vecs_r(Load load, Prefetch pf, int64_t w_stride, int64_t n, const float* x, int64_t x_stride, int64_t m, __m512* out) {
    switch (m) {
        case 8: vecs_rm<R, 8>(load, pf, w_stride, n, x, x_stride, out); break;
        case 7: vecs_rm<R, 7>(load, pf, w_stride, n, x, x_stride, out); break;
        case 6: vecs_rm<R, 6>(load, pf, w_stride, n, x, x_stride, out); break;
        case 5: vecs_rm<R, 5>(load, pf, w_stride, n, x, x_stride, out); break;
        case 4: vecs_rm<R, 4>(load, pf, w_stride, n, x, x_stride, out); break;
        case 3: vecs_rm<R, 3>(load, pf, w_stride, n, x, x_stride, out); break;
        case 2: vecs_rm<R, 2>(load, pf, w_stride, n, x, x_stride, out); break;
        default: vecs_rm<R, 1>(load, pf, w_stride, n, x, x_stride, out); break;
    }
}

// y[t * y_stride + r] for r < rows, t < m: rows of w (w_stride apart) against m tokens. Rows go in
// blocks (4 for one token, 2 for up to 4 tokens: enough independent sums to hide the FMA latency on
// short rows; 1 from 5 tokens on, whose 2 x 8 accumulators already fill the registers), tokens in
// tiles of up to 8 per pass; the sums of a block are folded four at a time.
template <class LoadAt, class ScalarAt, class PrefetchAt>
void rows_any(LoadAt load_at, ScalarAt scalar_at, PrefetchAt prefetch_at, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride,
              int64_t m, int64_t n, float* y, int64_t y_stride) {
    const int rb = m == 1 ? 4 : m <= 4 ? 2 : 1;
    __m512 v[4 * 8];
    float s[4 * 8 + 3];
    for (int64_t r0 = 0, R; r0 < rows; r0 += R) {
        R = rows - r0 < rb ? 1 : rb;  // the last rows of an uneven split: one at a time
        for (int64_t t0 = 0; t0 < m; t0 += 8) {
            const int64_t M = m - t0 < 8 ? m - t0 : 8;
            const auto load = [&](int64_t i) { return load_at(r0 * w_stride + i); };
            const float* xt = x + t0 * x_stride;
            const auto pf = [&](int64_t i) { prefetch_at(r0 * w_stride + i); };
            if (R == 4) vecs_r<4>(load, pf, w_stride, n, xt, x_stride, M, v);
            else if (R == 2) vecs_r<2>(load, pf, w_stride, n, xt, x_stride, M, v);
            else vecs_r<1>(load, pf, w_stride, n, xt, x_stride, M, v);
            const int cnt = (int)(R * M);
            for (int j = cnt; j % 4; ++j) v[j] = _mm512_setzero_ps();
            for (int j = 0; j < cnt; j += 4) reduce4(v[j], v[j + 1], v[j + 2], v[j + 3], s + j);
            for (int r = 0; r < R; ++r)
                for (int64_t t = 0; t < M; ++t) {
                    const int64_t row = r0 + r;
                    y[(t0 + t) * y_stride + row] = add_tail(
                        s[r * M + t], [&](int64_t i) { return scalar_at(row * w_stride + i); }, xt + t * x_stride, n);
                }
        }
    }
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
    for (int64_t u = 0; u < m; ++u) y[u * y_stride] = add_tail(y[u * y_stride], scalar, x + u * x_stride, n);
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

void rows_f16_avx512(const uint16_t* w, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride, int64_t m,
                     int64_t n, float* y, int64_t y_stride) {
    rows_any([w](int64_t i) { return load_w(w + i, false); }, [w](int64_t i) { return scalar_w(w[i], false); },
             [w](int64_t i) { _mm_prefetch((const char*)(w + i), _MM_HINT_T0); }, w_stride, rows, x, x_stride, m, n, y, y_stride);
}

void rows_bf16_avx512(const uint16_t* w, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride, int64_t m,
                      int64_t n, float* y, int64_t y_stride) {
    rows_any([w](int64_t i) { return load_w(w + i, true); }, [w](int64_t i) { return scalar_w(w[i], true); },
             [w](int64_t i) { _mm_prefetch((const char*)(w + i), _MM_HINT_T0); }, w_stride, rows, x, x_stride, m, n, y, y_stride);
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
