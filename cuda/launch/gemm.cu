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
// ~0.25 s of GEMM at ~110 TFLOPS => ~1,400-1,800 tokens/s of matmul throughput on a 4090 (IQ4_XS, serial
// tiles; ~1.1x more with the overlap below: benchmarks/gpu_roofline.md, "which path per type and shape"),
// against ~4,500 on paper for MMQ and ~0.75 s on the 2-pass-mmv route (why n_tok <= 16
// stays on mmv). Weights are rounded to fp16 (rel. error 2^-11), and so are the activations of quantized
// weights, finer than the Q8 activations of the decode path; float weights get hi + lo fp16 activation
// pairs (~22 bits, two GEMMs, the second accumulating: kernels/gemm.cuh says why). Rows of activations
// whose max |x| would not fit fp16 are scaled by a power of two first and the product row scaled back
// (kernels/gemm.cuh), so no activation can overflow.
//
// The weight tiles are double-buffered on two streams (issue 11 item 2): tile i+1 is dequantized on a side
// stream into the other buffer while cuBLAS multiplies tile i on the caller's stream. Events order the two:
// the GEMM of tile i waits for its tile's dequantization (`ready`), the dequantization of tile i+2 waits
// for the GEMM of tile i, which read the same buffer (`freed`), and the side stream starts only after
// everything queued before on the caller's stream (`start`: the tile pair lies in the op scratch that other
// kernels share) and hands back at the end (`joined`), so to the caller the call is one ordered step. Per
// matrix the cost goes from sum(dequant + GEMM) to dequant(tile 0) + sum(GEMM) when the GEMM of a tile
// takes longer than the next tile's dequantization (benchmarks/gpu_roofline.md has the numbers). A matrix
// that fits one buffer is one whole-matrix tile on the caller's stream (nothing to overlap with).
// The GEMM sees the same fp16 values in either order: results are bit-identical to the serial path.

#include <mutex>

#include "../blas.h"
#include "../compat.cuh"
#include "../kernels/gemm.cuh"
#include "../kernels/matvec_internal.cuh"

namespace pq::cuda::detail {

namespace {
int64_t g_tile_values = kTileValues;                 // test hook (set_prefill_tile_values)
bool g_blas_disabled = false;                        // test hook (set_prefill_blas_disabled)
bool g_overlap = true;                               // test hook (set_prefill_overlap)
int g_overlap_fault = 0;                             // test hook (set_prefill_overlap_fault)

// The side stream and events of the overlapped tiles, made on first use on the current device (the model
// is one device) and kept for the process, like the cuBLAS handle. The mutex makes one call's sequence of
// records and waits atomic when several host threads run prefills (they then share the side stream).
struct Overlap {
    cudaStream_t side = nullptr;
    cudaEvent_t start = nullptr, joined = nullptr, ready[2] = {}, freed[2] = {};
};
std::mutex g_overlap_mu;
Overlap g_ov;

cudaError_t make_overlap() {  // g_overlap_mu held
    if (g_ov.side) return cudaSuccess;
    Overlap o;
    // Non-blocking: no implicit ordering against the legacy default stream (the caller's may be it).
    cudaError_t e = cudaStreamCreateWithFlags(&o.side, cudaStreamNonBlocking);
    cudaEvent_t* evs[] = {&o.start, &o.joined, &o.ready[0], &o.ready[1], &o.freed[0], &o.freed[1]};
    for (cudaEvent_t* ev : evs)
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(ev, cudaEventDisableTiming);  // no timestamps
    if (e != cudaSuccess) {
        for (cudaEvent_t* ev : evs)
            if (*ev) cudaEventDestroy(*ev);
        if (o.side) cudaStreamDestroy(o.side);
        return e;
    }
    g_ov = o;
    return cudaSuccess;
}
}  // namespace

void set_prefill_tile_values(int64_t values) { g_tile_values = values > 0 ? values : kTileValues; }
void set_prefill_blas_disabled(bool disabled) { g_blas_disabled = disabled; }
void set_prefill_overlap(bool enabled) { g_overlap = enabled; }
void set_prefill_overlap_fault(int fault) { g_overlap_fault = fault; }

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

cudaError_t gemm_prefill_n(const PrefillWeight* ws, int n_ws, int64_t K, int64_t N, const uint16_t* x16,
                           int64_t n_tok, bool split, uint16_t* const tile[2], cudaStream_t stream) {
    if (K > INT_MAX || N > INT_MAX || n_tok > INT_MAX || n_ws < 1) return cudaErrorInvalidValue;
    if (g_blas_disabled || !blas_available()) return cudaErrorNotSupported;  // before anything is queued
    const uint16_t* lo = x16 + n_tok * K;  // the lo rows (split)
    // y = W hi (+ W lo): the lo product is added by cuBLAS (beta = 1) onto the hi one.
    auto product = [&](const uint16_t* w, int64_t rows, float* yr) {
        cudaError_t e = gemm_f16(w, x16, yr, (int)rows, (int)n_tok, (int)K, (int)K, (int)K, (int)N, stream);
        if (e == cudaSuccess && split)
            e = gemm_f16(w, lo, yr, (int)rows, (int)n_tok, (int)K, (int)K, (int)K, (int)N, stream, true);
        return e;
    };
    const int64_t rows = prefill_tile_rows(K, N);
    int64_t n_tiles = 0;  // over all weights: one pipeline, so the next weight's first tile overlaps too
    for (int j = 0; j < n_ws; ++j) n_tiles += ws[j].type == pq::T_F16 ? 0 : (N + rows - 1) / rows;
    // Serial (one whole-matrix tile, or the test hook's reference order): every tile dequantized into
    // tile[0] on the caller's stream, no events. Overlapped: the side stream and the event handshake.
    const bool ov = g_overlap && n_tiles > 1;
    std::unique_lock<std::mutex> lock(g_overlap_mu, std::defer_lock);
    cudaError_t e = cudaSuccess;
    cudaStream_t dq = stream;  // where tiles are dequantized: the side stream when overlapped
    if (ov) {
        lock.lock();
        e = make_overlap();
        if (e != cudaSuccess) return e;
        dq = g_ov.side;
        e = cudaEventRecord(g_ov.start, stream);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(dq, g_ov.start, 0);
    }
    int64_t i = 0;  // tile number over the whole pipeline; buffer i % 2 when overlapped
    for (int j = 0; j < n_ws && e == cudaSuccess; ++j) {
        if (ws[j].type == pq::T_F16) {  // F16 weights multiply as they are, in order on the caller's stream
            e = product(static_cast<const uint16_t*>(ws[j].W), N, ws[j].y);
            continue;
        }
        for (int64_t r0 = 0; e == cudaSuccess && r0 < N; r0 += rows, ++i) {
            const int64_t nr = N - r0 < rows ? N - r0 : rows;
            const int b = ov ? (int)(i & 1) : 0;
            if (ov && i >= 2 && g_overlap_fault != 2) e = cudaStreamWaitEvent(dq, g_ov.freed[b], 0);  // GEMM i-2 read it
            if (e == cudaSuccess) e = dequant_rows_f16(ws[j].type, ws[j].W, K, r0, nr, tile[b], dq);
            if (ov && e == cudaSuccess) e = cudaEventRecord(g_ov.ready[b], dq);
            if (ov && e == cudaSuccess && g_overlap_fault != 1) e = cudaStreamWaitEvent(stream, g_ov.ready[b], 0);
            if (e == cudaSuccess) e = product(tile[b], nr, ws[j].y + r0);
            if (ov && e == cudaSuccess) e = cudaEventRecord(g_ov.freed[b], stream);
        }
    }
    if (!ov) return e;
    // Join, also after an error: nothing queued on the side stream may outlive the call unordered (the
    // scratch is reused by the next op; a graph capture must end on the caller's stream).
    const cudaError_t jn = cudaEventRecord(g_ov.joined, dq);
    const cudaError_t w = jn == cudaSuccess ? cudaStreamWaitEvent(stream, g_ov.joined, 0) : jn;
    return e != cudaSuccess ? e : w;
}

cudaError_t gemm_prefill(int type, const void* W, int64_t K, int64_t N, const uint16_t* x16, int64_t n_tok,
                         bool split, float* y, uint16_t* const tile[2], cudaStream_t stream) {
    const PrefillWeight w{type, W, y};
    return gemm_prefill_n(&w, 1, K, N, x16, n_tok, split, tile, stream);
}

}  // namespace pq::cuda::detail
