// act_avx2.cpp: AVX2 versions of the element-wise activations and of the DeltaNet's causal conv
// (references: ops.h silu, gdn.cpp conv1d_silu).
//
// exp is Cephes' single-precision expf (range reduction by ln 2 in two parts, degree-5 polynomial):
// within 2 ulp of libm's expf over the range the activations see, 8 lanes at a time. The conv runs
// across channels (8 per vector) with the taps transposed, instead of one channel at a time.
#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace pq {

namespace {

inline __m256 exp256(__m256 x) {
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

inline __m256 silu256(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(x, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline float silu1(float x) {
    alignas(32) float v[8] = {x};
    _mm256_store_ps(v, silu256(_mm256_load_ps(v)));
    return v[0];
}

}  // namespace

// y[i] = a[i] * silu(s[i]) (y may alias a or s): the FFN's silu(gate) * up, the DeltaNet's gated norm.
void mul_silu_avx2(float* y, const float* a, const float* s, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), silu256(_mm256_loadu_ps(s + i))));
    for (; i < n; ++i) y[i] = a[i] * silu1(s[i]);
}

// x[i] = exp(x[i] - mx[i]), sums[i] += x[i]: the attention softmax's exponentials, 8 rows at a time (the
// tail through the same vector code, so a row's value never depends on where it sits).
void exp_acc_avx2(float* x, const float* mx, float* sums, int64_t m) {
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(mx + i)));
        _mm256_storeu_ps(x + i, e);
        _mm256_storeu_ps(sums + i, _mm256_add_ps(_mm256_loadu_ps(sums + i), e));
    }
    if (i < m) {
        alignas(32) float v[8] = {0}, w[8] = {0};
        for (int64_t j = i; j < m; ++j) {
            v[j - i] = x[j];
            w[j - i] = mx[j];
        }
        _mm256_store_ps(v, exp256(_mm256_sub_ps(_mm256_load_ps(v), _mm256_load_ps(w))));
        for (int64_t j = i; j < m; ++j) {
            x[j] = v[j - i];
            sums[j] += v[j - i];
        }
    }
}

// As gdn.h conv1d_silu, channels [c0, c1) of x/y [n][C], taps w [C][K], state [C][K-1] (oldest first).
void conv1d_silu_avx2(const float* x, const float* w, float* state, float* y, int64_t C, int64_t K, int64_t n,
                      int64_t c0, int64_t c1) {
    const int64_t W = c1 - c0, P = K - 1;
    // Token-major window of this channel range: P rows of state, then the n input rows; taps transposed.
    std::vector<float> win((size_t)(P + n) * W), wt((size_t)K * W);
    for (int64_t c = 0; c < W; ++c) {
        for (int64_t j = 0; j < P; ++j) win[j * W + c] = state[(c0 + c) * P + j];
        for (int64_t j = 0; j < K; ++j) wt[j * W + c] = w[(c0 + c) * K + j];
    }
    for (int64_t t = 0; t < n; ++t)
        for (int64_t c = 0; c < W; ++c) win[(P + t) * W + c] = x[t * C + c0 + c];
    for (int64_t t = 0; t < n; ++t) {
        float* yt = y + t * C + c0;
        int64_t c = 0;
        for (; c + 8 <= W; c += 8) {
            __m256 s = _mm256_setzero_ps();
            for (int64_t j = 0; j < K; ++j)
                s = _mm256_fmadd_ps(_mm256_loadu_ps(&win[(t + j) * W + c]), _mm256_loadu_ps(&wt[j * W + c]), s);
            _mm256_storeu_ps(yt + c, silu256(s));
        }
        for (; c < W; ++c) {
            float s = 0.0f;
            for (int64_t j = 0; j < K; ++j) s += win[(t + j) * W + c] * wt[j * W + c];
            yt[c] = silu1(s);
        }
    }
    for (int64_t c = 0; c < W; ++c)
        for (int64_t j = 0; j < P; ++j) state[(c0 + c) * P + j] = win[(n + j) * W + c];
}

}  // namespace pq
