// gdn_common.cuh: scalar helpers of the Gated DeltaNet kernels, the per-token preparation of the chunked
// path (q/k L2 norms, decay and write strength) and the gated RMSNorm epilogue.
//
// The functions follow csrc/ops.h (silu, sigmoid, ggml softplus) and csrc/model.cpp gdn_layer; the
// accurate expf/log1pf are used (not __expf): they are a small part of the work and keep the decay
// exp(g) close to the CPU reference.
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr float kGdnL2Eps = 1e-6f;  // q/k L2 normalisation (transformers' l2norm), independent of rms eps

__device__ __forceinline__ float gdn_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gdn_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// ggml/torch softplus: linear above 20.
__device__ __forceinline__ float gdn_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
// Per-token log decay g = ssm_a * softplus(alpha + dt_bias) (<= 0: ssm_a = -exp(A_log)).
__device__ __forceinline__ float gdn_log_decay(float ssm_a, float alpha, float dt_bias) {
    return ssm_a * gdn_softplus(alpha + dt_bias);
}

// ---- per-token preparation of the chunked path -------------------------------------------------------------
// One block per token. Warps take the 2*nk q/k head vectors of the conv output y: L2-normalised, q also
// scaled by 1/sqrt(dk), written to qn/kn [n][nk][dk]. Then threads take the nv V heads: raw log decay g and
// beta = sigmoid(b), head-major [nv][n] (the chunk kernels read them per head and chunk).
// Traffic per token on the 27B: 16 KiB read, 16 KiB written.
constexpr int kGdnPrepBlock = 128;

__global__ void __launch_bounds__(kGdnPrepBlock)
    gdn_prep_kernel(const float* __restrict__ y, const float* __restrict__ alpha, const float* __restrict__ b,
                    const float* __restrict__ ssm_a, const float* __restrict__ dt_bias, float* __restrict__ qn,
                    float* __restrict__ kn, float* __restrict__ g, float* __restrict__ beta, int nk, int nv, int dk,
                    int dv, int64_t n, float q_scale) {
    constexpr int NW = kGdnPrepBlock / 32;
    const int64_t t = blockIdx.x;
    const int64_t C = 2LL * nk * dk + (int64_t)nv * dv;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int hv = warp; hv < 2 * nk; hv += NW) {  // warp-uniform loop: the full-mask shuffles are safe
        const float* src = y + t * C + (int64_t)hv * dk;
        float ss = 0.0f;
        for (int i = lane; i < dk; i += 32) ss += src[i] * src[i];
        ss = warp_sum(ss);
        const float scale = rsqrtf(ss + kGdnL2Eps);
        const bool is_q = hv < nk;
        float* dst = (is_q ? qn : kn) + (t * nk + (is_q ? hv : hv - nk)) * dk;
        for (int i = lane; i < dk; i += 32) {
            const float v = src[i] * scale;
            dst[i] = is_q ? v * q_scale : v;
        }
    }
    for (int h = threadIdx.x; h < nv; h += kGdnPrepBlock) {
        g[(int64_t)h * n + t] = gdn_log_decay(ssm_a[h], alpha[t * nv + h], dt_bias[h]);
        beta[(int64_t)h * n + t] = gdn_sigmoid(b[t * nv + h]);
    }
}

// ---- gated RMSNorm epilogue ----------------------------------------------------------------------------------
// out[row] = rms_norm(out[row], eps) * norm_w * silu(z[row]) for rows of dv values (row = token * nv + head),
// in place; one warp per row. 27B: per token 24 KiB of out read + written, 24 KiB of z read.
constexpr int kGdnNormWarps = 8;

__global__ void __launch_bounds__(kGdnNormWarps * 32)
    gdn_gated_norm_kernel(float* __restrict__ out, const float* __restrict__ z, const float* __restrict__ norm_w,
                          int64_t rows, int dv, float eps) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * kGdnNormWarps + threadIdx.x / 32;
    if (row >= rows) return;  // whole warps leave; no block barrier in this kernel
    float* o = out + row * dv;
    const float* zr = z + row * dv;
    float ss = 0.0f;
    for (int i = lane; i < dv; i += 32) ss += o[i] * o[i];
    ss = warp_sum(ss);
    const float scale = rsqrtf(ss / (float)dv + eps);
    for (int i = lane; i < dv; i += 32) o[i] = o[i] * scale * norm_w[i] * gdn_silu(zr[i]);
}

}  // namespace pq::cuda
