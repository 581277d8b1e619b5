// q8_act.cuh: the activation quantizer's arithmetic, for every kernel that writes the decode path's Q8_1
// activations (mv::QAct layout: int8 values of a row contiguous, one (d, s) float pair per 32 values):
// quantize_act_kernel, add_rms_norm_q8_kernel, and the kernels that quantize their own output.
//
// Bit-exact with ggml's CPU reference quantize_row_q8_1_ref (d = amax/127, q = roundf(x * (1/d)), s =
// fp16(d * sum(q))), d and s widened back from fp16 as the matmul kernels read them.
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"

namespace pq::cuda {

// Lane's value v of a whole warp's 32 consecutive values (value index i of a row, i % 32 == lane) into the
// QAct row (qs: the row's int8 values, ds: its (d, s) pairs). Every lane of the warp must call it. The one
// home of the activation quantizer's arithmetic (quantize_act_kernel, add_rms_norm_q8_kernel, gdn_decode_kernel).
__device__ __forceinline__ void q8_act_store(float v, int64_t i, int8_t* __restrict__ qs, float2* __restrict__ ds) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(v * id);
    const int sum = warp_sum(q);
    qs[i] = (int8_t)q;
    if (threadIdx.x % 32 == 0)
        ds[i / 32] = make_float2(pq::fp16_to_fp32(pq::fp32_to_fp16(d)), pq::fp16_to_fp32(pq::fp32_to_fp16((float)sum * d)));
}

}  // namespace pq::cuda
