#include "attention.h"

#include <algorithm>
#include <cmath>

#include "formats.h"
#include "model.h"
#include "simd/dispatch.h"

namespace pq {

static inline float kv_dot(const uint8_t* row, const float* q, int64_t n, KvType type) {
    float s = 0.0f;
    if (type == KvType::F32) {
        s = simd_kernels().dot_f32((const float*)row, q, n);
    } else {
        s = simd_kernels().dot_f16((const uint16_t*)row, q, n);
    }
    return s;
}

static inline void kv_axpy(float* acc, const uint8_t* row, float p, int64_t n, KvType type) {
    if (type == KvType::F32) {
        const float* r = (const float*)row;
        for (int64_t i = 0; i < n; ++i) acc[i] += p * r[i];
    } else {
        simd_kernels().axpy_f16(acc, (const uint16_t*)row, p, n);
    }
}

void attention_head(const float* q, const uint8_t* K, const uint8_t* V, size_t row_stride, int64_t n_keys,
                    int64_t D, float scale, KvType kv_type, float* p, float* o) {
    float mx = -INFINITY;
    for (int64_t s = 0; s < n_keys; ++s) {
        p[s] = kv_dot(K + s * row_stride, q, D, kv_type) * scale;
        mx = std::max(mx, p[s]);
    }
    float sum = 0.0f;
    for (int64_t s = 0; s < n_keys; ++s) {
        p[s] = std::exp(p[s] - mx);
        sum += p[s];
    }
    std::fill(o, o + D, 0.0f);
    for (int64_t s = 0; s < n_keys; ++s) kv_axpy(o, V + s * row_stride, p[s] / sum, D, kv_type);
}

}  // namespace pq
