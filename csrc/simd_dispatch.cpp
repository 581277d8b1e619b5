// simd_dispatch.cpp: picks the kernel set once, from the CPU's features (see simd/dispatch.h).
#include <cstdlib>
#include <cstring>

#include "matmul.h"
#include "simd/dispatch.h"

namespace pq {

#if defined(PQ_HAVE_AVX2_KERNELS)
float dot_f32_avx2(const float* w, const float* x, int64_t n);
float dot_f16_avx2(const uint16_t* w, const float* x, int64_t n);
float dot_bf16_avx2(const uint16_t* w, const float* x, int64_t n);
void axpy_f16_avx2(float* acc, const uint16_t* h, float a, int64_t n);
static const SimdKernels kAvx2 = {"avx2", dot_f32_avx2, dot_f16_avx2, dot_bf16_avx2, axpy_f16_avx2};
#endif
static const SimdKernels kRef = {"ref", dot_f32_ref, dot_f16_ref, dot_bf16_ref, axpy_f16_ref};

static bool cpu_has_avx2() {
#if defined(PQ_HAVE_AVX2_KERNELS) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

static const SimdKernels* best() {
#if defined(PQ_HAVE_AVX2_KERNELS)
    if (cpu_has_avx2()) return &kAvx2;
#endif
    return &kRef;
}

static const SimdKernels* g_kernels = nullptr;

const SimdKernels& simd_kernels() {
    if (!g_kernels) {
        const char* env = std::getenv("PYQWEN_SIMD");
        if (env && (!std::strcmp(env, "off") || !std::strcmp(env, "ref"))) g_kernels = &kRef;
        else g_kernels = best();
    }
    return *g_kernels;
}

bool simd_select(const char* name) {
    if (!std::strcmp(name, "ref")) { g_kernels = &kRef; return true; }
    if (!std::strcmp(name, "auto")) { g_kernels = best(); return true; }
#if defined(PQ_HAVE_AVX2_KERNELS)
    if (!std::strcmp(name, "avx2") && cpu_has_avx2()) { g_kernels = &kAvx2; return true; }
#endif
    return false;
}

}  // namespace pq
