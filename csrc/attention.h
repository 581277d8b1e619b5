// attention.h: causal GQA attention of one query head over a KV cache (reference version).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pq {

enum class KvType;

// o[D] = softmax(q . K[s] * scale, s < n_keys) . V[s] over KV rows of one KV head. K and V rows are
// `row_stride` bytes apart, stored as f16 or f32 (kv_type). p is scratch of n_keys floats.
void attention_head(const float* q, const uint8_t* K, const uint8_t* V, size_t row_stride, int64_t n_keys,
                    int64_t D, float scale, KvType kv_type, float* p, float* o);

}  // namespace pq
