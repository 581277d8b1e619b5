// attn_avx2.cpp: flash-style attention over an F16 KV cache (attention.h attention_rows with F16 K
// and V), for the AVX2 and AVX-512 kernel sets.
//
// attention_rows' reference form writes an M x keys score matrix and walks it three more times (max,
// exponentials, weighted sum), converting each F16 K row once per 8 query rows. Here keys go in tiles
// of kTile: the tile's K and V rows are widened to floats once for all M rows, the scores of the tile
// are register-blocked (2 query rows x 4 keys per step), and each row keeps an online softmax (running
// max m, sum l, output accumulator rescaled by exp(m_old - m_new)), so nothing of size M x keys exists.
//
// A row's result depends only on its own query, its own n_keys and the cache: tiles start at fixed key
// positions, each score is its own 8-lane FMA chain over d reduced in a fixed order, the exponentials
// are lane-wise, the running sums go key by key, and the output accumulators are per (row, d). So a
// verification batch equals one-token steps bit for bit. It is not bit-identical to attention_head (the
// spec): the dot order and the online rescaling round differently (tests/test_kv_quant.py bounds it).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace pq {

namespace {

constexpr int64_t kTile = 32;  // keys per tile: K and V tiles of 32 x D floats stay in L1/L2

// Cephes expf as in act_avx2.cpp (the softmax's exponential there), 8 lanes.
inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// The 8 lanes of v summed in a fixed tree (the same for every score).
inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// S[r * kTile + c] = q_r . k_c for R rows x C keys of the tile (floats, D a multiple of 8).
template <int R, int C>
inline void scores_block(const float* const* q, const float* kf, int64_t D, float* S) {
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        __m256 kv[C];
        for (int c = 0; c < C; ++c) kv[c] = _mm256_loadu_ps(kf + c * D + d);
        for (int r = 0; r < R; ++r) {
            const __m256 qv = _mm256_loadu_ps(q[r] + d);
            for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(qv, kv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) S[r * kTile + c] = hsum8(acc[r][c]);
}

template <int R>
inline void scores_rows(const float* const* q, const float* kf, int64_t nk, int64_t D, float* S) {
    int64_t c = 0;
    for (; c + 4 <= nk; c += 4) scores_block<R, 4>(q, kf + c * D, D, S + c);
    for (; c < nk; ++c) scores_block<R, 1>(q, kf + c * D, D, S + c);
}

// o_r = o_r * alpha_r + sum over keys c < nk of p[r][c] * v_c (keys in order), R rows, 32 floats of d
// per step (R x 4 accumulators), then 8 at a time.
template <int R>
inline void pv_rows(float* const* o, const float* alpha, const float* P, const float* vf, int64_t nk, int64_t D) {
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        __m256 acc[R][4];
        for (int r = 0; r < R; ++r) {
            const __m256 a = _mm256_set1_ps(alpha[r]);
            for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_mul_ps(_mm256_loadu_ps(o[r] + d + 8 * j), a);
        }
        for (int64_t c = 0; c < nk; ++c) {
            __m256 vv[4];
            for (int j = 0; j < 4; ++j) vv[j] = _mm256_loadu_ps(vf + c * D + d + 8 * j);
            for (int r = 0; r < R; ++r) {
                const __m256 p = _mm256_set1_ps(P[r * kTile + c]);
                for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_fmadd_ps(p, vv[j], acc[r][j]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) _mm256_storeu_ps(o[r] + d + 8 * j, acc[r][j]);
    }
    for (; d < D; d += 8) {
        for (int r = 0; r < R; ++r) {
            __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(o[r] + d), _mm256_set1_ps(alpha[r]));
            for (int64_t c = 0; c < nk; ++c)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(P[r * kTile + c]), _mm256_loadu_ps(vf + c * D + d), acc);
            _mm256_storeu_ps(o[r] + d, acc);
        }
    }
}

// F16 rows -> floats, kTile x D (rows past nk zero).
inline void widen_tile(const uint8_t* src, size_t stride, int64_t nk, int64_t D, float* dst) {
    for (int64_t s = 0; s < nk; ++s) {
        const uint16_t* h = (const uint16_t*)(src + s * stride);
        for (int64_t d = 0; d < D; d += 8)
            _mm256_storeu_ps(dst + s * D + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + d))));
    }
}

}  // namespace

// See attention.h attention_rows; D must be a multiple of 8 (attention.cpp checks).
void attention_rows_f16_avx2(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                             size_t k_stride, const uint8_t* V, size_t v_stride, int64_t D, float scale, float* o,
                             int64_t o_stride) {
    if (M <= 0) return;
    const int64_t L = n_keys[M - 1];
    std::vector<float> kf(kTile * D), vf(kTile * D), S(2 * kTile), mx(M, -INFINITY), l(M, 0.0f);
    for (int64_t i = 0; i < M; ++i) std::fill(o + i * o_stride, o + i * o_stride + D, 0.0f);
    int64_t f = 0;  // the first row that sees the tile (n_keys is non-decreasing)
    for (int64_t s0 = 0; s0 < L; s0 += kTile) {
        while (n_keys[f] <= s0) ++f;
        const int64_t nt = std::min(kTile, L - s0);
        widen_tile(K + s0 * k_stride, k_stride, nt, D, kf.data());
        widen_tile(V + s0 * v_stride, v_stride, nt, D, vf.data());
        for (int64_t i0 = f; i0 < M; i0 += 2) {
            const int R = i0 + 1 < M ? 2 : 1;
            const float* qr[2] = {q + i0 * q_stride, q + (i0 + R - 1) * q_stride};
            float* orow[2] = {o + i0 * o_stride, o + (i0 + R - 1) * o_stride};
            // The tile's keys any of the R rows sees; each row masks its own beyond n_keys[i].
            const int64_t nk = std::min(nt, n_keys[i0 + R - 1] - s0);
            if (R == 2) scores_rows<2>(qr, kf.data(), nk, D, S.data());
            else scores_rows<1>(qr, kf.data(), nk, D, S.data());
            float alpha[2];
            for (int r = 0; r < R; ++r) {
                const int64_t i = i0 + r, own = std::min(nk, n_keys[i] - s0);
                float* Sr = S.data() + r * kTile;
                float m_new = mx[i];
                for (int64_t c = 0; c < own; ++c) {
                    Sr[c] *= scale;
                    m_new = std::max(m_new, Sr[c]);
                }
                // exp(m_old - m_new) and exp(s - m_new) with the same lane-wise exponential; keys past
                // the row's own end weigh exactly 0.
                alignas(32) float e[8] = {mx[i] - m_new};
                _mm256_store_ps(e, exp8(_mm256_load_ps(e)));
                alpha[r] = mx[i] == -INFINITY ? 0.0f : e[0];
                const __m256 mv = _mm256_set1_ps(m_new);
                float sum = 0.0f;
                for (int64_t c = 0; c < nk; c += 8) {
                    alignas(32) float p[8];
                    _mm256_store_ps(p, exp8(_mm256_sub_ps(_mm256_loadu_ps(Sr + c), mv)));
                    for (int k = 0; k < 8 && c + k < nk; ++k) {
                        Sr[c + k] = c + k < own ? p[k] : 0.0f;
                        sum += Sr[c + k];
                    }
                }
                l[i] = l[i] * alpha[r] + sum;
                mx[i] = m_new;
            }
            if (R == 2) pv_rows<2>(orow, alpha, S.data(), vf.data(), nk, D);
            else pv_rows<1>(orow, alpha, S.data(), vf.data(), nk, D);
        }
    }
    for (int64_t i = 0; i < M; ++i) {
        float* oi = o + i * o_stride;
        for (int64_t d = 0; d < D; ++d) oi[d] /= l[i];
    }
}

}  // namespace pq
