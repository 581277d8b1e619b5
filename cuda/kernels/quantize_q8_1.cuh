// quantize_q8_1.cuh: f32 activations -> block_q8_1 (32 values per block), one warp per block.
//
// Bit-exact with ggml's CPU reference quantize_row_q8_1_ref: d = amax/127, q = roundf(x * (1/d)),
// s = fp16(d * sum(q)). (ggml's CUDA quantizer differs: q = roundf(x / d) and s = fp16(sum(x)); we
// follow the CPU reference so the CPU and CUDA backends produce identical activations.)
// A row of ncols values gives ceil(ncols/32) blocks; the tail of the last block is quantized as zeros.
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kQuantizeBlock = 256;  // threads per CUDA block = 8 q8_1 blocks

__global__ void __launch_bounds__(kQuantizeBlock)
    quantize_q8_1_kernel(const float* __restrict__ x, pq::block_q8_1* __restrict__ y, int ncols, int64_t sx,
                         int nblocks_row) {
    const int64_t row = blockIdx.y;
    const int64_t i = (int64_t)blockIdx.x * kQuantizeBlock + threadIdx.x;  // value index within the row
    const int64_t ib = i / QK8_0;
    if (ib >= nblocks_row) return;  // whole warps leave together: kQuantizeBlock and QK8_0 are multiples of 32
    const int lane = threadIdx.x % 32;
    const float xi = i < ncols ? x[row * sx + i] : 0.0f;
    const float amax = warp_max(fabsf(xi));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(xi * id);
    const int sum = warp_sum(q);
    pq::block_q8_1* b = y + row * nblocks_row + ib;
    b->qs[lane] = (int8_t)q;
    if (lane == 0) {
        b->d = pq::fp32_to_fp16(d);
        b->s = pq::fp32_to_fp16((float)sum * d);
    }
}

}  // namespace pq::cuda
