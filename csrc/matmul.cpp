#include "matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "qgemm.h"
#include "simd/dispatch.h"

namespace pq {

float dot_f32_ref(const float* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += w[i] * x[i];
    return s;
}

float dot_f16_ref(const uint16_t* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += fp16_to_fp32(w[i]) * x[i];
    return s;
}

float dot_bf16_ref(const uint16_t* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += bf16_to_fp32(w[i]) * x[i];
    return s;
}

void axpy_f16_ref(float* acc, const uint16_t* h, float a, int64_t n) {
    for (int64_t i = 0; i < n; ++i) acc[i] += a * fp16_to_fp32(h[i]);
}

// Tokens are processed in tiles so that a tile of activations stays in cache while the thread walks
// its weight rows; each weight row is then read n_tok / kTokTile times instead of n_tok times.
static constexpr int64_t kTokTile = 16;

static void matmul_float(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y) {
    const int64_t K = W.ne0, N = W.ne1;
    const SimdKernels& sk = simd_kernels();
    // A kernel set with a several-row kernel takes the thread's whole block of rows per token tile.
    const auto rows_fn = W.type == T_F16 ? sk.rows_f16 : W.type == T_BF16 ? sk.rows_bf16 : nullptr;
    pool.parallel_for(N, [&](int64_t r0, int64_t r1, int) {
        for (int64_t t0 = 0; t0 < n_tok; t0 += kTokTile) {
            const int64_t t1 = std::min(n_tok, t0 + kTokTile);
            if (rows_fn) {
                rows_fn((const uint16_t*)W.row(r0), K, r1 - r0, x + t0 * K, K, t1 - t0, K, y + t0 * N + r0, N);
                continue;
            }
            for (int64_t r = r0; r < r1; ++r) {
                // One weight row against the tile's tokens, each token summed as a one-token dot would.
                const void* wr = W.row(r);
                const float* xt = x + t0 * K;
                float* yt = y + t0 * N + r;
                switch (W.type) {
                    case T_F32: sk.dots_f32((const float*)wr, xt, K, t1 - t0, K, yt, N); break;
                    case T_F16: sk.dots_f16((const uint16_t*)wr, xt, K, t1 - t0, K, yt, N); break;
                    default: sk.dots_bf16((const uint16_t*)wr, xt, K, t1 - t0, K, yt, N); break;
                }
            }
        }
    });
}

// From this many tokens on, k-quant weights go through the packed GEMM (qgemm.h): unpacking a weight
// block costs about as much as a few dot products with it, so a decode step keeps the direct dots.
static constexpr int64_t kGemmMinTokens = 16;

// PYQWEN_QGEMM=off keeps every matmul on the per-(row, token) dots: the before/after switch for
// benchmarks (results are bit-identical either way). Read once.
static bool qgemm_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("PYQWEN_QGEMM");
        return !(e && !std::strcmp(e, "off"));
    }();
    return on;
}

static void matmul_quant(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y) {
    if (qgemm_supported(W.type) && qgemm_enabled()) {
        if (n_tok >= kGemmMinTokens) {
            qgemm(pool, W, x, n_tok, y);
            return;
        }
        if (qgemv(pool, W, x, n_tok, y)) return;
    }
    const QuantTraits* qt = quant_traits(W.type);
    const int64_t K = W.ne0, N = W.ne1;
    const size_t act_row = row_bytes(qt->vec_dot_type, K);
    std::vector<uint8_t> xq((size_t)n_tok * act_row);
    pool.parallel_for(n_tok, [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) qt->quantize_act(x + t * K, xq.data() + t * act_row, K);
    });
    pool.parallel_for(N, [&](int64_t r0, int64_t r1, int) {
        for (int64_t t0 = 0; t0 < n_tok; t0 += kTokTile) {
            const int64_t t1 = std::min(n_tok, t0 + kTokTile);
            for (int64_t r = r0; r < r1; ++r) {
                const void* wr = W.row(r);
                for (int64_t t = t0; t < t1; ++t) y[t * N + r] = qt->vec_dot(K, wr, xq.data() + t * act_row);
            }
        }
    });
}

void matmul(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y) {
    if (W.type == T_F32 || W.type == T_F16 || W.type == T_BF16) {
        matmul_float(pool, W, x, n_tok, y);
    } else {
        matmul_quant(pool, W, x, n_tok, y);
    }
}

}  // namespace pq
