// rope.cuh: q/k RMSNorm + partial NEOX RoPE, fused with the fp16 KV-cache append (attention step 1).
//
// The angle. csrc/ops.cpp rope_neox computes theta_i = pos * base^(-2i/n_rot) and its cos/sin in double.
// FP64 is 1/64 rate on consumer GPUs, and a float theta is useless: at pos = 2^18 the ulp of theta is
// 0.03 rad. Here:
//   1. the frequencies f_i = pow((double)base, -2i/n_rot) are computed on the host with the reference's
//      expression and passed as a float pair f_hi + f_lo (48 significant bits) in the kernel arguments;
//   2. theta = pos * f_hi + (fma error of that product + pos * f_lo): a float-float value, exact to
//      ~2^-48 relative (pos < 2^24 is exact in float);
//   3. theta - k * 2pi by Cody-Waite with fma: the first step (2pi rounded to float) is exact, the second
//      (the rest of 2pi) and the addition of the low part round once each at |r| < 4;
//   4. sincosf of |r| <= pi + 0.5 (the accurate function's fast path, 1-2 ulp).
// Error of the reduced angle <= ~3e-7 rad for any pos < 2^24, so |cos, sin - reference| <= 5e-7 (the
// reference itself is rounded to float, 6e-8). The emulator runs steps 1-3 bit-exactly but uses the
// host's sinf/cosf for step 4.
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kRopeMaxPairs = 128;  // n_rot <= 256

// Frequencies of the rotated pairs as float pairs: f_i ~= hi[i] + lo[i] (host-computed in double).
// Passed by value (1 KiB of kernel parameters): no upload, graph-capture friendly.
struct RopeFreqs {
    float hi[kRopeMaxPairs];
    float lo[kRopeMaxPairs];
};

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

// One warp per row: rows [0, n*H) are the q halves of qg (row stride 2*D), rows [n*H, n*(H+Hkv)) the k
// rows; the warp of k row (t, g) also appends k and v of (t, g) to the caches when they are given.
// y = (x * rsqrt(mean(x^2) + eps)) * w (ggml order), then pairs (p, p + n_rot/2) are rotated by the same
// lane. The sum of squares is a float tree (the reference sums in double: ~1 ulp apart).
constexpr int kPrepWarps = 4;

__global__ void __launch_bounds__(kPrepWarps * 32)
    qk_norm_rope_kernel(float* __restrict__ qg, float* __restrict__ k, const float* __restrict__ v,
                        const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                        uint16_t* __restrict__ k_cache, uint16_t* __restrict__ v_cache, int64_t pos0, int n, int H,
                        int Hkv, int D, int n_rot, float eps, RopeFreqs freqs) {
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
    const int64_t pos = pos0 + t;

    float ss = 0.0f;
    for (int i = lane; i < D; i += 32) ss += x[i] * x[i];
    ss = warp_sum(ss);
    const float scale = rsqrtf(ss / (float)D + eps);
    __syncwarp();  // every lane has read x before any lane overwrites it

    uint16_t* kc = (is_k && k_cache) ? k_cache + (pos * Hkv + g) * D : nullptr;
    const int half = n_rot / 2;
    const float posf = (float)pos;
    for (int p = lane; p < half; p += 32) {
        const float a = (x[p] * scale) * w[p];
        const float b = (x[p + half] * scale) * w[p + half];
        float c, s;
        rope_cos_sin(posf, freqs.hi[p], freqs.lo[p], &c, &s);
        const float ya = a * c - b * s;
        const float yb = b * c + a * s;
        x[p] = ya;
        x[p + half] = yb;
        if (kc) {
            kc[p] = __half_as_ushort(__float2half_rn(ya));
            kc[p + half] = __half_as_ushort(__float2half_rn(yb));
        }
    }
    for (int i = n_rot + lane; i < D; i += 32) {
        const float y = (x[i] * scale) * w[i];
        x[i] = y;
        if (kc) kc[i] = __half_as_ushort(__float2half_rn(y));
    }
    if (is_k && v_cache) {
        const float* vr = v + (t * Hkv + g) * D;
        uint16_t* vc = v_cache + (pos * Hkv + g) * D;
        for (int i = lane; i < D; i += 32) vc[i] = __half_as_ushort(__float2half_rn(vr[i]));
    }
}

}  // namespace pq::cuda
