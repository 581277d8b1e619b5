// gemm.cu: the prefill matmul (n_tok > 16) for the types the int8 MMQ (launch/mmq.cu) does not take: float
// weights, IQ4_XS, the 32-value legacy types, Q8_0 with K % 256 != 0 -- fp16 weight tiles x fp16
// activations on cuBLAS (blas.h).
//
// Why this route is the fallback and not the rule: the int8 MMQ reads each quantized block once per CTA
// and multiplies on the int8 tensor cores (660 dense TOPS on a 4090), while this route dequantizes every
// weight (0.56 B for Q4_K) to fp16 (2 B written, 2 B read back by the GEMM, much of it from L2 with 32 MB
// tiles on a 72 MB L2), ~2.6-4.6 B per weight per call independent of n_tok, and then runs on the fp16
// tensor cores with fp32 accumulation (165 dense TFLOPS on a 4090, cuBLAS ~60-70 % of it on these
// shapes). For a 512-token ubatch of Qwen3.6-27B (27e9 weights, 27.6 TFLOP): ~0.03-0.12 s of traffic +
// ~0.25 s of GEMM at ~110 TFLOPS => ~1,400-1,800 tokens/s of matmul throughput on a 4090, against ~4,500
// on paper for MMQ (benchmarks/gpu_roofline.md) and ~0.75 s on the 2-pass-mmv route (why n_tok <= 16
// stays on mmv). Weights are rounded to fp16 (rel. error 2^-11), and so are the activations of quantized
// weights, finer than the Q8 activations of the decode path; float weights get hi + lo fp16 activation
// pairs (~22 bits, two GEMMs, the second accumulating: kernels/gemm.cuh says why). Rows of activations
// whose max |x| would not fit fp16 are scaled by a power of two first and the product row scaled back
// (kernels/gemm.cuh), so no activation can overflow.
#include "../blas.h"
#include "../compat.cuh"
#include "../kernels/gemm.cuh"
#include "../kernels/matvec_internal.cuh"

namespace pq::cuda::detail {

namespace {
int64_t g_tile_values = kTileValues;                 // test hook (set_prefill_tile_values)
bool g_blas_disabled = false;                        // test hook (set_prefill_blas_disabled)
}  // namespace

void set_prefill_tile_values(int64_t values) { g_tile_values = values > 0 ? values : kTileValues; }
void set_prefill_blas_disabled(bool disabled) { g_blas_disabled = disabled; }

int64_t prefill_tile_values() { return g_tile_values; }

int64_t prefill_tile_rows(int64_t K, int64_t N) { return cuda::prefill_tile_rows(K, N, g_tile_values); }

cudaError_t f32_to_f16_rows(const float* x, uint16_t* y, float* scale, int64_t n_rows, int64_t K, bool split,
                            cudaStream_t stream) {
    if (n_rows < 0 || K < 0) return cudaErrorInvalidValue;
    if (n_rows == 0 || K == 0) return cudaSuccess;
    const int grid = (int)(n_rows < 65535 ? n_rows : 65535);
    PQ_LAUNCH(f32_to_f16_rows_kernel, grid, kToF16Threads, 0, stream, x, y, scale, n_rows, K, split);
    return cudaGetLastError();
}

cudaError_t scale_rows(float* y, const float* scale, int64_t n_rows, int64_t N, int64_t ldy, cudaStream_t stream) {
    if (n_rows < 0 || N < 0 || ldy < N) return cudaErrorInvalidValue;
    const int64_t n = n_rows * N;
    if (n == 0) return cudaSuccess;
    const int64_t blocks = (n + kToF16Threads - 1) / kToF16Threads;
    const int grid = (int)(blocks < 8192 ? blocks : 8192);
    PQ_LAUNCH(scale_rows_kernel, grid, kToF16Threads, 0, stream, y, scale, n_rows, N, ldy);
    return cudaGetLastError();
}

cudaError_t gemm_prefill(int type, const void* W, int64_t K, int64_t N, const uint16_t* x16, int64_t n_tok,
                         bool split, float* y, uint16_t* tile, cudaStream_t stream) {
    if (K > INT_MAX || N > INT_MAX || n_tok > INT_MAX) return cudaErrorInvalidValue;
    if (g_blas_disabled) return cudaErrorNotSupported;
    const uint16_t* lo = x16 + n_tok * K;  // the lo rows (split)
    // y = W hi (+ W lo): the lo product is added by cuBLAS (beta = 1) onto the hi one.
    auto product = [&](const uint16_t* w, int64_t rows, float* yr) {
        cudaError_t e = gemm_f16(w, x16, yr, (int)rows, (int)n_tok, (int)K, (int)K, (int)K, (int)N, stream);
        if (e == cudaSuccess && split)
            e = gemm_f16(w, lo, yr, (int)rows, (int)n_tok, (int)K, (int)K, (int)K, (int)N, stream, true);
        return e;
    };
    if (type == pq::T_F16) return product(static_cast<const uint16_t*>(W), N, y);
    const int64_t rows = prefill_tile_rows(K, N);
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        const int64_t nr = N - r0 < rows ? N - r0 : rows;
        cudaError_t e = dequant_rows_f16(type, W, K, r0, nr, tile, stream);
        if (e != cudaSuccess) return e;
        e = product(tile, nr, y + r0);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

}  // namespace pq::cuda::detail
