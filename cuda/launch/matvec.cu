// matvec.cu: matmul / matmul_swiglu / matmul_scratch_bytes (ops_matvec.h): path selection, scratch layout
// and the launches of the decode kernel (kernels/matvec.cuh). The prefill GEMM lives in gemm.cu.
//
// Scratch layout: matmul_scratch_layout in plan/workspace_sizes.h (act | tile pair | g | u | scale).
#include "../compat.cuh"
#include "../kernels/matvec.cuh"
#include "../kernels/matvec_internal.cuh"
#include "../ops.h"  // swiglu_f32
#include "../ops_matvec.h"

namespace pq::cuda {

namespace {

bool is_float_type(int type) { return type == pq::T_F32 || type == pq::T_F16 || type == pq::T_BF16; }

// The scratch layout (kMultiPassMaxTok, matmul_scratch_layout: plan/workspace_sizes.h), with the current
// prefill tile size. fp16_tiles: the call takes the fp16 fallback (only then is the tile pair carved: the
// model's plan reserves it only for such weights, plan_workspace); matmul_scratch_bytes is the superset.
using Layout = MatmulScratch;
Layout layout(int64_t K, int64_t N, int64_t n_tok, bool fp16_tiles = true) {
    return matmul_scratch_layout(K, N, n_tok, detail::prefill_tile_values(), fp16_tiles);
}

// Whether a prefill call of these weight types takes the fp16 fallback (tile pair) rather than MMQ.
bool takes_fp16_tiles(int64_t n_tok, int64_t K, int type_g, int type_u = -1) {
    if (n_tok <= kMultiPassMaxTok) return false;
    return !detail::mmq_enabled(type_g, K) || (type_u >= 0 && !detail::mmq_enabled(type_u, K));
}

struct ScratchPtrs {
    void* act;
    uint16_t* tile[2];  // the prefill tile pair
    float* g;
    float* u;
    float* scale;
};

ScratchPtrs carve(void* scratch, const Layout& l) {
    char* p = static_cast<char*>(scratch);
    return {p,
            {reinterpret_cast<uint16_t*>(p + l.act), reinterpret_cast<uint16_t*>(p + l.act + l.tile_buf)},
            reinterpret_cast<float*>(p + l.act + l.tile),
            reinterpret_cast<float*>(p + l.act + l.tile + l.g),
            reinterpret_cast<float*>(p + l.act + l.tile + l.g + l.u)};
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Warps per row: enough warps in flight for small N (k/v projections, 48-row alpha/beta), one warp per row
// when N alone fills the GPU.
int warps_per_row(int64_t N, int nchunks) {
    int wpr = N >= 8192 ? 1 : N >= 2048 ? 2 : 4;
    while (wpr > 1 && wpr > nchunks) wpr /= 2;
    return wpr;
}

template <class T, int NT, bool GLU>
cudaError_t launch_mmv_nt(const MmvArgs& a, int64_t grid, cudaStream_t stream) {
    auto* mmv_kernel_nt = mmv_kernel<T, NT, GLU>;  // the name the emulator's node ledger shows
    PQ_LAUNCH_PDL(mmv_kernel_nt, (unsigned)grid, kMmvThreads, 0, stream, a);
    return cudaGetLastError();
}

// One weight (or GLU pair) of a launch: N rows into y (ldy = N).
struct MmvPart {
    const void* Wg;
    const void* Wu;  // GLU only
    int64_t N;
    float* y;
    const float* conv_w = nullptr;  // the conv epilogue (MmvSeg)
    float* conv_state = nullptr;
    float* conv_y = nullptr;
    int conv_k = 0;
};

// One launch: ntok (1..8) tokens of act (quantized or float, per T) against nparts weights of one type and
// K (each a segment of the grid with its own warps per row: matvec.cuh MmvSeg).
// Where an mmv launch also writes its output's Q8_1 (MmvArgs out_*): the buffer of all n_tok tokens.
struct OutQ8 {
    int8_t* qs = nullptr;
    float2* ds = nullptr;
    unsigned* cnt = nullptr;
    const NormTail* norm = nullptr;  // the next layer entry as the epilogue (MmvArgs norm_*); n_tok: the call's
    int64_t n_tok = 0;
};

template <class T, bool GLU>
cudaError_t launch_mmv_parts(const MmvPart* parts, int nparts, int64_t K, const void* act, const float2* act_ds,
                             int ntok, int64_t y_off, const OutQ8& oq, cudaStream_t stream) {
    const int64_t nblk = K / T::kBlockVals;
    MmvArgs a{};
    a.row_bytes = nblk * T::kBlockBytes;
    a.units_per_row = (int)(nblk * T::kUnits);
    a.act = act;
    a.act_ds = act_ds;
    a.act_stride = K;
    a.ntok = ntok;
    a.nseg = nparts;
    a.out_qs = oq.qs ? oq.qs + y_off * parts[0].N : nullptr;
    a.out_ds = oq.qs ? oq.ds + y_off * (parts[0].N / 32) : nullptr;
    a.out_cnt = oq.cnt;
    if (const NormTail* nt = oq.norm) {  // one part (checked by the caller); rows of this launch's tokens
        const int64_t N = parts[0].N;
        a.norm_x = nt->x + y_off * N;
        a.norm_w = nt->w;
        a.norm_y = nt->out + y_off * N;
        a.norm_qs = nt->q8 ? static_cast<int8_t*>(nt->q8) + y_off * N : nullptr;
        a.norm_ds = nt->q8 ? reinterpret_cast<float2*>(static_cast<char*>(nt->q8) + q8_values_bytes(N, oq.n_tok)) +
                                 y_off * (N / 32)
                           : nullptr;
        a.norm_cnt = nt->counter;
        a.norm_eps = nt->eps;
    }
    int64_t grid = 0;
    for (int i = 0; i < nparts; ++i) {
        MmvSeg& sg = a.seg[i];
        const int64_t N = parts[i].N;
        sg.w[0] = static_cast<const uint8_t*>(parts[i].Wg);
        sg.w[1] = static_cast<const uint8_t*>(GLU ? parts[i].Wu : parts[i].Wg);
        sg.wend[0] = sg.w[0] + N * a.row_bytes;
        sg.wend[1] = sg.w[1] + N * a.row_bytes;
        sg.nrows = N;
        sg.y = parts[i].y + y_off * N;
        sg.ldy = N;
        sg.wpr = warps_per_row(N, (a.units_per_row + 31) / 32);
        sg.blk0 = (unsigned)grid;
        sg.conv_w = parts[i].conv_w;
        sg.conv_state = parts[i].conv_state;
        sg.conv_y = parts[i].conv_y ? parts[i].conv_y + y_off * N : nullptr;
        sg.conv_k = parts[i].conv_k;
        grid += (N + kMmvWarps / sg.wpr - 1) / (kMmvWarps / sg.wpr);
    }
    if (grid > INT_MAX) return cudaErrorInvalidValue;
    if (ntok <= 1) return launch_mmv_nt<T, 1, GLU>(a, grid, stream);
    if (ntok <= 2) return launch_mmv_nt<T, 2, GLU>(a, grid, stream);
    if (ntok <= 4) return launch_mmv_nt<T, 4, GLU>(a, grid, stream);
    return launch_mmv_nt<T, 8, GLU>(a, grid, stream);
}

}  // namespace

namespace detail {
size_t quantize_act_ds_offset(int64_t K, int64_t n_tok) { return q8_values_bytes(K, n_tok); }

cudaError_t quantize_act(const float* x, int64_t K, int64_t n_tok, void* q8, cudaStream_t stream) {
    if (K <= 0 || K % 32 != 0 || n_tok < 0) return cudaErrorInvalidValue;
    auto* qs = static_cast<int8_t*>(q8);
    auto* ds = reinterpret_cast<float2*>(static_cast<char*>(q8) + q8_values_bytes(K, n_tok));
    for (int64_t t0 = 0; t0 < n_tok; t0 += 65535) {
        const int64_t nt = n_tok - t0 < 65535 ? n_tok - t0 : 65535;
        const dim3 grid((unsigned)((K + kQuantActBlock - 1) / kQuantActBlock), (unsigned)nt);
        PQ_LAUNCH(quantize_act_kernel, grid, kQuantActBlock, 0, stream, x + t0 * K, qs + t0 * K, ds + t0 * (K / 32), K);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}
}  // namespace detail

namespace {

// Quantizes x (n_tok rows of K) to Q8_1 into q8 (QAct layout) when `type` needs it.
cudaError_t prepare_act(int type, const float* x, int64_t K, int64_t n_tok, void* q8, cudaStream_t stream) {
    return is_float_type(type) ? cudaSuccess : detail::quantize_act(x, K, n_tok, q8, stream);
}

// All tokens through the decode kernel, kMmvMaxTok per launch, every part in the same launches.
// Activations must be prepared (prepare_act). Wu != nullptr: fused SwiGLU (same type for both weights).
cudaError_t mmv_passes_parts(int type, const MmvPart* parts, int nparts, int64_t K, const float* x, const void* q8,
                             int64_t n_tok, cudaStream_t stream, const OutQ8& oq = OutQ8{}) {
    if (nparts < 1 || nparts > kMmvMaxSeg || ((oq.qs || oq.norm) && (nparts != 1 || parts[0].N % 32 != 0)) ||
        (oq.qs && oq.norm))
        return cudaErrorInvalidValue;
    const bool glu = parts[0].Wu != nullptr;
    return mv::dispatch_type(type, cudaErrorInvalidValue, [&](auto t) {
        using T = decltype(t);
        for (int64_t t0 = 0; t0 < n_tok; t0 += kMmvMaxTok) {
            const int nt = (int)(n_tok - t0 < kMmvMaxTok ? n_tok - t0 : kMmvMaxTok);
            const void* act = T::kFloatAct ? static_cast<const void*>(x + t0 * K)
                                           : static_cast<const void*>(static_cast<const int8_t*>(q8) + t0 * K);
            const auto* ds0 =
                reinterpret_cast<const float2*>(static_cast<const char*>(q8) + q8_values_bytes(K, n_tok));
            const float2* ds = ds0 + t0 * (K / 32);
            const cudaError_t e = glu ? launch_mmv_parts<T, true>(parts, nparts, K, act, ds, nt, t0, oq, stream)
                                      : launch_mmv_parts<T, false>(parts, nparts, K, act, ds, nt, t0, oq, stream);
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

cudaError_t mmv_passes(int type, const void* Wg, const void* Wu, int64_t K, int64_t N, const float* x,
                       const void* q8, int64_t n_tok, float* y, cudaStream_t stream) {
    const MmvPart p{Wg, Wu, N, y};
    return mmv_passes_parts(type, &p, 1, K, x, q8, n_tok, stream);
}

cudaError_t check_common(int type, const void* W, int64_t K, int64_t N, const float* x, int64_t n_tok,
                         const float* y, const void* scratch) {
    if (!detail::matmul_type_ok(type, K, nullptr) || N < 0 || n_tok < 0 || N > INT_MAX) return cudaErrorInvalidValue;
    if (N == 0 || n_tok == 0) return cudaSuccess;
    if (!W || !x || !y || !aligned16(W) || !aligned16(x) || !scratch || !aligned16(scratch))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

}  // namespace

size_t matmul_scratch_bytes(int type, int64_t K, int64_t N, int64_t n_tok) {
    if (!detail::matmul_type_ok(type, K, nullptr) || N <= 0 || n_tok <= 0) return 0;
    return layout(K, N, n_tok).total;
}

cudaError_t matmul(int type, const void* W, int64_t K, int64_t N, const float* x, int64_t n_tok, float* y,
                   void* scratch, cudaStream_t stream) {
    cudaError_t e = check_common(type, W, K, N, x, n_tok, y, scratch);
    if (e != cudaSuccess || N == 0 || n_tok == 0) return e;
    const Layout l = layout(K, N, n_tok, takes_fp16_tiles(n_tok, K, type));
    const ScratchPtrs s = carve(scratch, l);
    if (n_tok > kMultiPassMaxTok && detail::mmq_enabled(type, K)) {  // int8 tensor cores (mmq.cu)
        e = detail::quantize_act(x, K, n_tok, s.act, stream);
        return e != cudaSuccess ? e : detail::mmq(type, W, K, N, s.act, n_tok, y, N, stream);
    }
    if (n_tok > kMultiPassMaxTok) {
        auto* x16 = static_cast<uint16_t*>(s.act);
        const bool split = detail::prefill_split_act(type);
        e = detail::f32_to_f16_rows(x, x16, s.scale, n_tok, K, split, stream);
        if (e != cudaSuccess) return e;
        e = detail::gemm_prefill(type, W, K, N, x16, n_tok, split, y, s.tile, stream);
        if (e == cudaSuccess) return detail::scale_rows(y, s.scale, n_tok, N, N, stream);
        if (e != cudaErrorNotSupported) return e;
        // no cuBLAS in this build: decode kernel passes (correct, slower)
    }
    e = prepare_act(type, x, K, n_tok, s.act, stream);
    if (e != cudaSuccess) return e;
    return mmv_passes(type, W, nullptr, K, N, x, s.act, n_tok, y, stream);
}

cudaError_t matmul_swiglu(int type_g, const void* Wg, int type_u, const void* Wu, int64_t K, int64_t N,
                          const float* x, int64_t n_tok, float* y, void* scratch, cudaStream_t stream) {
    cudaError_t e = check_common(type_g, Wg, K, N, x, n_tok, y, scratch);
    if (e == cudaSuccess) e = check_common(type_u, Wu, K, N, x, n_tok, y, scratch);
    if (e != cudaSuccess || N == 0 || n_tok == 0) return e;
    const Layout l = layout(K, N, n_tok, takes_fp16_tiles(n_tok, K, type_g, type_u));
    const ScratchPtrs s = carve(scratch, l);
    if (n_tok > kMultiPassMaxTok && detail::mmq_enabled(type_g, K) && detail::mmq_enabled(type_u, K)) {
        e = detail::quantize_act(x, K, n_tok, s.act, stream);  // once for both weights
        if (e == cudaSuccess) e = detail::mmq(type_g, Wg, K, N, s.act, n_tok, s.g, N, stream);
        if (e == cudaSuccess) e = detail::mmq(type_u, Wu, K, N, s.act, n_tok, s.u, N, stream);
        return e != cudaSuccess ? e : swiglu_f32(s.g, s.u, y, (int)N, (int)n_tok, N, N, N, stream);
    }
    if (n_tok > kMultiPassMaxTok) {
        auto* x16 = static_cast<uint16_t*>(s.act);
        const bool split = detail::prefill_split_act(type_g) || detail::prefill_split_act(type_u);
        e = detail::f32_to_f16_rows(x, x16, s.scale, n_tok, K, split, stream);
        if (e != cudaSuccess) return e;
        const detail::PrefillWeight gu[2] = {{type_g, Wg, s.g}, {type_u, Wu, s.u}};
        e = detail::gemm_prefill_n(gu, 2, K, N, x16, n_tok, split, s.tile, stream);
        if (e == cudaSuccess) e = detail::scale_rows(s.g, s.scale, n_tok, N, N, stream);
        if (e == cudaSuccess) e = detail::scale_rows(s.u, s.scale, n_tok, N, N, stream);
        if (e == cudaSuccess) return swiglu_f32(s.g, s.u, y, (int)N, (int)n_tok, N, N, N, stream);
        if (e != cudaErrorNotSupported) return e;
    }
    // Q8_1 activations once for both weights (a float-typed weight reads x directly)
    e = prepare_act(is_float_type(type_g) ? type_u : type_g, x, K, n_tok, s.act, stream);
    if (e != cudaSuccess) return e;
    if (type_g == type_u) return mmv_passes(type_g, Wg, Wu, K, N, x, s.act, n_tok, y, stream);
    e = mmv_passes(type_g, Wg, nullptr, K, N, x, s.act, n_tok, s.g, stream);
    if (e == cudaSuccess) e = mmv_passes(type_u, Wu, nullptr, K, N, x, s.act, n_tok, s.u, stream);
    if (e != cudaSuccess) return e;
    return swiglu_f32(s.g, s.u, y, (int)N, (int)n_tok, N, N, N, stream);
}

bool matmul_reads_q8(int type) { return detail::matmul_type_ok(type, 256, nullptr) && !is_float_type(type); }

cudaError_t quantize_act_q8(const float* x, int64_t K, int64_t n_tok, void* q8, cudaStream_t stream) {
    if (n_tok > kMultiPassMaxTok || !x || !q8) return cudaErrorInvalidValue;
    return detail::quantize_act(x, K, n_tok, q8, stream);
}

cudaError_t matmul_prepared(int type, const MatmulPart* parts, int nparts, int64_t K, const float* x, const void* q8,
                            int64_t n_tok, cudaStream_t stream, const NormTail* tail) {
    static_assert(kMatmulMaxParts == kMmvMaxSeg, "one launch serves every part");
    if (nparts < 1 || nparts > kMatmulMaxParts || n_tok < 0 || n_tok > kMultiPassMaxTok) return cudaErrorInvalidValue;
    MmvPart mp[kMatmulMaxParts];
    for (int i = 0; i < nparts; ++i) {
        const cudaError_t e = check_common(type, parts[i].W, K, parts[i].N, x, n_tok, parts[i].y, x);
        if (e != cudaSuccess) return e;
        if (parts[i].N == 0) return cudaErrorInvalidValue;
        mp[i] = MmvPart{parts[i].W, nullptr, parts[i].N, parts[i].y};
        if (parts[i].conv_w) {
            if (parts[i].conv_k < 1 || parts[i].conv_k > 8 || !parts[i].conv_state || !parts[i].conv_y)
                return cudaErrorInvalidValue;
            mp[i].conv_w = parts[i].conv_w;
            mp[i].conv_state = parts[i].conv_state;
            mp[i].conv_y = parts[i].conv_y;
            mp[i].conv_k = parts[i].conv_k;
        }
    }
    OutQ8 oq;
    if (tail) {
        const int64_t N = parts[0].N;
        if (nparts != 1 || N % 32 != 0 || N > INT_MAX || !tail->x || !tail->out || !tail->counter ||
            (tail->q8 && !aligned16(tail->q8)) || parts[0].conv_w)
            return cudaErrorInvalidValue;
        oq.norm = tail;
        oq.n_tok = n_tok;
    }
    if (n_tok == 0) return cudaSuccess;
    if (!is_float_type(type) && (!q8 || !aligned16(q8))) return cudaErrorInvalidValue;
    return mmv_passes_parts(type, mp, nparts, K, x, q8, n_tok, stream, oq);
}

cudaError_t matmul_swiglu_prepared(int type_g, const void* Wg, int type_u, const void* Wu, int64_t K, int64_t N,
                                   const float* x, const void* q8, int64_t n_tok, float* y, void* scratch,
                                   cudaStream_t stream, void* y_q8, unsigned* y_q8_counters) {
    cudaError_t e = check_common(type_g, Wg, K, N, x, n_tok, y, scratch);
    if (e == cudaSuccess) e = check_common(type_u, Wu, K, N, x, n_tok, y, scratch);
    if (e != cudaSuccess || N == 0 || n_tok == 0) return e;
    if (n_tok > kMultiPassMaxTok) return cudaErrorInvalidValue;
    if ((matmul_reads_q8(type_g) || matmul_reads_q8(type_u)) && (!q8 || !aligned16(q8))) return cudaErrorInvalidValue;
    if (y_q8 && (N % 32 != 0 || !y_q8_counters)) return cudaErrorInvalidValue;
    if (type_g == type_u) {
        OutQ8 oq;
        if (y_q8) {
            oq.qs = static_cast<int8_t*>(y_q8);
            oq.ds = reinterpret_cast<float2*>(static_cast<char*>(y_q8) + q8_values_bytes(N, n_tok));
            oq.cnt = y_q8_counters;
        }
        const MmvPart p{Wg, Wu, N, y};
        return mmv_passes_parts(type_g, &p, 1, K, x, q8, n_tok, stream, oq);
    }
    const ScratchPtrs s = carve(scratch, layout(K, N, n_tok, false));  // n_tok <= kMultiPassMaxTok: no tiles
    e = mmv_passes(type_g, Wg, nullptr, K, N, x, q8, n_tok, s.g, stream);
    if (e == cudaSuccess) e = mmv_passes(type_u, Wu, nullptr, K, N, x, q8, n_tok, s.u, stream);
    if (e == cudaSuccess) e = swiglu_f32(s.g, s.u, y, (int)N, (int)n_tok, N, N, N, stream);
    if (e == cudaSuccess && y_q8) e = quantize_act_q8(y, N, n_tok, y_q8, stream);
    return e;
}

}  // namespace pq::cuda
