// tile_probe.cu: the test entry point of tile_load.cuh's primitives (cp.async, ldmatrix): one warp, so a
// test can hold their results against the PTX ISA's definition on the emulator and on a GPU alike.
#include "../compat.cuh"
#include "../kernels/tile_load.cuh"
#include "../ops_attention.h"

namespace pq::cuda {

namespace {

constexpr int kProbeRows = 16, kProbeMaxLd = 64;

// Copies the 16 x ld fp16 tile into shared memory (filled with 0xFFFF first, so a copy that has not landed
// shows), waits for it unless `skip_wait`, then lane l runs ldmatrix_x4 and ldmatrix_x4_trans from
// shared offset offsets[l]: out[l][0..3] = x4, out[l][4..7] = x4.trans.
__global__ void tile_probe_kernel(const uint16_t* __restrict__ tile, int ld, const int* __restrict__ offsets,
                                  int skip_wait, uint32_t* __restrict__ out) {
    __shared__ uint4 words[kProbeRows * kProbeMaxLd / 8];
    uint16_t* s = reinterpret_cast<uint16_t*>(words);
    const int lane = threadIdx.x;
    for (int i = lane; i < kProbeRows * ld; i += 32) s[i] = 0xFFFFu;
    __syncwarp();
    AsyncCopies<kProbeRows * kProbeMaxLd / 8 / 32> cp;
    for (int c = lane; c < kProbeRows * ld / 8; c += 32) cp.copy16(s + c * 8, tile + c * 8, true);
    cp.commit();
    if (!skip_wait) cp.wait<0>();
    __syncwarp();
    uint32_t r[4], t[4];
    ldmatrix_x4(r, s + offsets[lane]);
    ldmatrix_x4_trans(t, s + offsets[lane]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[lane * 8 + i] = r[i];
        out[lane * 8 + 4 + i] = t[i];
    }
}

}  // namespace

cudaError_t tile_load_probe(const uint16_t* tile, int ld, const int* offsets, bool skip_wait, uint32_t* out,
                            cudaStream_t stream) {
    if (ld < 16 || ld > kProbeMaxLd || ld % 8 != 0 || !tile || !offsets || !out) return cudaErrorInvalidValue;
    PQ_LAUNCH(tile_probe_kernel, 1, 32, 0, stream, tile, ld, offsets, skip_wait ? 1 : 0, out);
    return cudaGetLastError();
}

}  // namespace pq::cuda
