// emu_intrinsics.h: device math, bit, load/store, atomic and integer-dot intrinsics for the emulator.
//
// Fast-math intrinsics (__expf, __fdividef, rsqrtf, ...) are computed with the accurate libm function:
// the GPU's approximations differ in the last bits, so tests comparing a GPU run against the emulator
// must use a tolerance wherever such intrinsics are involved. Atomics are plain read-modify-writes: a
// fiber is never interrupted between two intrinsics, so they are atomic with respect to other threads.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- float math -----------------------------------------------------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0

// ---- conversions and reinterpretation ----------------------------------------------------------------
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
inline float __int2float_rn(int i) { return (float)i; }
inline float __uint2float_rn(unsigned i) { return (float)i; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }

// CUDA's global min/max accept mixed int/float arguments; std::min does not.
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    using C = typename std::common_type<A, B>::type;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    using C = typename std::common_type<A, B>::type;
    return (C)a < (C)b ? (C)b : (C)a;
}

// ---- integer / bit intrinsics ------------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
    const uint64_t v = ((uint64_t)hi << 32) | lo;
    return (unsigned)((v << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    const uint64_t v = ((uint64_t)hi << 32) | lo;
    return (unsigned)(v >> (shift & 31));
}
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mul24(int a, int b) { return (int)((unsigned)((a << 8) >> 8) * (unsigned)((b << 8) >> 8)); }

// Four int8 (or uint8) products summed into c, wrapping modulo 2^32 like the hardware.
inline int __dp4a(int a, int b, int c) {
    int64_t acc = c;
    for (int i = 0; i < 4; ++i) acc += (int64_t)(int8_t)(a >> (8 * i)) * (int8_t)(b >> (8 * i));
    return (int)(uint32_t)acc;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    uint64_t acc = c;
    for (int i = 0; i < 4; ++i) acc += (uint64_t)((a >> (8 * i)) & 0xff) * ((b >> (8 * i)) & 0xff);
    return (unsigned)acc;
}
inline int __dp4a(char4 a, char4 b, int c) {
    int ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return __dp4a(ia, ib, c);
}

// ---- cache-hinted loads/stores: plain accesses on the CPU -------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
inline void __nanosleep(unsigned) {}

// ---- atomics -----------------------------------------------------------------------------------------
// Integer arithmetic is done on the unsigned type so that overflow wraps as on the GPU. In racecheck
// builds each opens an RcAtomicScope (emu_racecheck.h): its accesses are atomic, not races.
#if PQ_EMU_RACECHECK
#define PQ_EMU_RC_ATOMIC ::pq_emu::RcAtomicScope pq_rc_atomic_scope_;
#else
#define PQ_EMU_RC_ATOMIC
#endif
#define PQ_EMU_ATOMIC_ARITH(T, U)                                                                     \
    inline T atomicAdd(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; *a = (T)((U)o + (U)v); return o; }                    \
    inline T atomicSub(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; *a = (T)((U)o - (U)v); return o; }                    \
    inline T atomicExch(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; *a = v; return o; }                                  \
    inline T atomicMin(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; if (v < o) *a = v; return o; }                        \
    inline T atomicMax(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; if (v > o) *a = v; return o; }                        \
    inline T atomicAnd(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; *a = o & v; return o; }                               \
    inline T atomicOr(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; *a = o | v; return o; }                                \
    inline T atomicXor(T* a, T v) { PQ_EMU_RC_ATOMIC T o = *a; *a = o ^ v; return o; }                               \
    inline T atomicCAS(T* a, T cmp, T v) { PQ_EMU_RC_ATOMIC T o = *a; if (o == cmp) *a = v; return o; }
PQ_EMU_ATOMIC_ARITH(int, unsigned int)
PQ_EMU_ATOMIC_ARITH(unsigned int, unsigned int)
PQ_EMU_ATOMIC_ARITH(unsigned long long, unsigned long long)
#undef PQ_EMU_ATOMIC_ARITH
inline long long atomicMin(long long* a, long long v) { PQ_EMU_RC_ATOMIC long long o = *a; if (v < o) *a = v; return o; }
inline long long atomicMax(long long* a, long long v) { PQ_EMU_RC_ATOMIC long long o = *a; if (v > o) *a = v; return o; }
inline unsigned short atomicCAS(unsigned short* a, unsigned short cmp, unsigned short v) {
    PQ_EMU_RC_ATOMIC
    unsigned short o = *a;
    if (o == cmp) *a = v;
    return o;
}
inline float atomicAdd(float* a, float v) { PQ_EMU_RC_ATOMIC float o = *a; *a = o + v; return o; }
inline double atomicAdd(double* a, double v) { PQ_EMU_RC_ATOMIC double o = *a; *a = o + v; return o; }
inline float atomicExch(float* a, float v) { PQ_EMU_RC_ATOMIC float o = *a; *a = v; return o; }
inline unsigned atomicInc(unsigned* a, unsigned v) { PQ_EMU_RC_ATOMIC unsigned o = *a; *a = o >= v ? 0 : o + 1; return o; }
inline unsigned atomicDec(unsigned* a, unsigned v) { PQ_EMU_RC_ATOMIC unsigned o = *a; *a = (o == 0 || o > v) ? v : o - 1; return o; }
