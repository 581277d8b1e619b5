#include "gdn.h"

#include <cmath>
#include <vector>

#include "ops.h"

namespace pq {

void conv1d_silu(const float* x, const float* w, float* state, float* y, int64_t C, int64_t K, int64_t n,
                 int64_t c0, int64_t c1) {
    std::vector<float> hist(K);
    for (int64_t ch = c0; ch < c1; ++ch) {
        const float* wc = w + ch * K;
        for (int64_t j = 0; j < K - 1; ++j) hist[j] = state[ch * (K - 1) + j];
        for (int64_t t = 0; t < n; ++t) {
            hist[K - 1] = x[t * C + ch];
            float s = 0.0f;
            for (int64_t j = 0; j < K; ++j) s += hist[j] * wc[j];
            y[t * C + ch] = silu(s);
            for (int64_t j = 0; j < K - 1; ++j) hist[j] = hist[j + 1];
        }
        for (int64_t j = 0; j < K - 1; ++j) state[ch * (K - 1) + j] = hist[j];
    }
}

void delta_rule_head(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                     int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S, int64_t dk,
                     int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride) {
    std::vector<float> qs(dk);
    for (int64_t t = 0; t < n; ++t) {
        const float* qt = q + t * q_stride;
        const float* kt = k + t * k_stride;
        const float* vt = v + t * v_stride;
        const float decay = std::exp(g[t * gb_stride]);
        const float b = beta[t * gb_stride];
        for (int64_t i = 0; i < dk; ++i) qs[i] = qt[i] * q_scale;
        float* ot = o + t * o_stride;
        for (int64_t j = 0; j < dv; ++j) {
            float* row = S + j * dk;
            float u = 0.0f;
            for (int64_t i = 0; i < dk; ++i) {
                row[i] *= decay;
                u += row[i] * kt[i];
            }
            const float delta = b * (vt[j] - u);
            float acc = 0.0f;
            for (int64_t i = 0; i < dk; ++i) {
                row[i] += kt[i] * delta;
                acc += row[i] * qs[i];
            }
            ot[j] = acc;
        }
    }
}

}  // namespace pq
