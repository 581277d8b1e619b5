// ops.h: the small element-wise and normalisation ops of the qwen35 forward (reference versions).
#pragma once

#include <cmath>
#include <cstdint>

namespace pq {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
// torch/ggml softplus: linear above 20 where exp would only add rounding error.
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// y = x / sqrt(mean(x^2) + eps) * w (w may be null: no scale). Sum of squares in double, as CPU ggml.
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);
// x = x / sqrt(sum(x^2) + eps), in place (the GDN q/k normalisation of transformers).
void l2_norm(float* x, int64_t n, float eps);
// NEOX-style rotary embedding on the first n_rot dims of one head: pairs (i, i + n_rot/2).
// NEOX RoPE on the first n_rot dims: pair (i, i + n_rot/2) turns by pos * freqs[i] (computed in double),
// both scaled by mscale (rope_scaling.h: the frequencies and magnitude, YaRN included).
void rope_neox(float* x, int n_rot, int64_t pos, const double* freqs, float mscale);
// x[n] (n a multiple of block, block a power of two) <- H x per block: the orthonormal Sylvester Hadamard
// matrix H[i][j] = (-1)^popcount(i & j) / sqrt(block), its own inverse (the quantized KV cache's
// rotation, model_spec.h kv_rotation_block).
void hadamard(float* x, int64_t n, int block);

}  // namespace pq
