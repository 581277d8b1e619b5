#include "attention.h"

#include <algorithm>
#include <cmath>
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

}  // namespace pq
