// get_rows.cu: embedding gather (get_rows) and the prefill path's fp16 weight tiles, both through
// dequant_rows_kernel (kernels/get_rows.cuh).
#include "../compat.cuh"
#include "../kernels/get_rows.cuh"
#include "../kernels/matvec_internal.cuh"
#include "../ops_matvec.h"

namespace pq::cuda {

namespace detail {

bool matmul_type_ok(int type, int64_t K, int64_t* row_bytes) {
    const int64_t bs = mv::dispatch_type(type, (int64_t)0, [](auto t) { return (int64_t)decltype(t)::kBlockVals; });
    if (bs == 0 || K <= 0 || K % bs != 0 || K / 8 > INT_MAX) return false;
    const int64_t bb = mv::dispatch_type(type, (int64_t)0, [](auto t) { return (int64_t)decltype(t)::kBlockBytes; });
    if (row_bytes) *row_bytes = K / bs * bb;
    return true;
}

namespace {
template <bool kF16Out>
cudaError_t dequant_rows(int type, const void* W, int64_t K, int64_t w_rows, const int32_t* ids, int64_t row0,
                         int64_t nrows, void* out, cudaStream_t stream) {
    int64_t row_bytes = 0;
    if (!matmul_type_ok(type, K, &row_bytes) || nrows < 0 || w_rows < 0) return cudaErrorInvalidValue;
    if (nrows == 0) return cudaSuccess;
    if ((reinterpret_cast<uintptr_t>(W) | reinterpret_cast<uintptr_t>(out)) & 15) return cudaErrorInvalidValue;
    return mv::dispatch_type(type, cudaErrorInvalidValue, [&](auto t) {
        using T = decltype(t);
        const int subs = (int)(K / T::kBlockVals * T::kSubs);
        const dim3 grid((subs + kDequantThreads - 1) / kDequantThreads, (unsigned)(nrows < 65535 ? nrows : 65535));
        auto* dequant_rows_kernel_t = dequant_rows_kernel<T, kF16Out>;
        PQ_LAUNCH(dequant_rows_kernel_t, grid, kDequantThreads, 0, stream, static_cast<const uint8_t*>(W), row_bytes, w_rows, ids, row0,
                  nrows, subs, out, K);
        return cudaGetLastError();
    });
}
}  // namespace

cudaError_t dequant_rows_f16(int type, const void* W, int64_t K, int64_t row0, int64_t nrows, uint16_t* out,
                             cudaStream_t stream) {
    return dequant_rows<true>(type, W, K, row0 + nrows, nullptr, row0, nrows, out, stream);
}

}  // namespace detail

cudaError_t get_rows(int type, const void* W, int64_t K, int64_t n_rows, const int32_t* ids, int64_t n, float* out,
                     cudaStream_t stream) {
    if (n > 0 && !ids) return cudaErrorInvalidValue;
    return detail::dequant_rows<false>(type, W, K, n_rows, ids, 0, n, out, stream);
}

}  // namespace pq::cuda
