// emu_types.h: CUDA's built-in vector types (dim3, uint3, float4, ...) for the host emulator.
//
// Alignments follow CUDA's vector_types.h so that a kernel that reinterprets memory as float4/int4 gets
// the same layout (and the same alignment requirements) on the CPU as on the GPU.
#pragma once

#include <cstdint>

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define PQ_EMU_VEC2(T, name, align)                                                                 \
    struct __attribute__((aligned(align))) name {                                                   \
        T x, y;                                                                                     \
    };                                                                                              \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define PQ_EMU_VEC3(T, name)                                                                        \
    struct name {                                                                                   \
        T x, y, z;                                                                                  \
    };                                                                                              \
    inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define PQ_EMU_VEC4(T, name, align)                                                                 \
    struct __attribute__((aligned(align))) name {                                                   \
        T x, y, z, w;                                                                               \
    };                                                                                              \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

PQ_EMU_VEC2(signed char, char2, 2)
PQ_EMU_VEC4(signed char, char4, 4)
PQ_EMU_VEC2(unsigned char, uchar2, 2)
PQ_EMU_VEC4(unsigned char, uchar4, 4)
PQ_EMU_VEC2(short, short2, 4)
PQ_EMU_VEC4(short, short4, 8)
PQ_EMU_VEC2(unsigned short, ushort2, 4)
PQ_EMU_VEC4(unsigned short, ushort4, 8)
PQ_EMU_VEC2(int, int2, 8)
PQ_EMU_VEC3(int, int3)
PQ_EMU_VEC4(int, int4, 16)
PQ_EMU_VEC2(unsigned int, uint2, 8)
PQ_EMU_VEC4(unsigned int, uint4, 16)
PQ_EMU_VEC2(float, float2, 8)
PQ_EMU_VEC3(float, float3)
PQ_EMU_VEC4(float, float4, 16)
PQ_EMU_VEC2(double, double2, 16)
PQ_EMU_VEC2(long long, longlong2, 16)

inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }

#undef PQ_EMU_VEC2
#undef PQ_EMU_VEC3
#undef PQ_EMU_VEC4
