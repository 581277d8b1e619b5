// matmul.h: y = W x for a batch of activation rows, on weights in their GGUF format.
#pragma once

#include "tensor.h"
#include "threadpool.h"

namespace pq {

// x: [n_tok][W.ne0] floats, y: [n_tok][W.ne1] floats. Rows of W are split across the pool; each
// weight row is read once for all tokens of the batch. Quantized weights take llama.cpp's route:
// the activations are quantized once per call into the weight type's vec_dot_type, and the dot
// products run on the integer blocks.
void matmul(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y);

// Reference dot products of a float-typed weight row with float activations (the spec for SIMD).
float dot_f32_ref(const float* w, const float* x, int64_t n);
float dot_f16_ref(const uint16_t* w, const float* x, int64_t n);
float dot_bf16_ref(const uint16_t* w, const float* x, int64_t n);
void axpy_f16_ref(float* acc, const uint16_t* h, float a, int64_t n);

}  // namespace pq
