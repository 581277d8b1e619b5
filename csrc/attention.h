// attention.h: causal GQA attention of one query head over a KV cache (reference version).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pq {

// o[D] = softmax(q . K[s] * scale, s < n_keys) . V[s] over KV rows of one KV head. K rows are `k_stride`
// bytes apart in ggml type k_type, V rows `v_stride` apart in v_type (f32, f16, q8_0 or q4_0; a quantized
// head is whole 32-value blocks). As llama.cpp's CPU flash attention: with a quantized K, q is quantized
// once to Q8_0 (the type's vec_dot operand) and each score is the integer block dot; a quantized V row is
// dequantized into a D-float scratch before it is accumulated (no dequantized copy of the cache).
// p is scratch of n_keys floats.
void attention_head(const float* q, const uint8_t* K, size_t k_stride, int k_type, const uint8_t* V, size_t v_stride,
                    int v_type, int64_t n_keys, int64_t D, float scale, float* p, float* o);

}  // namespace pq
