// gdn.cu: launch code of the Gated DeltaNet kernels -- the causal conv + SiLU, the fused decode step and the
// chunked prefill (kernels/conv1d.cuh, gdn_common.cuh, gdn_decode.cuh, gdn_chunk.cuh).
#include "../compat.cuh"
#include "../kernels/conv1d.cuh"
#include "../kernels/gdn_chunk.cuh"
#include "../kernels/gdn_common.cuh"
#include "../kernels/gdn_decode.cuh"
#include "../ops_gdn.h"

#include <cmath>

namespace pq::cuda {

namespace {

template <int K>
cudaError_t launch_conv(const float* x, const float* w, float* state, float* y, int64_t C, int64_t n,
                        cudaStream_t stream) {
    const dim3 grid((unsigned)((C + kConvBlock - 1) / kConvBlock), (unsigned)((n + kConvTile - 1) / kConvTile));
    PQ_LAUNCH(conv1d_silu_kernel<K>, grid, kConvBlock, 0, stream, x, w, state, y, C, n);
    return cudaGetLastError();
}

// The chunked path's scratch arrays: gdn_scratch_layout (plan/workspace_sizes.h).

bool gdn_shape_ok(int nk, int nv, int dk, int dv, int64_t n) {
    return nk > 0 && nv > 0 && nv <= 65535 && dk > 0 && dk <= 256 && dv > 0 && dv <= 8192 && n >= 0 &&
           n <= INT_MAX;
}

template <int KPL>
cudaError_t launch_decode(const float* y, const float* alpha, const float* b, const float* ssm_a,
                          const float* dt_bias, float* S, const float* z, const float* norm_w, float* out, int nk,
                          int nv, int dk, int dv, float q_scale, float eps, int8_t* out_qs, float2* out_ds,
                          unsigned* head_cnt, cudaStream_t stream) {
    // parts per head (gdn_decode.cuh): only with the counters, and only when the parts are whole
    const int rpp = head_cnt && dv > kGdnDecodePartRows && dv % kGdnDecodePartRows == 0 ? kGdnDecodePartRows : dv;
    const dim3 grid((unsigned)nv, (unsigned)(dv / rpp));
    PQ_LAUNCH_PDL(gdn_decode_kernel<KPL>, grid, 32 * gdn_decode_warps(rpp), sizeof(float) * dv, stream, y, alpha, b,
              ssm_a, dt_bias, S, z, norm_w, out, nk, dk, dv, q_scale, eps, out_qs, out_ds, rpp, head_cnt);
    return cudaGetLastError();
}

}  // namespace

cudaError_t conv1d_silu(const float* x, const float* w, float* state, float* y, int64_t C, int K, int64_t n,
                        cudaStream_t stream) {
    if (C < 0 || n < 0 || K < 1 || K > kConvMaxKernel) return cudaErrorInvalidValue;
    if (C == 0) return cudaSuccess;
    if ((C + kConvBlock - 1) / kConvBlock > INT_MAX || (n + kConvTile - 1) / kConvTile > 65535)
        return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;  // the state is unchanged
    switch (K) {
        case 1: return launch_conv<1>(x, w, state, y, C, n, stream);
        case 2: return launch_conv<2>(x, w, state, y, C, n, stream);
        case 3: return launch_conv<3>(x, w, state, y, C, n, stream);
        case 4: return launch_conv<4>(x, w, state, y, C, n, stream);
        case 5: return launch_conv<5>(x, w, state, y, C, n, stream);
        case 6: return launch_conv<6>(x, w, state, y, C, n, stream);
        case 7: return launch_conv<7>(x, w, state, y, C, n, stream);
        default: return launch_conv<8>(x, w, state, y, C, n, stream);
    }
}

cudaError_t gdn_decode_q8(const float* y, const float* alpha, const float* b, const float* ssm_a, const float* dt_bias,
                          float* S, const float* z, const float* norm_w, float* out, int nk, int nv, int dk, int dv,
                          float eps, int8_t* out_qs, float* out_ds, unsigned* head_cnt, cudaStream_t stream) {
    if (!gdn_shape_ok(nk, nv, dk, dv, 1) || (out_qs && (!out || !out_ds || dv % 32 != 0))) return cudaErrorInvalidValue;
    const float q_scale = 1.0f / std::sqrt((float)dk);
    auto* launch = dk <= 32 ? launch_decode<1> : dk <= 64 ? launch_decode<2> : dk <= 128 ? launch_decode<4>
                                                                                         : launch_decode<8>;
    return launch(y, alpha, b, ssm_a, dt_bias, S, z, norm_w, out, nk, nv, dk, dv, q_scale, eps, out_qs,
                  reinterpret_cast<float2*>(out_ds), head_cnt, stream);
}

size_t gdn_scratch_bytes(int nk, int nv, int dk, int dv, int64_t n) {
    if (n <= 1 || !gdn_shape_ok(nk, nv, dk, dv, n)) return 0;
    return gdn_scratch_layout(nk, nv, dk, dv, n).total;
}

cudaError_t gdn(const float* y, const float* alpha, const float* b, const float* ssm_a, const float* dt_bias,
                float* S, const float* z, const float* norm_w, float* out, int nk, int nv, int dk, int dv,
                int64_t n, float eps, void* scratch, cudaStream_t stream) {
    if (!gdn_shape_ok(nk, nv, dk, dv, n)) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (out == nullptr && n != 1) return cudaErrorInvalidValue;  // state-only updates are decode steps
    const float q_scale = 1.0f / std::sqrt((float)dk);

    if (n == 1)  // decode: one fused kernel, one block per V head
        return gdn_decode_q8(y, alpha, b, ssm_a, dt_bias, S, z, norm_w, out, nk, nv, dk, dv, eps, nullptr, nullptr,
                             nullptr, stream);

    if (scratch == nullptr || (n * nv + kGdnNormWarps - 1) / kGdnNormWarps > INT_MAX) return cudaErrorInvalidValue;
    const GdnScratch L = gdn_scratch_layout(nk, nv, dk, dv, n);
    char* base = static_cast<char*>(scratch);
    float* qn = reinterpret_cast<float*>(base + L.qn);
    float* kn = reinterpret_cast<float*>(base + L.kn);
    float* g = reinterpret_cast<float*>(base + L.g);
    float* beta = reinterpret_cast<float*>(base + L.beta);
    float* U = reinterpret_cast<float*>(base + L.u);
    float* W = reinterpret_cast<float*>(base + L.w);
    float* P = reinterpret_cast<float*>(base + L.p);
    const int64_t nc = (n + kGdnChunk - 1) / kGdnChunk;
    cudaError_t e;

    PQ_LAUNCH(gdn_prep_kernel, (unsigned)n, kGdnPrepBlock, 0, stream, y, alpha, b, ssm_a, dt_bias, qn, kn, g, beta,
              nk, nv, dk, dv, n, q_scale);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;

    const dim3 prep_grid((unsigned)nc, (unsigned)nv);
    PQ_LAUNCH(gdn_chunk_prep_kernel, prep_grid, kGdnChunkThreads, sizeof(float) * gdn_chunk_prep_smem_floats(),
              stream, y, qn, kn, g, beta, U, W, P, nk, nv, dk, dv, n);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;

    const dim3 scan_grid((unsigned)((dv + kGdnScanRows - 1) / kGdnScanRows), (unsigned)nv);
    PQ_LAUNCH(gdn_chunk_scan_kernel, scan_grid, kGdnChunkThreads, sizeof(float) * gdn_chunk_scan_smem_floats(dk),
              stream, qn, kn, g, U, W, P, S, out, nk, nv, dk, dv, n);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;

    const int64_t rows = n * nv;
    PQ_LAUNCH(gdn_gated_norm_kernel, (unsigned)((rows + kGdnNormWarps - 1) / kGdnNormWarps), kGdnNormWarps * 32, 0,
              stream, out, z, norm_w, rows, dv, eps);
    return cudaGetLastError();
}

}  // namespace pq::cuda
