// attention_common.cuh: pieces shared by the attention kernels: fp16 and Q8_0/Q4_0 cache loads, the split-K partial
// layout and its combine kernel (with the sigmoid output gate), and the m16n8k16 tensor-core MMA with its
// portable twin.
//
// Softmax runs in the log2 domain: scores are q.k * (1/sqrt(D)) * log2(e), probabilities exp2(s - m).
// Split-K partials hold, per (token t, query head h, split s): (m, l) = (running max in that domain, sum of
// exp2(s - m)) and the unnormalised O[D] = sum exp2(s - m) v. A split with no key for a row has m = -inf
// (its O is not written and not read).
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "hadamard.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"
#include "rope.cuh"  // KvLayout

namespace pq::cuda {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t float_to_half_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }

// Two floats -> one 32-bit register of two fp16 values, `lo` in the low half (lower index).
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    return (uint32_t)float_to_half_bits(lo) | ((uint32_t)float_to_half_bits(hi) << 16);
}

// N consecutive fp16 values (N in {1, 2, 4, 8}, p aligned to 2*N bytes) -> floats, in one load.
template <int N>
__device__ __forceinline__ void load_half_row(const uint16_t* __restrict__ p, float* f) {
    static_assert(N == 1 || N == 2 || N == 4 || N == 8, "1, 2, 4 or 8 halves");
    if constexpr (N == 1) {
        f[0] = half_bits_to_float(*p);
    } else {
        uint32_t w[N / 2];
        if constexpr (N == 2) {
            w[0] = *reinterpret_cast<const uint32_t*>(p);
        } else if constexpr (N == 4) {
            const uint2 u = *reinterpret_cast<const uint2*>(p);
            w[0] = u.x;
            w[1] = u.y;
        } else {
            const uint4 u = *reinterpret_cast<const uint4*>(p);
            w[0] = u.x;
            w[1] = u.y;
            w[2] = u.z;
            w[3] = u.w;
        }
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            f[2 * i] = half_bits_to_float((uint16_t)(w[i] & 0xffffu));
            f[2 * i + 1] = half_bits_to_float((uint16_t)(w[i] >> 16));
        }
    }
}

// ---- quantized cache rows --------------------------------------------------------------------------
// A Q8_0 / Q4_0 head slice is D / 32 blocks (formats.h layouts, 34 / 18 bytes: only 2-byte aligned). The
// kernels never hold a dequantized copy of the cache: each load below turns N <= 8 values of one block
// (N divides 32, so they never straddle blocks, nor Q4_0's nibble halves) into floats in registers, with
// the CPU's dequantization (x = d * q, x = d * (q - 8)): the same floats as csrc's q8_0/q4_0_to_float.

// N consecutive values [d0, d0 + N) of a head slice of type `type` (T_F16, T_Q8_0, T_Q4_0) -> floats.
template <int N>
__device__ __forceinline__ void load_kv_values(const uint8_t* __restrict__ head, int type, int d0, float* f) {
    if (type == T_F16) {
        load_half_row<N>(reinterpret_cast<const uint16_t*>(head) + d0, f);
        return;
    }
    const int blk = d0 / 32, j0 = d0 % 32;
    if (type == T_Q8_0) {
        const block_q8_0* b = reinterpret_cast<const block_q8_0*>(head) + blk;
        const float d = half_bits_to_float(b->d);
#pragma unroll
        for (int i = 0; i < N; ++i) f[i] = b->qs[j0 + i] * d;
    } else {  // T_Q4_0: value j in the low nibble of qs[j], j + 16 in the high one
        const block_q4_0* b = reinterpret_cast<const block_q4_0*>(head) + blk;
        const float d = half_bits_to_float(b->d);
        const int shift = j0 < 16 ? 0 : 4, q0 = j0 % 16;
#pragma unroll
        for (int i = 0; i < N; ++i) f[i] = (((b->qs[q0 + i] >> shift) & 0xF) - 8) * d;
    }
}

// As load_kv_values, but a quantized row gives its levels (q, or q - 8 for Q4_0: small integers) and
// returns the block scale d (value = d * level); an fp16 row gives its values and returns 1.
template <int N>
__device__ __forceinline__ float load_kv_levels(const uint8_t* __restrict__ head, int type, int d0, float* f) {
    if (type == T_F16) {
        load_half_row<N>(reinterpret_cast<const uint16_t*>(head) + d0, f);
        return 1.0f;
    }
    const int blk = d0 / 32, j0 = d0 % 32;
    if (type == T_Q8_0) {
        const block_q8_0* b = reinterpret_cast<const block_q8_0*>(head) + blk;
#pragma unroll
        for (int i = 0; i < N; ++i) f[i] = b->qs[j0 + i];
        return half_bits_to_float(b->d);
    }
    const block_q4_0* b = reinterpret_cast<const block_q4_0*>(head) + blk;
    const int shift = j0 < 16 ? 0 : 4, q0 = j0 % 16;
#pragma unroll
    for (int i = 0; i < N; ++i) f[i] = ((b->qs[q0 + i] >> shift) & 0xF) - 8;
    return half_bits_to_float(b->d);
}

// 8 consecutive values [d0, d0 + 8) of a head slice as 8 fp16 values (one 16-byte word), for the prefill
// kernel's shared-memory tiles (fp16 rows are copied as they are).
__device__ __forceinline__ uint4 load_kv_half8(const uint8_t* __restrict__ head, int type, int d0) {
    if (type == T_F16) return *reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(head) + d0);
    float f[8];
    load_kv_values<8>(head, type, d0, f);
    return make_uint4(pack_half2(f[0], f[1]), pack_half2(f[2], f[3]), pack_half2(f[4], f[5]), pack_half2(f[6], f[7]));
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- split-K combine ---------------------------------------------------------------------------------

// The normalised attention output o[t][h*D + d] = sum_s w_s O_s[d] / sum_s w_s l_s with
// w_s = exp2(m_s - max m), for query row th = t*H + h (the combine's one home: attn_combine_kernel, and the
// decode kernel's last split block, attention_decode.cuh); the caller rotates it back (a rotated V cache)
// and gates it (attn_gate). part_ml as floats (m, l pairs); P: const float* or const volatile float*
// (partials written by other blocks of the same grid, read past this SM's L1).
template <class P>
__device__ __forceinline__ float attn_combine_raw(P part_o, P part_ml, int64_t th, int d, int D, int nsplit) {
    const int64_t ml = th * nsplit;
    float M = -INFINITY;
    for (int s = 0; s < nsplit; ++s) M = fmaxf(M, part_ml[2 * (ml + s)]);
    float l = 0.0f, o = 0.0f;
    for (int s = 0; s < nsplit; ++s) {
        const float em = part_ml[2 * (ml + s)];
        if (em == -INFINITY) continue;  // no key of this split for this row: O_s was not written
        const float el = part_ml[2 * (ml + s) + 1];
        const float w = exp2f(em - M);
        l += w * el;
        o += w * part_o[(ml + s) * D + d];
    }
    return o / l;
}

// The sigmoid output gate of value d of query row th (qg's per-head [q | gate] rows).
__device__ __forceinline__ float attn_gate(float o, const float* __restrict__ qg, int64_t th, int d, int D) {
    return o * sigmoid_f(qg[th * 2 * D + D + d]);
}

// With out_qs (n == 1), out also to the output projection's Q8_1 activations (q8_act.cuh). v_rot: the
// V cache's rotation block (0: none); the row is rotated back in shared memory before the gate.
// Grid (H, n), block D threads. part_o: [(t*H + h) * nsplit + s][D]; part_ml: [(t*H + h) * nsplit + s].
__global__ void __launch_bounds__(256)
    attn_combine_kernel(const float* __restrict__ part_o, const float2* __restrict__ part_ml,
                        const float* __restrict__ qg, float* __restrict__ out, int H, int D, int nsplit,
                        int8_t* __restrict__ out_qs, float2* __restrict__ out_ds, int v_rot) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    const int64_t th = (int64_t)blockIdx.y * H + blockIdx.x;
    const int d = threadIdx.x;
    float o = attn_combine_raw(part_o, reinterpret_cast<const float*>(part_ml), th, d, D, nsplit);
    if (v_rot) {  // uniform over the grid: every thread reaches the barriers
        __shared__ float row[256];  // D <= 256
        row[d] = o;
        __syncthreads();
        hadamard_rotate(row, D, v_rot, d, D, BlockSync{});
        o = row[d];
    }
    const float r = attn_gate(o, qg, th, d, D);
    out[th * D + d] = r;
    // the output projection's Q8_1 input (one query: out_qs/out_ds are that token's row), quantized here
    // instead of by a launch of its own; D is whole warps and whole Q8_1 blocks
    if (out_qs) q8_act_store(r, (int64_t)blockIdx.x * D + d, out_qs, out_ds);
}

// ---- tensor-core MMA ---------------------------------------------------------------------------------

// c[4] (16x8 f32) += A (16x16 f16, row-major) * B (16x8 f16, "col": stored by columns), one warp.
// Fragments (PTX ISA, mma.m16n8k16 .f16), gid = lane / 4, tig = lane % 4, two halves per register, the
// lower index in the low 16 bits:
//   a[0] = A[gid][2tig, 2tig+1]   a[1] = A[gid+8][2tig, 2tig+1]   a[2] = A[gid][2tig+8, +9]   a[3] = A[gid+8][2tig+8, +9]
//   b[0] = B[2tig, 2tig+1][gid]   b[1] = B[2tig+8, 2tig+9][gid]
//   c[0], c[1] = C[gid][2tig, 2tig+1]   c[2], c[3] = C[gid+8][2tig, 2tig+1]
// The portable twin (emulator) gathers the row of A and the columns of B it needs with 32 shuffles and
// accumulates the exact fp16 products in fp32, so the fragment bookkeeping of the callers is what the
// emulated tests check; the tensor cores' internal summation order differs (within the tolerances).
// The twin is also what a pre-Ampere GPU (no m16n8k16) would run: correct, slow.
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    const int lane = threadIdx.x % 32;
    const int gid = lane / 4, tig = lane % 4;
    auto dot2 = [](uint32_t x, uint32_t y) {
        return half_bits_to_float((uint16_t)(x & 0xffffu)) * half_bits_to_float((uint16_t)(y & 0xffffu)) +
               half_bits_to_float((uint16_t)(x >> 16)) * half_bits_to_float((uint16_t)(y >> 16));
    };
    float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // k pairs 2j, 2j+1 (regs 0/1 of A, b[0]) and 2j+8, 2j+9 (regs 2/3, b[1])
        const int src_a = gid * 4 + j;
        const int src_b0 = (2 * tig) * 4 + j, src_b1 = (2 * tig + 1) * 4 + j;  // columns 2tig, 2tig+1
        const uint32_t a0 = __shfl_sync(kFullMask, a[0], src_a), a1 = __shfl_sync(kFullMask, a[1], src_a);
        const uint32_t a2 = __shfl_sync(kFullMask, a[2], src_a), a3 = __shfl_sync(kFullMask, a[3], src_a);
        const uint32_t b00 = __shfl_sync(kFullMask, b[0], src_b0), b10 = __shfl_sync(kFullMask, b[1], src_b0);
        const uint32_t b01 = __shfl_sync(kFullMask, b[0], src_b1), b11 = __shfl_sync(kFullMask, b[1], src_b1);
        c0 += dot2(a0, b00) + dot2(a2, b10);
        c1 += dot2(a0, b01) + dot2(a2, b11);
        c2 += dot2(a1, b00) + dot2(a3, b10);
        c3 += dot2(a1, b01) + dot2(a3, b11);
    }
    c[0] = c0;
    c[1] = c1;
    c[2] = c2;
    c[3] = c3;
#endif
}

}  // namespace pq::cuda
