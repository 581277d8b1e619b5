// emu_fp16.h: __half / __half2 / __nv_bfloat16 / __nv_bfloat162 and their intrinsics for the emulator.
//
// Conversions reuse csrc/common/formats.h (round to nearest even, subnormals kept), the same bit-exact routines
// the CPU backend uses, so the CUDA toolkit is not needed to run the emulated tests. Arithmetic is done
// in float and rounded once: for +, -, * and / of two 16-bit values float has enough precision
// (24 >= 2*11+2 bits) for that double rounding to be exact; fma is done in double (rarely off by 1 ulp).
#pragma once

#include <cstdint>
#include <cstring>

#include "emu_qualifiers.h"
#include "emu_types.h"
#include "formats.h"

struct __half_raw {
    unsigned short x;
};

struct __half {
    uint16_t __x;
    __half() = default;
    __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(pq::fp32_to_fp16(f)) {}
    __half(double f) : __x(pq::fp32_to_fp16((float)f)) {}
    __half(int i) : __x(pq::fp32_to_fp16((float)i)) {}
    __half(unsigned int i) : __x(pq::fp32_to_fp16((float)i)) {}
    __half(long long i) : __x(pq::fp32_to_fp16((float)i)) {}
    operator float() const { return pq::fp16_to_fp32(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
};
static_assert(sizeof(__half) == 2, "__half must be 2 bytes");

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(pq::fp32_to_bf16(f)) {}
    __nv_bfloat16(double f) : __x(pq::fp32_to_bf16((float)f)) {}
    __nv_bfloat16(int i) : __x(pq::fp32_to_bf16((float)i)) {}
    operator float() const { return pq::bf16_to_fp32(__x); }
};
static_assert(sizeof(__nv_bfloat16) == 2, "__nv_bfloat16 must be 2 bytes");

struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

// ---- conversions --------------------------------------------------------------------------------------
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return pq::fp16_to_fp32(h.__x); }
inline __half __int2half_rn(int i) { return __half((float)i); }
inline int __half2int_rn(__half h) { return (int)__builtin_nearbyintf(__half2float(h)); }
inline int __half2int_rz(__half h) { return (int)__half2float(h); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline __half __short_as_half(short u) { return __half(__half_raw{(unsigned short)u}); }

inline __half2 make_half2(__half x, __half y) { return __half2{x, y}; }
inline __half2 __halves2half2(__half x, __half y) { return __half2{x, y}; }
inline __half2 __float2half2_rn(float f) { return __half2{__half(f), __half(f)}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return __half2{__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return float2{(float)h.x, (float)h.y}; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __half2half2(__half h) { return __half2{h, h}; }
inline __half2 __lowhigh2highlow(__half2 h) { return __half2{h.y, h.x}; }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return pq::bf16_to_fp32(h.__x); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 h;
    h.__x = u;
    return h;
}
inline __nv_bfloat162 make_bfloat162(__nv_bfloat16 x, __nv_bfloat16 y) { return __nv_bfloat162{x, y}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{(float)h.x, (float)h.y}; }
inline float __low2float(__nv_bfloat162 h) { return (float)h.x; }
inline float __high2float(__nv_bfloat162 h) { return (float)h.y; }

// ---- arithmetic: computed in float (or double for fma), rounded once --------------------------------
#define PQ_EMU_H16_OPS(T)                                                                            \
    inline T __hadd(T a, T b) { return T((float)a + (float)b); }                                     \
    inline T __hsub(T a, T b) { return T((float)a - (float)b); }                                     \
    inline T __hmul(T a, T b) { return T((float)a * (float)b); }                                     \
    inline T __hdiv(T a, T b) { return T((float)a / (float)b); }                                     \
    inline T __hneg(T a) { return T(-(float)a); }                                                    \
    inline T __habs(T a) { return T(__builtin_fabsf((float)a)); }                                    \
    inline T __hfma(T a, T b, T c) { return T((float)((double)(float)a * (float)b + (float)c)); }    \
    inline T __hmax(T a, T b) { return (float)a > (float)b ? a : b; }                                \
    inline T __hmin(T a, T b) { return (float)a < (float)b ? a : b; }                                \
    inline bool __heq(T a, T b) { return (float)a == (float)b; }                                     \
    inline bool __hlt(T a, T b) { return (float)a < (float)b; }                                      \
    inline bool __hgt(T a, T b) { return (float)a > (float)b; }                                      \
    inline bool __hisnan(T a) { return (float)a != (float)a; }                                       \
    inline T operator+(T a, T b) { return __hadd(a, b); }                                            \
    inline T operator-(T a, T b) { return __hsub(a, b); }                                            \
    inline T operator*(T a, T b) { return __hmul(a, b); }                                            \
    inline T operator/(T a, T b) { return __hdiv(a, b); }                                           \
    inline T operator-(T a) { return __hneg(a); }                                                    \
    inline T& operator+=(T& a, T b) { return a = __hadd(a, b); }                                     \
    inline T& operator-=(T& a, T b) { return a = __hsub(a, b); }                                     \
    inline T& operator*=(T& a, T b) { return a = __hmul(a, b); }                                     \
    inline T& operator/=(T& a, T b) { return a = __hdiv(a, b); }                                     \
    inline bool operator==(T a, T b) { return (float)a == (float)b; }                                \
    inline bool operator!=(T a, T b) { return (float)a != (float)b; }                                \
    inline bool operator<(T a, T b) { return (float)a < (float)b; }                                  \
    inline bool operator>(T a, T b) { return (float)a > (float)b; }                                  \
    inline bool operator<=(T a, T b) { return (float)a <= (float)b; }                                \
    inline bool operator>=(T a, T b) { return (float)a >= (float)b; }

PQ_EMU_H16_OPS(__half)
PQ_EMU_H16_OPS(__nv_bfloat16)
#undef PQ_EMU_H16_OPS

#define PQ_EMU_H16X2_OPS(T2)                                                                         \
    inline T2 __hadd2(T2 a, T2 b) { return T2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }                 \
    inline T2 __hsub2(T2 a, T2 b) { return T2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }                 \
    inline T2 __hmul2(T2 a, T2 b) { return T2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }                 \
    inline T2 __h2div(T2 a, T2 b) { return T2{__hdiv(a.x, b.x), __hdiv(a.y, b.y)}; }                 \
    inline T2 __hfma2(T2 a, T2 b, T2 c) { return T2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; } \
    inline T2 __hneg2(T2 a) { return T2{__hneg(a.x), __hneg(a.y)}; }                                 \
    inline T2 operator+(T2 a, T2 b) { return __hadd2(a, b); }                                        \
    inline T2 operator-(T2 a, T2 b) { return __hsub2(a, b); }                                        \
    inline T2 operator*(T2 a, T2 b) { return __hmul2(a, b); }                                        \
    inline T2& operator+=(T2& a, T2 b) { return a = __hadd2(a, b); }                                 \
    inline T2& operator*=(T2& a, T2 b) { return a = __hmul2(a, b); }

PQ_EMU_H16X2_OPS(__half2)
PQ_EMU_H16X2_OPS(__nv_bfloat162)
#undef PQ_EMU_H16X2_OPS
