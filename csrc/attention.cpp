#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "formats.h"
#include "quants.h"
#include "simd/dispatch.h"

namespace pq {

namespace {

// q in the form K's dot product reads: floats for f32/f16 rows, the vec_dot_type blocks for quantized ones.
struct QueryOperand {
    const QuantTraits* qt = nullptr;  // quantized K: its traits
    std::vector<uint8_t> blocks;      // q quantized to qt->vec_dot_type

    QueryOperand(const float* q, int64_t D, int k_type) {
        if (k_type == T_F32 || k_type == T_F16) return;
        qt = quant_traits(k_type);
        blocks.resize(row_bytes(qt->vec_dot_type, D));
        qt->quantize_act(q, blocks.data(), D);
    }

    float dot(const uint8_t* row, const float* q, int64_t D, int k_type) const {
        if (k_type == T_F32) return simd_kernels().dot_f32((const float*)row, q, D);
        if (k_type == T_F16) return simd_kernels().dot_f16((const uint16_t*)row, q, D);
        return qt->vec_dot(D, row, blocks.data());
    }
};

inline void v_axpy(float* acc, const uint8_t* row, float p, int64_t D, int v_type, float* tmp) {
    if (v_type == T_F16) {
        simd_kernels().axpy_f16(acc, (const uint16_t*)row, p, D);
        return;
    }
    const float* r = (const float*)row;
    if (v_type != T_F32) {
        quant_traits(v_type)->to_float(row, tmp, D);
        r = tmp;
    }
    for (int64_t i = 0; i < D; ++i) acc[i] += p * r[i];
}

// PYQWEN_FLASH_ATTN=off keeps the F16 cache on the reference form below: the before/after switch for
// benchmarks (read once).
bool flash_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("PYQWEN_FLASH_ATTN");
        return !(e && !std::strcmp(e, "off"));
    }();
    return on;
}

}  // namespace

void attention_head(const float* q, const uint8_t* K, size_t k_stride, int k_type, const uint8_t* V, size_t v_stride,
                    int v_type, int64_t n_keys, int64_t D, float scale, float* p, float* o) {
    const QueryOperand qo(q, D, k_type);
    float mx = -INFINITY;
    for (int64_t s = 0; s < n_keys; ++s) {
        p[s] = qo.dot(K + s * k_stride, q, D, k_type) * scale;
        mx = std::max(mx, p[s]);
    }
    float sum = 0.0f;
    for (int64_t s = 0; s < n_keys; ++s) {
        p[s] = std::exp(p[s] - mx);
        sum += p[s];
    }
    std::fill(o, o + D, 0.0f);
    std::vector<float> tmp(v_type == T_F32 || v_type == T_F16 ? 0 : D);
    for (int64_t s = 0; s < n_keys; ++s) v_axpy(o, V + s * v_stride, p[s] / sum, D, v_type, tmp.data());
}

bool attention_rows_uses_scores(int k_type, int v_type, int64_t D) {
    return !(k_type == T_F16 && v_type == T_F16 && simd_kernels().attention_rows_f16 && D % 8 == 0 && flash_enabled());
}

void attention_rows(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                    size_t k_stride, int k_type, const uint8_t* V, size_t v_stride, int v_type, int64_t D, float scale,
                    float* S, float* o, int64_t o_stride) {
    if (M <= 0) return;
    const int64_t L = n_keys[M - 1];
    const SimdKernels& sk = simd_kernels();
    if (!attention_rows_uses_scores(k_type, v_type, D)) {
        sk.attention_rows_f16(q, q_stride, M, n_keys, K, k_stride, V, v_stride, D, scale, o, o_stride);
        return;
    }
    // S is key-major, S[s * M + i]: each pass below walks keys in order and, per key, the rows that see it
    // (a suffix i >= first(s): n_keys is non-decreasing), so every row's own sequence of operations is
    // attention_head's while the memory walks stay contiguous.
    std::vector<int64_t> first(L);
    for (int64_t s = 0, f = 0; s < L; ++s) {
        while (n_keys[f] <= s) ++f;
        first[s] = f;
    }
    std::vector<QueryOperand> qo;
    if (k_type != T_F32 && k_type != T_F16)
        for (int64_t i = 0; i < M; ++i) qo.emplace_back(q + i * q_stride, D, k_type);
    for (int64_t s = 0; s < L; ++s) {
        const int64_t f = first[s];
        const uint8_t* row = K + s * k_stride;
        float* Ss = S + s * M;
        if (k_type == T_F16) {
            sk.dots_f16((const uint16_t*)row, q + f * q_stride, q_stride, M - f, D, Ss + f, 1);
        } else if (k_type == T_F32) {
            sk.dots_f32((const float*)row, q + f * q_stride, q_stride, M - f, D, Ss + f, 1);
        } else {
            for (int64_t i = f; i < M; ++i) Ss[i] = qo[i].dot(row, nullptr, D, k_type);
        }
    }
    std::vector<float> mx(M, -INFINITY), sums(M, 0.0f);
    for (int64_t s = 0; s < L; ++s) {
        float* Ss = S + s * M;
        for (int64_t i = first[s]; i < M; ++i) {
            Ss[i] = Ss[i] * scale;
            mx[i] = std::max(mx[i], Ss[i]);
        }
    }
    for (int64_t s = 0; s < L; ++s) sk.exp_acc(S + s * M + first[s], mx.data() + first[s], sums.data() + first[s], M - first[s]);
    for (int64_t i = 0; i < M; ++i) std::fill(o + i * o_stride, o + i * o_stride + D, 0.0f);
    // V in blocks of keys turned to floats once for all rows (dequantized, or widened from f16); each row
    // then takes the block's weighted sum with its accumulator in registers, keys in order.
    constexpr int64_t kBlock = 64;
    std::vector<float> vt(kBlock * D), w(kBlock);
    for (int64_t s0 = 0; s0 < L; s0 += kBlock) {
        const int64_t nb = std::min(kBlock, L - s0);
        for (int64_t s = 0; s < nb; ++s) {
            const uint8_t* row = V + (s0 + s) * v_stride;
            float* dst = vt.data() + s * D;
            if (v_type == T_F32) {
                std::copy_n((const float*)row, D, dst);
            } else if (v_type == T_F16) {
                for (int64_t d = 0; d < D; ++d) dst[d] = fp16_to_fp32(((const uint16_t*)row)[d]);
            } else {
                quant_traits(v_type)->to_float(row, dst, D);
            }
        }
        for (int64_t i = first[s0]; i < M; ++i) {
            const int64_t nk = std::min(nb, n_keys[i] - s0);  // the row's keys in this block
            for (int64_t s = 0; s < nk; ++s) w[s] = S[(s0 + s) * M + i] / sums[i];
            sk.wsum(o + i * o_stride, vt.data(), w.data(), nk, D);
        }
    }
}

}  // namespace pq
