// simd/dispatch.h: run-time choice between the reference kernels and their SIMD versions.
//
// Wheels are built without -march=native, so each SIMD file is compiled with its own target flags
// and picked here after asking the CPU what it supports. PYQWEN_SIMD=off forces the references
// (used by the tests to compare both on the same machine).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pq {

struct SimdKernels {
    const char* name;
    float (*dot_f32)(const float* w, const float* x, int64_t n);
    float (*dot_f16)(const uint16_t* w, const float* x, int64_t n);
    float (*dot_bf16)(const uint16_t* w, const float* x, int64_t n);
    // y[t * y_stride] = dot(w, x + t * x_stride) for t < m: one weight row against m tokens, each token's
    // sum exactly as the one-token dot computes it (so results do not depend on the batch).
    void (*dots_f32)(const float* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y, int64_t y_stride);
    void (*dots_f16)(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                     int64_t y_stride);
    void (*dots_bf16)(const uint16_t* w, const float* x, int64_t x_stride, int64_t m, int64_t n, float* y,
                      int64_t y_stride);
    // acc[i] += a * float(h[i]): the attention's weighted sum of f16 V rows.
    void (*axpy_f16)(float* acc, const uint16_t* h, float a, int64_t n);
    // y[i] = a[i] * silu(s[i]) (y may alias a or s).
    void (*mul_silu)(float* y, const float* a, const float* s, int64_t n);
    // The DeltaNet's causal conv + SiLU over channels [c0, c1) (gdn.h conv1d_silu).
    void (*conv1d_silu)(const float* x, const float* w, float* state, float* y, int64_t C, int64_t K, int64_t n,
                        int64_t c0, int64_t c1);
    // acc[d] += sum over s < nk of w[s] * V[s * D + d], keys in order (each step one acc += w * v, as the
    // kernel set's axpy does it): one attention row's weighted sum over a block of float V rows.
    void (*wsum)(float* acc, const float* V, const float* w, int64_t nk, int64_t D);
    // One softmax step of m attention rows at one key: x[i] = exp(x[i] - mx[i]), sums[i] += x[i]. Each
    // lane's result does not depend on m or on its position (a row's softmax is the same in any batch).
    void (*exp_acc)(float* x, const float* mx, float* sums, int64_t m);
    // The gated delta rule of one V head over n tokens (gdn.h delta_rule_head).
    void (*delta_rule)(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                       int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S, int64_t dk,
                       int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride);
    // attention.h attention_rows over F16 K and V rows, flash-style (key tiles, online softmax; D a
    // multiple of 8). nullptr (the "ref" set): attention_rows' reference form, bit-identical to
    // attention_head.
    void (*attention_rows_f16)(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                               size_t k_stride, const uint8_t* V, size_t v_stride, int64_t D, float scale, float* o,
                               int64_t o_stride);
    // y[t * y_stride + r] = dot(w + r * w_stride, x + t * x_stride) for r < rows, t < m: a block of weight
    // rows against m tokens, each (row, token) summed exactly as dots_f16 / dots_bf16 sum it (so decode
    // and verification agree bit for bit). nullptr: matmul calls dots_* row by row.
    void (*rows_f16)(const uint16_t* w, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride, int64_t m,
                     int64_t n, float* y, int64_t y_stride);
    void (*rows_bf16)(const uint16_t* w, int64_t w_stride, int64_t rows, const float* x, int64_t x_stride, int64_t m,
                      int64_t n, float* y, int64_t y_stride);
};

const SimdKernels& simd_kernels();
// Overrides the automatic choice ("ref", "avx2", "avx512", "auto"); returns false for an unknown or
// unsupported name.
bool simd_select(const char* name);

// Whether this CPU runs a kernel level ("avx2": AVX2+FMA+F16C; "avx512": what simd/*_avx512.cpp are
// compiled for, AVX-512 F/BW/VL/DQ/VNNI with AVX2+FMA+F16C). The one check every dispatcher uses.
bool cpu_supports(const char* level);

}  // namespace pq
