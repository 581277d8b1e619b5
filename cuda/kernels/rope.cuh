// rope.cuh: q/k RMSNorm + partial NEOX RoPE, fused with the KV-cache append (attention step 1). The cache
// rows are fp16, or Q8_0 / Q4_0 blocks written by formats.h's quantizers (the CPU core's, byte for byte).
//
// The angle. csrc/ops.cpp rope_neox computes theta_i = pos * f_i and its cos/sin in double, f_i from
// csrc/common/rope_scaling.h (base^(-2i/n_rot), or YaRN's / linear scaling's). FP64 is 1/64 rate on
// consumer GPUs, and a float theta is useless: at pos = 2^18 the ulp of theta is 0.03 rad. Here:
//   1. the frequencies f_i are computed on the host in double with the reference's formula (rope_table.h,
//      once per model) and passed as a float pair f_hi + f_lo (48 significant bits) in the kernel arguments;
//   2. theta = pos * f_hi + (fma error of that product + pos * f_lo): a float-float value, exact to
//      ~2^-48 relative (pos < 2^24 is exact in float);
//   3. theta - k * 2pi by Cody-Waite with fma: the first step (2pi rounded to float) is exact, the second
//      (the rest of 2pi) and the addition of the low part round once each at |r| < 4;
//   4. sincosf of |r| <= pi + 0.5 (the accurate function's fast path, 1-2 ulp), both scaled by YaRN's
//      magnitude mscale (1 otherwise) as the CPU scales its cos and sin.
// Error of the reduced angle <= ~3e-7 rad for any pos < 2^24, so |cos, sin - reference| <= 5e-7 (the
// reference itself is rounded to float, 6e-8). The emulator runs steps 1-3 bit-exactly but uses the
// host's sinf/cosf for step 4.
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "../rope_table.h"
#include "hadamard.cuh"
#include "reduce.cuh"

namespace pq::cuda {

// RopeFreqs (the frequencies as float pairs, n_rot, mscale): rope_table.h.

// Where a KV cache's rows live and how they are stored: K and V each fp16, Q8_0 or Q4_0 (ggml type ids),
// a row = Hkv heads of D values, each head whole blocks (head bytes = D / 32 blocks for the quantized types).
struct KvLayout {
    int k_type = T_F16, v_type = T_F16;
    int k_head = 0, v_head = 0;      // bytes of one head's slice of a row
    int64_t k_row = 0, v_row = 0;    // bytes of one row (Hkv heads)
    // Hadamard rotation blocks (hadamard.cuh; model_spec.h kv_rotation_block), 0: rows stored as they come.
    // k_rot also rotates the queries, v_rot rotates the attention output back before the gate.
    int k_rot = 0, v_rot = 0;
};

__host__ __device__ inline int kv_head_bytes(int type, int D) {
    return D / type_block_size(type) * type_block_bytes(type);
}

// cos and sin of pos * (fhi + flo) for an integral pos < 2^24 (see the header comment).
__device__ __forceinline__ void rope_cos_sin(float pos, float fhi, float flo, float* c, float* s) {
    constexpr float kInv2Pi = 0.159154943091895336f;
    constexpr float k2PiA = 6.28318548202514648f;       // float(2 pi), 0x40C90FDB
    constexpr float k2PiB = -1.74845553146951715e-07f;  // float(2 pi - k2PiA)
    const float ph = __fmul_rn(pos, fhi);
    const float pe = __fmaf_rn(pos, fhi, -ph);  // exact: the rounding error of ph
    const float pl = __fmaf_rn(pos, flo, pe);
    const float kf = rintf(__fmul_rn(ph, kInv2Pi));
    float r = __fmaf_rn(-kf, k2PiA, ph);  // exact (both terms are multiples of ulp(r) and |r| < 4)
    r = __fmaf_rn(-kf, k2PiB, r);
    r = __fadd_rn(r, pl);
    sincosf(r, s, c);
}

// One warp per row (positions pos0 + t, pos0 read from *pos_dev when that is given): rows [0, n*H) are
// the q halves of qg (row stride 2*D), rows [n*H, n*(H+Hkv)) the k rows; the warp of k row (t, g) also
// appends k and v of (t, g) to the caches when they are given.
// y = (x * rsqrt(mean(x^2) + eps)) * w (ggml order), then pairs (p, p + n_rot/2) are rotated by the same
// lane. The sum of squares is a float tree (the reference sums in double: ~1 ulp apart).
constexpr int kPrepWarps = 4;

__global__ void __launch_bounds__(kPrepWarps * 32)
    qk_norm_rope_kernel(float* __restrict__ qg, float* __restrict__ k, const float* __restrict__ v,
                        const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                        uint8_t* __restrict__ k_cache, uint8_t* __restrict__ v_cache, KvLayout kv, int64_t pos0,
                        const int* __restrict__ pos_dev, int n, int H, int Hkv, int D, float eps, RopeFreqs freqs) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * kPrepWarps + threadIdx.x / 32;
    const int64_t n_q = qg ? (int64_t)n * H : 0;  // no qg: the K/V rows alone (a cache catching up)
    if (row >= n_q + (int64_t)n * Hkv) return;  // whole warp: no barrier below, only warp shuffles

    const bool is_k = row >= n_q;
    int64_t t, g = 0;
    float* x;
    const float* w;
    if (!is_k) {
        t = row / H;
        x = qg + row * 2 * D;  // row == t * H + h
        w = q_norm;
    } else {
        const int64_t r = row - n_q;
        t = r / Hkv;
        g = r % Hkv;
        x = k + r * D;  // r == t * Hkv + g
        w = k_norm;
    }
    // pos_dev: the position lives in device memory (a decode graph replayed at every position reads it
    // when it runs); otherwise the argument's
    const int64_t pos = (pos_dev ? (int64_t)*pos_dev : pos0) + t;

    float ss = 0.0f;
    for (int i = lane; i < D; i += 32) ss += x[i] * x[i];
    ss = warp_sum(ss);
    const float scale = rsqrtf(ss / (float)D + eps);
    __syncwarp();  // every lane has read x before any lane overwrites it

    // fp16 rows are appended by the lanes as they produce the values; quantized or rotated ones once the
    // row is whole.
    const bool rot = kv.k_rot != 0;  // q and k rows alike (scores unchanged)
    uint8_t* kc = (is_k && k_cache) ? k_cache + pos * kv.k_row + g * kv.k_head : nullptr;
    uint16_t* kh = (kv.k_type == T_F16 && !rot) ? reinterpret_cast<uint16_t*>(kc) : nullptr;
    const int half = freqs.n_rot / 2;
    const float posf = (float)pos, ms = freqs.mscale;
    for (int p = lane; p < half; p += 32) {
        const float a = (x[p] * scale) * w[p];
        const float b = (x[p + half] * scale) * w[p + half];
        float c, s;
        rope_cos_sin(posf, freqs.hi[p], freqs.lo[p], &c, &s);
        c *= ms;  // YaRN's magnitude (exactly 1 otherwise)
        s *= ms;
        const float ya = a * c - b * s;
        const float yb = b * c + a * s;
        x[p] = ya;
        x[p + half] = yb;
        if (kh) {
            kh[p] = __half_as_ushort(__float2half_rn(ya));
            kh[p + half] = __half_as_ushort(__float2half_rn(yb));
        }
    }
    for (int i = freqs.n_rot + lane; i < D; i += 32) {
        const float y = (x[i] * scale) * w[i];
        x[i] = y;
        if (kh) kh[i] = __half_as_ushort(__float2half_rn(y));
    }
    // The rotation (csrc/model.cpp attn_layer: after RoPE, before the store) runs on the warp's own row in
    // shared memory; the rotated q / k goes back to x (the attention kernels read q from qg).
    __shared__ float rows[kPrepWarps][256];  // D <= 256
    float* buf = rows[threadIdx.x / 32];
    if (rot) {
        __syncwarp();  // x is complete
        for (int i = lane; i < D; i += 32) buf[i] = x[i];
        __syncwarp();
        hadamard_rotate(buf, D, kv.k_rot, lane, 32, WarpSync{});
        for (int i = lane; i < D; i += 32) x[i] = buf[i];
    }
    if (kc && !kh) {
        __syncwarp();  // the row is complete in x (and in buf when rotated)
        const float* src = rot ? buf : x;
        if (kv.k_type == T_F16) {  // a rotated fp16 row (the kernels allow it; the model never asks)
            uint16_t* h = reinterpret_cast<uint16_t*>(kc);
            for (int i = lane; i < D; i += 32) h[i] = __half_as_ushort(__float2half_rn(src[i]));
        } else {
            for (int b = lane; b < D / 32; b += 32) {  // lane b quantizes block b (D / 32 <= 8 lanes)
                if (kv.k_type == T_Q8_0) quantize_block_q8_0(src + b * 32, reinterpret_cast<block_q8_0*>(kc) + b);
                else quantize_block_q4_0(src + b * 32, reinterpret_cast<block_q4_0*>(kc) + b);
            }
        }
    }
    if (is_k && v_cache) {
        const float* vr = v + (t * Hkv + g) * D;
        uint8_t* vc = v_cache + pos * kv.v_row + g * kv.v_head;
        if (kv.v_rot) {  // v rotated before it is stored (the output is rotated back after attention)
            __syncwarp();  // every lane is done with buf's k row
            for (int i = lane; i < D; i += 32) buf[i] = vr[i];
            __syncwarp();
            hadamard_rotate(buf, D, kv.v_rot, lane, 32, WarpSync{});
            vr = buf;
        }
        if (kv.v_type == T_F16) {
            uint16_t* vh = reinterpret_cast<uint16_t*>(vc);
            for (int i = lane; i < D; i += 32) vh[i] = __half_as_ushort(__float2half_rn(vr[i]));
        } else {
            for (int b = lane; b < D / 32; b += 32) {
                if (kv.v_type == T_Q8_0) quantize_block_q8_0(vr + b * 32, reinterpret_cast<block_q8_0*>(vc) + b);
                else quantize_block_q4_0(vr + b * 32, reinterpret_cast<block_q4_0*>(vc) + b);
            }
        }
    }
}

}  // namespace pq::cuda
