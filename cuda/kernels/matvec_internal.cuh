// matvec_internal.cuh: host-side helpers shared by launch/matvec.cu, gemm.cu and get_rows.cu (not part
// of the public API in ops_matvec.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../host_api.h"
#include "../plan/workspace_sizes.h"

namespace pq::cuda::detail {

// Validity of (type, K) for the matmul family; fills the row geometry.
bool matmul_type_ok(int type, int64_t K, int64_t* row_bytes);

// x (n_tok rows of K, K % 32 == 0) to Q8_1 in the decode kernel's layout (mv::QAct): n_tok * K int8 at q8,
// then n_tok * K/32 float2 (d, s) at q8 + quantize_act_ds_offset(K, n_tok).
cudaError_t quantize_act(const float* x, int64_t K, int64_t n_tok, void* q8, cudaStream_t stream);
size_t quantize_act_ds_offset(int64_t K, int64_t n_tok);

// Rows [row0, row0 + nrows) of W dequantized to fp16 bits, out[i * K + k] (row-major, ld = K).
cudaError_t dequant_rows_f16(int type, const void* W, int64_t K, int64_t row0, int64_t nrows, uint16_t* out,
                             cudaStream_t stream);

// y[t][k] = fp16(x[t][k] / scale[t]) with scale[t] a power of two that keeps row t inside the fp16 range
// (kernels/gemm.cuh), rows of K values; with `split` also the lo rows y[n_rows + t] (2 * n_rows rows in
// all); and the way back on a product: y[t][o] *= scale[t].
cudaError_t f32_to_f16_rows(const float* x, uint16_t* y, float* scale, int64_t n_rows, int64_t K, bool split,
                            cudaStream_t stream);
cudaError_t scale_rows(float* y, const float* scale, int64_t n_rows, int64_t N, int64_t ldy, cudaStream_t stream);

// Rows per dequantized fp16 weight tile of the prefill path (<= 16M values per tile by default).
int64_t prefill_tile_rows(int64_t K, int64_t N);
// Values per tile now (kTileValues unless a test changed it): the scratch layout depends on it.
int64_t prefill_tile_values();
// Test hook: values per tile (0 restores the default), so that small matrices exercise several tiles.
void set_prefill_tile_values(int64_t values);
// Test hook: gemm_prefill answers cudaErrorNotSupported as in a build without cuBLAS.
void set_prefill_blas_disabled(bool disabled);
// Test hook: false runs the tiles serially on the caller's stream (the reference order; default true).
void set_prefill_overlap(bool enabled);
// Test hook, planted ordering bugs of the overlapped tiles (0: none): 1 drops the GEMM's wait for its tile's
// dequantization, 2 drops the dequantization's wait for the GEMM that last read its buffer.
void set_prefill_overlap_fault(int fault);

// Whether the prefill path gives weights of this type hi + lo fp16 activations (kernels/gemm.cuh: float
// weights, whose other paths all see fp32 activations; quantized weights are matched by fp16 alone).
inline bool prefill_split_act(int type) { return type == T_F32 || type == T_F16 || type == T_BF16; }

// Prefill product y[t][r] = sum_k fp16(W[r][k]) * x16[t][k] (ldy = N) with cuBLAS: F16 weights directly,
// other types through the tile pair `tile` (two buffers of prefill_tile_rows(K, N) * K fp16 values each;
// several tiles alternate between them, dequantized on a side stream while the previous one multiplies:
// launch/gemm.cu); with `split`, plus the same product on the lo rows x16[n_tok + t] (f32_to_f16_rows).
// Returns cudaErrorNotSupported (before anything is queued) when the build has no cuBLAS.
cudaError_t gemm_prefill(int type, const void* W, int64_t K, int64_t N, const uint16_t* x16, int64_t n_tok,
                         bool split, float* y, uint16_t* const tile[2], cudaStream_t stream);
// The same for several weights of one shape on the same activations (matmul_swiglu's gate and up), as one
// pipeline of tiles: the next weight's first tile is dequantized while the previous one's last multiplies.
struct PrefillWeight {
    int type;
    const void* W;
    float* y;
};
cudaError_t gemm_prefill_n(const PrefillWeight* ws, int n_ws, int64_t K, int64_t N, const uint16_t* x16,
                           int64_t n_tok, bool split, uint16_t* const tile[2], cudaStream_t stream);

// Quantized prefill matmul on int8 tensor cores (launch/mmq.cu): y[t][r] (ld ldy) = W row r . the Q8_1
// activations of token t at q8 (quantize_act's layout for K, n_tok). Types: mmq_type_ok (workspace_sizes.h).
cudaError_t mmq(int type, const void* W, int64_t K, int64_t N, const void* q8, int64_t n_tok, float* y, int64_t ldy,
                cudaStream_t stream);
// Whether matmul routes prefill of (type, K) through mmq: mmq_type_ok and not disabled by the test hook.
bool mmq_enabled(int type, int64_t K);
// Test hook: prefill of every type takes the fp16 dequantize + cuBLAS path (to test that path).
void set_prefill_mmq_disabled(bool disabled);
bool prefill_mmq_disabled();  // the hook's state: the model's plan then reserves the fp16 tile pair for every shape

// Test entry point: one warp runs mma_m16n8k32_s8 (k16: mma_m16n8k16_s8) with lane l's fragments a[4l..],
// b[2l..] and accumulators c[4l..] (updated in place): the fragment layout of the twins, checked by the tests.
cudaError_t mma_s8_probe(const uint32_t* a, const uint32_t* b, int* c, bool k16, cudaStream_t stream);

}  // namespace pq::cuda::detail
