// gemm.cuh: device helpers of the prefill matmul (launch/gemm.cu): activations to fp16 for cuBLAS, with a
// power-of-two scale per token row so that no value can leave the fp16 range, and the scale put back on
// the fp32 product. The weight tiles are dequantized by get_rows.cuh's dequant_rows_kernel<T, true>.
//
// Why per-row scaling: fp16 ends at 65504, and the inputs of ffn_down (silu(g) * u) of Qwen-family models
// reach 1e4-1e5 on real prompts (issue 10, bug 3): converted as they are, those rows become inf and the
// whole token turns to NaN. A row whose max |x| is below kF16RowLimit (2^15) keeps scale 1 -- converted
// exactly as before; a larger one is divided by 2^e (exact: only the exponent changes) so that its max
// lands below 2^15, and its product row is multiplied back by 2^e in fp32. fp16 keeps 11 significant bits
// of every value either way, so the relative precision of the product is unchanged.
//
// Why hi + lo rows for float weights (issue 10, "CUDA right on first contact", part A): 11 bits are finer
// than the Q8 activations of quantized weights (CPU backend, llama.cpp, our mmv path), but 13 bits coarser
// than the fp32 activations every other path gives F16/BF16/F32 weights, and the Gated DeltaNet amplifies
// the difference: on the qwen35-r2-untied F16 fixture, rounding only in_proj_qkv's input to fp16 moves the
// logits of a 32-token prefill by 0.55 (transformers in float64 with that one rounding added; 0.59 with
// every linear input rounded -- what the emulated GEMM path showed, 0.55, 1.77 at 40 tokens, while the
// fp32-activation mmv path stays within 1.8e-3). With `split`, a row is also scaled *up* (max |x| in
// [2^14, 2^15): no subnormals) and written twice: hi = fp16(x'), lo = fp16(x' - hi) (x' - hi is exact in
// fp32), so hi + lo carries ~22 significant bits; the GEMM runs on both (W hi + W lo, fp32 accumulation)
// for twice the tensor-core work and no extra weight traffic.
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kToF16Threads = 256;
constexpr float kF16RowLimit = 32768.0f;  // 2^15: a scaled row's max |x| stays below it
constexpr int kF16SplitMinExp = -100;      // split rows are scaled up by at most 2^100 (2^e stays normal)

// Grid (min(n_rows, 65535)): for row t, scale[t] = 2^e and y[t][k] = fp16(x[t][k] / scale[t]) (round to
// nearest even, as numpy). Without `split`, e >= 0 is the smallest that brings max|x| below kF16RowLimit
// (0 when the row already is, or is not finite). With `split`, e (>= kF16SplitMinExp) puts max|x| in
// [2^14, 2^15), and y[n_rows + t][k] = fp16(x[t][k] / scale[t] - float(y[t][k])) (0 where y[t][k] is not
// finite). Rows of K values, ld K.
__global__ void __launch_bounds__(kToF16Threads)
    f32_to_f16_rows_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, float* __restrict__ scale,
                           int64_t n_rows, int64_t K, bool split) {
    __shared__ float red[32];
    for (int64_t t = blockIdx.x; t < n_rows; t += gridDim.x) {
        const float* xr = x + t * K;
        float m = 0.0f;
        for (int64_t k = threadIdx.x; k < K; k += kToF16Threads) m = fmaxf(m, fabsf(xr[k]));
        m = warp_max(m);
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
        if (lane == 0) red[warp] = m;
        __syncthreads();
        m = lane < kToF16Threads / 32 ? red[lane] : 0.0f;
        m = warp_max(m);
        __syncthreads();  // red is reused by the next row
        int e = 0;
        if ((split ? m > 0.0f : m >= kF16RowLimit) && m <= 3.4028234663852886e38f) {  // finite
            frexpf(m, &e);  // 2^(e-1) <= m < 2^e
            e -= 15;        // 2^14 <= m / 2^e < 2^15
            if (e < kF16SplitMinExp) e = kF16SplitMinExp;
        }
        if (threadIdx.x == 0) scale[t] = ldexpf(1.0f, e);
        for (int64_t k = threadIdx.x; k < K; k += kToF16Threads) {
            const float v = ldexpf(xr[k], -e);
            // hardware conversions (cvt.rn.f16.f32 / cvt.f32.f16): pq::fp32_to_fp16's bits for every non-NaN v
            const __half hi = __float2half_rn(v);
            y[t * K + k] = __half_as_ushort(hi);
            if (split) {
                const float h = __half2float(hi);
                y[(n_rows + t) * K + k] = __half_as_ushort(__float2half_rn(fabsf(h) <= 65504.0f ? v - h : 0.0f));
            }
        }
    }
}

// y[t][o] *= scale[t] for t < n_rows, o < N (ld ldy), grid-stride over the values.
__global__ void __launch_bounds__(kToF16Threads)
    scale_rows_kernel(float* __restrict__ y, const float* __restrict__ scale, int64_t n_rows, int64_t N,
                      int64_t ldy) {
    const int64_t n = n_rows * N;
    const int64_t stride = (int64_t)gridDim.x * kToF16Threads;
    for (int64_t i = (int64_t)blockIdx.x * kToF16Threads + threadIdx.x; i < n; i += stride) {
        const int64_t t = i / N;
        y[t * ldy + i % N] *= scale[t];
    }
}

}  // namespace pq::cuda
