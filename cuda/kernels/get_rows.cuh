// get_rows.cuh: dequantization of whole weight rows -- the embedding gather (float rows) and the prefill
// path's fp16 weight tiles (gemm.cuh / launch/gemm.cu).
//
// One thread decodes one sub-block (32 values; 8 for float types) with the type's `dequant`
// (matvec_types.cuh), which reproduces the CPU dequantizers bit for bit; the fp16 variant then rounds
// each pair of floats to nearest even in one hardware conversion (__floats2half2_rn: cvt.rn.f16x2.f32 on
// sm_80+, instead of pq::fp32_to_fp16's ~15 integer/float operations per value); the same bits as numpy's
// float16 cast and pq::fp32_to_fp16 for every non-NaN value (a NaN stays NaN, its payload may differ). Rows are either listed (ids,
// the gather) or a contiguous range (row0.., the tiles).
#pragma once

#include "../compat.cuh"
#include "matvec_types.cuh"

namespace pq::cuda {

constexpr int kDequantThreads = 64;

// Grid: (ceil(subs_per_row / kDequantThreads), min(nrows, 65535)); rows beyond gridDim.y loop.
// out row i (of ldo elements) = row (ids ? ids[i] : row0 + i) of W, which has w_rows rows. The ids live in
// device memory (the previous decode step's choice never visits the host), so they are not trusted: an
// id outside [0, w_rows) gives a row of NaN -- it shows up as NaN logits, which the model reports --
// instead of a read outside the weights, which would kill the CUDA context. out must be 16-byte aligned
// and ldo a multiple of 8 (vector stores).
template <class T, bool kF16Out>
__global__ void __launch_bounds__(kDequantThreads)
    dequant_rows_kernel(const uint8_t* __restrict__ W, int64_t row_bytes, int64_t w_rows,
                        const int32_t* __restrict__ ids, int64_t row0, int64_t nrows, int subs_per_row,
                        void* __restrict__ out, int64_t ldo) {
    constexpr int kVals = T::kBlockVals / T::kSubs;  // 32 or 8
    const int s = blockIdx.x * kDequantThreads + threadIdx.x;
    if (s >= subs_per_row) return;
    const int64_t blk_off = (int64_t)(s / T::kSubs) * T::kBlockBytes;
    for (int64_t i = blockIdx.y; i < nrows; i += gridDim.y) {
        const int64_t r = ids ? (int64_t)ids[i] : row0 + i;
        float v[kVals];
        if (r >= 0 && r < w_rows) {
            T::dequant(W + r * row_bytes + blk_off, s % T::kSubs, v);
        } else {
#pragma unroll
            for (int j = 0; j < kVals; ++j) v[j] = __int_as_float(0x7fc00000);  // quiet NaN
        }
        if constexpr (kF16Out) {
            uint4* o = reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + i * ldo + (int64_t)s * kVals);
#pragma unroll
            for (int j = 0; j < kVals / 8; ++j) {
                uint32_t h[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const __half2 p = __floats2half2_rn(v[8 * j + 2 * k], v[8 * j + 2 * k + 1]);  // .x: low half
                    h[k] = *reinterpret_cast<const uint32_t*>(&p);
                }
                o[j] = make_uint4(h[0], h[1], h[2], h[3]);
            }
        } else {
            float4* o = reinterpret_cast<float4*>(static_cast<float*>(out) + i * ldo + (int64_t)s * kVals);
#pragma unroll
            for (int j = 0; j < kVals / 4; ++j) o[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
        }
    }
}

}  // namespace pq::cuda
