// gdn_chunk.cpp: the chunked gated delta rule with its products on gdn_gemm() (see gdn_chunk.h).
//
// Per head the math state S [dk][dv] (the transpose of the stored rows) lives in a scratch copy for the
// whole call, so every product is a plain row-major A B. Per chunk of L tokens:
//   KK = K K^T, QK = Qs K^T                     (Kt = K^T [dk][L]; Qs = q_scale Q)
//   A  = strictly-lower(beta KK o dec), T = (I + A)^-1 by forward substitution (L^3/6, scalar)
//   U  = T (beta V),  W = T (beta K dec(., -1))
//   [W S ; Qs dec(., -1) S] in one product (the two share S's reads)
//   V' = U - W S,  O = Qs dec S + (QK o dec o causal) V',  S = dec_L S + (K^T o dec(L-1, .)) V'
#include "gdn_chunk.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "gdn.h"
#include "simd/dispatch.h"

namespace pq {

#if defined(PQ_HAVE_AVX2_KERNELS)
void gdn_gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float* C, int64_t ldc, float c_scale);
#endif
#if defined(PQ_HAVE_AVX2_KERNELS) && defined(PQ_HAVE_AVX512_KERNELS)
void gdn_gemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, float c_scale);
#endif

static void gdn_gemm_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                         float* C, int64_t ldc, float c_scale) {
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            float s = c_scale == 0.0f ? 0.0f : c_scale * C[i * ldc + j];
            for (int64_t x = 0; x < K; ++x) s += A[i * lda + x] * B[x * ldb + j];
            C[i * ldc + j] = s;
        }
}

// -1: not decided yet (PYQWEN_GDN_CHUNK decides on first use); 0 off; 1 on.
static std::atomic<int> g_chunked{-1};

void gdn_set_chunked(bool on) { g_chunked.store(on ? 1 : 0); }

bool gdn_chunked_enabled() {
    int m = g_chunked.load();
    if (m < 0) {
        const char* e = std::getenv("PYQWEN_GDN_CHUNK");
        m = e && !std::strcmp(e, "on") ? 1 : 0;
        g_chunked.store(m);
    }
    return m == 1;
}

bool gdn_use_chunked(int64_t n) { return n >= kGdnChunkMinTokens && gdn_chunked_enabled(); }

GdnGemmFn gdn_gemm() {
    const char* name = simd_kernels().name;
#if defined(PQ_HAVE_AVX2_KERNELS) && defined(PQ_HAVE_AVX512_KERNELS)
    if (!std::strcmp(name, "avx512")) return gdn_gemm_avx512;
#endif
#if defined(PQ_HAVE_AVX2_KERNELS)
    if (!std::strcmp(name, "avx2") || !std::strcmp(name, "avx512")) return gdn_gemm_avx2;
#endif
    (void)name;
    return gdn_gemm_ref;
}

// Flush-to-zero and denormals-are-zero on this thread while a chunked call runs. With fast decays the
// in-chunk products (A's entries times T's, T times beta K dec) reach 2^-126 and below; each subnormal
// operand or result costs the FMA units ~100 cycles (at chunk 64 the call took 3x its time), and such
// values are 2^-100 below the O(1) terms they are added to.
struct FlushSubnormals {
#if defined(__SSE__) || defined(__x86_64__)
    unsigned saved = _mm_getcsr();
    FlushSubnormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
    ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

void delta_rule_chunked(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                        int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S, int64_t dk,
                        int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride, int64_t chunk) {
    if (chunk < 1 || chunk > kGdnChunkMax)
        throw std::invalid_argument("delta rule chunk must be 1.." + std::to_string(kGdnChunkMax) + " tokens");
    if (!std::strcmp(simd_kernels().name, "ref")) {
        delta_rule_chunked_ref(q, k, v, q_stride, k_stride, v_stride, g, beta, gb_stride, S, dk, dv, n, q_scale, o,
                               o_stride, chunk);
        return;
    }
    const GdnGemmFn gemm = gdn_gemm();
    FlushSubnormals ftz;
    const int64_t Lm = std::min(chunk, n);
    // The math state's rows are padded: at dv = 128 an unpadded 512-byte stride puts a 32-column panel's
    // 128 rows into 16 of L1's 64 sets (192 lines for 256), so the product re-fetched them from L2.
    const int64_t lds = dv % 32 == 0 ? dv + 16 : dv;
    std::vector<float> Sm(dk * lds), Kt(dk * Lm), Qs(Lm * dk), KK(Lm * Lm), QK(Lm * Lm), T(Lm * Lm), Bv(Lm * dv),
        Bk(Lm * dk), U(Lm * dv), X(2 * Lm * dk), XS(2 * Lm * dv), D(Lm * (Lm + 1));
    for (int64_t j = 0; j < dv; ++j)
        for (int64_t x = 0; x < dk; ++x) Sm[x * lds + j] = S[j * dk + x];

    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t L = std::min(chunk, n - c0), ld = L + 1;
        const float* qc = q + c0 * q_stride;
        const float* kc = k + c0 * k_stride;
        const float* vc = v + c0 * v_stride;
        const float* bc = beta + c0 * gb_stride;
        gdn_chunk_decays(g + c0 * gb_stride, gb_stride, L, D.data());
        auto dec = [&](int64_t i, int64_t j) { return D[i * ld + j + 1]; };

        for (int64_t t = 0; t < L; ++t) {
            const float* kt = kc + t * k_stride;
            const float* qt = qc + t * q_stride;
            for (int64_t x = 0; x < dk; ++x) {
                Kt[x * L + t] = kt[x];
                Qs[t * dk + x] = qt[x] * q_scale;
            }
        }
        gemm(L, L, dk, kc, k_stride, Kt.data(), L, KK.data(), L, 0.0f);
        gemm(L, L, dk, Qs.data(), dk, Kt.data(), L, QK.data(), L, 0.0f);

        // T = (I + A)^-1, A_ij = beta_i KK_ij dec(i, j) for j < i (A kept in KK's lower part).
        for (int64_t i = 0; i < L; ++i) {
            const float b = bc[i * gb_stride];
            for (int64_t j = 0; j < i; ++j) KK[i * L + j] *= b * dec(i, j);
        }
        std::fill(T.begin(), T.begin() + L * L, 0.0f);
        for (int64_t i = 0; i < L; ++i) {
            float* Ti = T.data() + i * L;
            Ti[i] = 1.0f;
            const float* Ai = KK.data() + i * L;
            for (int64_t m = 0; m < i; ++m) {  // Ti[0..m] -= A_im T_m[0..m], rows of T in order
                const float a = Ai[m];
                const float* Tm = T.data() + m * L;
                for (int64_t j = 0; j <= m; ++j) Ti[j] -= a * Tm[j];
            }
        }
        for (int64_t t = 0; t < L; ++t) {
            const float b = bc[t * gb_stride], bd = b * dec(t, -1);
            const float* vt = vc + t * v_stride;
            const float* kt = kc + t * k_stride;
            for (int64_t j = 0; j < dv; ++j) Bv[t * dv + j] = b * vt[j];
            for (int64_t x = 0; x < dk; ++x) Bk[t * dk + x] = bd * kt[x];
        }
        gemm(L, dv, L, T.data(), L, Bv.data(), dv, U.data(), dv, 0.0f);
        gemm(L, dk, L, T.data(), L, Bk.data(), dk, X.data(), dk, 0.0f);  // W: X's first L rows
        for (int64_t t = 0; t < L; ++t) {
            const float d = dec(t, -1);
            for (int64_t x = 0; x < dk; ++x) X[(L + t) * dk + x] = Qs[t * dk + x] * d;
        }
        gemm(2 * L, dv, dk, X.data(), dk, Sm.data(), lds, XS.data(), dv, 0.0f);
        for (int64_t i = 0; i < L * dv; ++i) U[i] -= XS[i];  // U becomes V'
        // O = Qs dec S + P V' with P = QK o dec o causal (kept in QK).
        for (int64_t t = 0; t < L; ++t) {
            float* Pt = QK.data() + t * L;
            for (int64_t s = 0; s <= t; ++s) Pt[s] *= dec(t, s);
            for (int64_t s = t + 1; s < L; ++s) Pt[s] = 0.0f;
            std::memcpy(o + (c0 + t) * o_stride, XS.data() + (L + t) * dv, dv * sizeof(float));
        }
        gemm(L, dv, L, QK.data(), L, U.data(), dv, o + c0 * o_stride, o_stride, 1.0f);
        // S = dec(L-1, -1) S + (K^T o dec(L-1, .)) V'
        for (int64_t x = 0; x < dk; ++x)
            for (int64_t t = 0; t < L; ++t) Kt[x * L + t] *= dec(L - 1, t);
        gemm(dk, dv, L, Kt.data(), L, U.data(), dv, Sm.data(), lds, dec(L - 1, -1));
    }
    for (int64_t j = 0; j < dv; ++j)
        for (int64_t x = 0; x < dk; ++x) S[j * dk + x] = Sm[x * lds + j];
}

}  // namespace pq
