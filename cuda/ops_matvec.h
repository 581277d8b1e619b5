// ops_matvec.h: host entry points of the matmul family (launch/matvec.cu, gemm.cu, get_rows.cu).
// Plain C++ like ops.h: device pointers in, work enqueued on `stream`, launch error out.
//
// Weight types (GGUF ids, formats.h): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, F16,
// BF16, F32. Others return cudaErrorInvalidValue. K must be a positive multiple of the type's block size
// (32 or 256; 8 for the float types). W must be 16-byte aligned (cudaMalloc'd, or a 16-byte aligned
// offset into such memory: GGUF tensor data is 32-byte aligned); x and y 16-byte aligned; scratch
// 256-byte aligned.
//
// Paths (chosen per call by n_tok):
//   n_tok <= 8    decode: x quantized to Q8_1 (quantize_q8_1.cuh; float weights keep float x), one mmv
//                 launch (kernels/matvec.cuh): every weight byte is read once and serves all n_tok.
//   n_tok <= 16   two mmv launches of <= 8 tokens (2 reads of the weights beat the prefill path's
//                 dequantized fp16 copy: 0.56 -> 2 x 0.56 bytes per Q4_K weight, vs 0.56 + 2 + 2).
//   n_tok > 16    prefill, Q4_K/Q5_K/Q6_K/Q8_0 with K % 256 == 0 (mmq_type_ok, plan/workspace_sizes.h):
//                 x quantized to Q8_1 once, int8 tensor-core MMA straight from the GGUF blocks
//                 (kernels/mmq.cuh, launch/mmq.cu).
//   n_tok > 16    prefill, other types: x to fp16, weights dequantized to fp16 in tiles of <= 16M values,
//                 cuBLAS GemmEx (blas.h, fp32 accumulation). Builds without cuBLAS fall back to mmv launches.
#pragma once

#include <cstddef>
#include <cstdint>

#include "host_api.h"
#include "plan/workspace_sizes.h"  // q8_act_bytes, kMultiPassMaxTok

namespace pq::cuda {

// Bytes of device scratch the matmul needs (activation quantization, dequantized weight tiles, ...).
// Enough for matmul and for matmul_swiglu with any pair of weight types of these dimensions.
size_t matmul_scratch_bytes(int type, int64_t K, int64_t N, int64_t n_tok);

// y[t*N + r] = sum_k W[r][k] * x[t*K + k]; W: N rows of K values in GGUF type `type` (device memory, rows
// contiguous, row_bytes = K / block_size * block_bytes); x float32 [n_tok][K]; y float32 [n_tok][N].
cudaError_t matmul(int type, const void* W, int64_t K, int64_t N, const float* x, int64_t n_tok, float* y,
                   void* scratch, cudaStream_t stream);

// y[t*N + r] = silu(Wg x_t)[r] * (Wu x_t)[r]: the FFN gate and up projections fused (one pass over x's
// quantized activations; both weights read in the same kernel when n_tok <= 8).
cudaError_t matmul_swiglu(int type_g, const void* Wg, int type_u, const void* Wu, int64_t K, int64_t N,
                          const float* x, int64_t n_tok, float* y, void* scratch, cudaStream_t stream);

// ---- decode with shared activations (issue 10: fewer launches per token) ---------------------------------
// The decode path (n_tok <= kMultiPassMaxTok, plan/workspace_sizes.h) quantizes each distinct matmul input
// once, into a Q8_1 buffer of q8_act_bytes(K, n_tok) bytes (plan/workspace_sizes.h; the decode kernel's
// layout), and every matmul of that input reads it. The results are bit-identical with matmul /
// matmul_swiglu on x.

// Whether a weight type's matmul reads Q8_1 activations (false: float weights read x itself).
bool matmul_reads_q8(int type);
// x (n_tok rows of K, K % 32 == 0) to Q8_1 into q8.
cudaError_t quantize_act_q8(const float* x, int64_t K, int64_t n_tok, void* q8, cudaStream_t stream);
// One kernel: x += add (add may be null), y = rms_norm(x) * w (w may be null), q8 = Q8_1(y) (q8 may be
// null: no quantization). Bit-identical with add_f32 + rms_norm_f32 + quantize_act_q8. K % 32 == 0.
cudaError_t add_rms_norm_q8(float* x, const float* add, const float* w, float* y, void* q8, int64_t K,
                            int64_t n_tok, float eps, cudaStream_t stream);
// Up to kMatmulMaxParts matmuls of one weight type and K on the same input, n_tok <= kMultiPassMaxTok, in
// one launch per 8 tokens: parts[i].y = parts[i].W x. x and its q8 (prepared above; unused for float
// types) are read; each part's rows are summed as matmul sums them.
constexpr int kMatmulMaxParts = 4;
struct MatmulPart {
    const void* W;
    int64_t N;
    float* y;  // [n_tok][N]
    // Optional: ops_gdn.h conv1d_silu of y as the matmul's epilogue (bit-identical; the DeltaNet conv
    // without a launch of its own): taps [N][conv_k <= 8], state [N][conv_k - 1] updated, conv_y [n_tok][N].
    const float* conv_w = nullptr;
    float* conv_state = nullptr;
    float* conv_y = nullptr;
    int conv_k = 0;
};
// Optional epilogue of matmul_prepared (one part, N % 32 == 0): add_rms_norm_q8(x, y, w, out, q8, N, n_tok,
// eps) on the part's output y, run by the matmul kernel's last CTA (bit-identical; the residual add + norm
// + Q8_1 after the out / down projections without a launch of their own). q8 may be null (no Q8_1);
// counter: one unsigned zero before the call, left zero.
struct NormTail {
    float* x;
    const float* w;
    float* out;
    void* q8;
    unsigned* counter;
    float eps;
};
cudaError_t matmul_prepared(int type, const MatmulPart* parts, int nparts, int64_t K, const float* x, const void* q8,
                            int64_t n_tok, cudaStream_t stream, const NormTail* tail = nullptr);
// matmul_swiglu on a prepared input (n_tok <= kMultiPassMaxTok); scratch as matmul_swiglu's. y_q8 (may be
// null; N % 32 == 0): y's Q8_1 activations too (q8_act_bytes(N, n_tok)), written by the matmul kernel
// itself when both weights have one type -- the down-projection's input without a launch of its own;
// y_q8_counters: matmul_out_counters(N) unsigned zeros the kernel leaves zero again.
cudaError_t matmul_swiglu_prepared(int type_g, const void* Wg, int type_u, const void* Wu, int64_t K, int64_t N,
                                   const float* x, const void* q8, int64_t n_tok, float* y, void* scratch,
                                   cudaStream_t stream, void* y_q8 = nullptr, unsigned* y_q8_counters = nullptr);
constexpr int64_t matmul_out_counters(int64_t N) { return (N + 31) / 32; }

// out[i*K + k] = float value k of row ids[i] of W (n_rows rows; embedding gather, dequantized).
// Bit-identical with the CPU dequantizers (pyqwen._core.dequantize). ids are device memory and not
// trusted: an id outside [0, n_rows) gives a row of NaN, never a read outside W.
cudaError_t get_rows(int type, const void* W, int64_t K, int64_t n_rows, const int32_t* ids, int64_t n, float* out,
                     cudaStream_t stream);

}  // namespace pq::cuda
