#include "gdn.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
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

void gdn_chunk_decays(const float* g, int64_t gb_stride, int64_t L, float* D) {
    const int64_t ld = L + 1;
    float e[kGdnChunkMax];  // exp(g) of each token
    for (int64_t t = 0; t < L; ++t) e[t] = std::exp(g[t * gb_stride]);
    for (int64_t i = 0; i < L; ++i) {
        float* row = D + i * ld;
        for (int64_t j = i + 1; j < L; ++j) row[j + 1] = 0.0f;
        row[i + 1] = 1.0f;
        // dec(i, j) = dec(i, j + 1) * exp(g_{j+1}): the factors the token loop applies between j and i.
        // Below 2^-64 a decay is flushed to 0: its terms are under float epsilon squared of the O(1) ones,
        // and left alone its products reach subnormals, which cost the FMA units ~100x (a chunk of 64
        // fast-decaying tokens took 7x the token loop's time).
        for (int64_t j = i - 1; j >= -1; --j) {
            const float d = row[j + 2] * e[j + 1];
            row[j + 1] = d < 0x1p-64f ? 0.0f : d;
        }
    }
}

void delta_rule_chunked_ref(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                            int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S,
                            int64_t dk, int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride,
                            int64_t chunk) {
    if (chunk < 1 || chunk > kGdnChunkMax)
        throw std::invalid_argument("delta rule chunk must be 1.." + std::to_string(kGdnChunkMax) + " tokens");
    std::vector<float> D, A, T, U, W, Vn, qs(dk);
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t L = std::min(chunk, n - c0), ld = L + 1;
        const float* qc = q + c0 * q_stride;
        const float* kc = k + c0 * k_stride;
        const float* vc = v + c0 * v_stride;
        const float* bc = beta + c0 * gb_stride;
        D.assign(L * ld, 0.0f);
        gdn_chunk_decays(g + c0 * gb_stride, gb_stride, L, D.data());
        auto dec = [&](int64_t i, int64_t j) { return D[i * ld + j + 1]; };
        auto kk = [&](int64_t i, int64_t j) {
            float s = 0.0f;
            for (int64_t x = 0; x < dk; ++x) s += kc[i * k_stride + x] * kc[j * k_stride + x];
            return s;
        };
        // A's strictly lower part, then T = (I + A)^-1 row by row: T_ij = -sum_{j <= m < i} A_im T_mj.
        A.assign(L * L, 0.0f);
        T.assign(L * L, 0.0f);
        for (int64_t i = 0; i < L; ++i)
            for (int64_t j = 0; j < i; ++j) A[i * L + j] = bc[i * gb_stride] * kk(i, j) * dec(i, j);
        for (int64_t i = 0; i < L; ++i) {
            T[i * L + i] = 1.0f;
            for (int64_t j = 0; j < i; ++j) {
                float s = 0.0f;
                for (int64_t m = j; m < i; ++m) s += A[i * L + m] * T[m * L + j];
                T[i * L + j] = -s;
            }
        }
        // U = T diag(beta) V, W = T diag(beta) K dec(., -1)
        U.assign(L * dv, 0.0f);
        W.assign(L * dk, 0.0f);
        for (int64_t i = 0; i < L; ++i)
            for (int64_t m = 0; m <= i; ++m) {
                const float tb = T[i * L + m] * bc[m * gb_stride];
                for (int64_t j = 0; j < dv; ++j) U[i * dv + j] += tb * vc[m * v_stride + j];
                for (int64_t x = 0; x < dk; ++x) W[i * dk + x] += tb * dec(m, -1) * kc[m * k_stride + x];
            }
        // V' = U - W S (S[j * dk + x] is the math state's element (x, j))
        Vn.assign(L * dv, 0.0f);
        for (int64_t i = 0; i < L; ++i)
            for (int64_t j = 0; j < dv; ++j) {
                float s = 0.0f;
                for (int64_t x = 0; x < dk; ++x) s += W[i * dk + x] * S[j * dk + x];
                Vn[i * dv + j] = U[i * dv + j] - s;
            }
        for (int64_t t = 0; t < L; ++t) {
            for (int64_t x = 0; x < dk; ++x) qs[x] = qc[t * q_stride + x] * q_scale;
            float* ot = o + (c0 + t) * o_stride;
            for (int64_t j = 0; j < dv; ++j) {
                float s = 0.0f;
                for (int64_t x = 0; x < dk; ++x) s += qs[x] * S[j * dk + x];
                ot[j] = dec(t, -1) * s;
            }
            for (int64_t s_ = 0; s_ <= t; ++s_) {
                float qk = 0.0f;
                for (int64_t x = 0; x < dk; ++x) qk += qs[x] * kc[s_ * k_stride + x];
                const float p = qk * dec(t, s_);
                for (int64_t j = 0; j < dv; ++j) ot[j] += p * Vn[s_ * dv + j];
            }
        }
        const float dl = dec(L - 1, -1);
        for (int64_t j = 0; j < dv; ++j)
            for (int64_t x = 0; x < dk; ++x) {
                float s = dl * S[j * dk + x];
                for (int64_t t = 0; t < L; ++t) s += Vn[t * dv + j] * kc[t * k_stride + x] * dec(L - 1, t);
                S[j * dk + x] = s;
            }
    }
}

}  // namespace pq
