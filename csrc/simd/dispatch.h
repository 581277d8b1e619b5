// simd/dispatch.h: run-time choice between the reference kernels and their SIMD versions.
//
// Wheels are built without -march=native, so each SIMD file is compiled with its own target flags
// and picked here after asking the CPU what it supports. PYQWEN_SIMD=off forces the references
// (used by the tests to compare both on the same machine).
#pragma once

#include <cstdint>

namespace pq {

struct SimdKernels {
    const char* name;
    float (*dot_f32)(const float* w, const float* x, int64_t n);
    float (*dot_f16)(const uint16_t* w, const float* x, int64_t n);
    float (*dot_bf16)(const uint16_t* w, const float* x, int64_t n);
    // acc[i] += a * float(h[i]): the attention's weighted sum of f16 V rows.
    void (*axpy_f16)(float* acc, const uint16_t* h, float a, int64_t n);
};

const SimdKernels& simd_kernels();
// Overrides the automatic choice ("ref", "avx2", "auto"); returns false for an unknown/unsupported name.
bool simd_select(const char* name);

}  // namespace pq
