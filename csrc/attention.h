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

// The same attention for M query rows that share one KV head (a GQA group over a block of tokens), row i
// over its own causal prefix of n_keys[i] keys (non-decreasing in i), q row i at q + i * q_stride, its
// output at o + i * o_stride. Each row's result is attention_head's: the same dot per (row, key) (the
// multi-row dots sum each row as the one-row dot does), the same softmax and V accumulation order, with
// the exponentials from the selected SIMD set (vectorised: within 2 ulp of libm's; with the "ref" set
// bit-identical to attention_head), and a row's result never depends on M or on the other rows (so a
// speculative verification equals one-token steps). Every K and V row is read (and a quantized V row
// dequantized) once for all M rows instead of once per row. S is scratch of M * n_keys[M-1] floats.
void attention_rows(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                    size_t k_stride, int k_type, const uint8_t* V, size_t v_stride, int v_type, int64_t D, float scale,
                    float* S, float* o, int64_t o_stride);

// Whether attention_rows reads and writes S for these types under the selected kernel set: F16 K and V
// take the flash-style kernel (simd/attn_flash.h), which keeps no M x n_keys scores (S may be null).
bool attention_rows_uses_scores(int k_type, int v_type, int64_t D);

}  // namespace pq
