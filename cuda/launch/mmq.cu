// mmq.cu: launch code of the quantized prefill matmul (kernels/mmq.cuh): type dispatch and grid sizing.
// matvec.cu routes n_tok > kMultiPassMaxTok through it for the types mmq_type_ok accepts
// (plan/workspace_sizes.h); the activations are the decode path's Q8_1 layout (quantize_act).
#include "../compat.cuh"
#include "../kernels/matvec_internal.cuh"
#include "../kernels/mmq.cuh"

namespace pq::cuda::detail {

namespace {
bool g_mmq_disabled = false;  // test hook (set_prefill_mmq_disabled)

template <class T>
cudaError_t launch(const mmq::Args& a, cudaStream_t stream) {
    const int64_t gx = cdiv(a.n_tok, kMmqBN), gy = cdiv(a.N, kMmqBM);
    if (gx > INT_MAX || gy > 65535) return cudaErrorInvalidValue;
    auto* k = mmq_kernel<T>;
    PQ_LAUNCH(k, dim3((unsigned)gx, (unsigned)gy), kMmqThreads, mmq_smem_layout().total, stream, a);
    return cudaGetLastError();
}
}  // namespace

void set_prefill_mmq_disabled(bool disabled) { g_mmq_disabled = disabled; }
bool prefill_mmq_disabled() { return g_mmq_disabled; }

bool mmq_enabled(int type, int64_t K) { return !g_mmq_disabled && mmq_type_ok(type, K); }

cudaError_t mmq(int type, const void* W, int64_t K, int64_t N, const void* q8, int64_t n_tok, float* y, int64_t ldy,
                cudaStream_t stream) {
    if (!mmq_type_ok(type, K) || N < 0 || n_tok < 0 || ldy < N) return cudaErrorInvalidValue;
    if (N == 0 || n_tok == 0) return cudaSuccess;
    int64_t row_bytes = 0;
    if (!matmul_type_ok(type, K, &row_bytes)) return cudaErrorInvalidValue;
    mmq::Args a;
    a.w = static_cast<const uint8_t*>(W);
    a.row_bytes = row_bytes;
    a.qa = static_cast<const int8_t*>(q8);
    a.ds = reinterpret_cast<const float2*>(static_cast<const char*>(q8) + quantize_act_ds_offset(K, n_tok));
    a.K = K;
    a.N = N;
    a.n_tok = n_tok;
    a.y = y;
    a.ldy = ldy;
    switch (type) {
        case pq::T_Q4_K: return launch<mmq::Q4K>(a, stream);
        case pq::T_Q5_K: return launch<mmq::Q5K>(a, stream);
        case pq::T_Q6_K: return launch<mmq::Q6K>(a, stream);
        case pq::T_Q8_0: return launch<mmq::Q80>(a, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace pq::cuda::detail

// ---- test entry point: the MMA twins on given fragments ----------------------------------------------------
namespace pq::cuda::detail {

namespace {
// One warp: lane l runs one MMA with its own fragments a[l][4], b[l][2] and accumulators c[l][4] (in/out).
// k16: mma_m16n8k16_s8 on a[l][0..1], b[l][0].
__global__ void mma_s8_probe_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b, int* __restrict__ c,
                                    int k16) {
    const int l = threadIdx.x;
    int acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    if (k16) {
        const uint32_t af[2] = {a[4 * l], a[4 * l + 1]};
        mma_m16n8k16_s8(acc, af, b[2 * l]);
    } else {
        const uint32_t af[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
        const uint32_t bf[2] = {b[2 * l], b[2 * l + 1]};
        mma_m16n8k32_s8(acc, af, bf);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) c[4 * l + i] = acc[i];
}
}  // namespace

cudaError_t mma_s8_probe(const uint32_t* a, const uint32_t* b, int* c, bool k16, cudaStream_t stream) {
    PQ_LAUNCH(mma_s8_probe_kernel, 1, 32, 0, stream, a, b, c, k16 ? 1 : 0);
    return cudaGetLastError();
}

}  // namespace pq::cuda::detail
