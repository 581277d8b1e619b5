// matvec.cuh: quantized matrix-vector products for decode (n_tok <= 8 per launch), ggml's mmvq design.
//
//   y[t][r] = sum_k W[r][k] * x[t][k]   (GLU: y[t][r] = silu(Wg x_t)[r] * (Wu x_t)[r])
//
// Work split. A CTA is kWarps = 4 warps; `wpr` warps (1, 2 or 4, chosen by the launcher) share one row,
// so a CTA serves 4 / wpr rows. A row is cut into chunks of 32 units (a unit = 32 values, 8 for float
// weights: matvec_types.cuh); warp `part` of a row takes chunks part, part + wpr, ... Lane l of a warp
// handles unit l of the chunk for every token of the launch, so each weight byte is read by exactly one
// lane of one warp, once per launch, whatever the number of tokens (1..8): the weight row is read once
// and serves all columns.
//
// Weight loads. A chunk is a contiguous byte range of the row (4 blocks of a 256-value type, 32 blocks of
// a 32-value type). The warp copies it into its shared-memory stage with coalesced 128-bit loads of
// 16-byte-aligned pieces (lane i loads pieces i, i + 32, ...: consecutive lanes, consecutive 16 bytes),
// then each lane decodes its unit from shared memory. The stage starts at the 16-byte boundary below the
// chunk, so types whose blocks are not 16-byte multiples (Q6_K 210 bytes, Q8_0 34, ...) still get full
// 128-bit loads; the up to 15 bytes before/after a chunk belong to the neighbouring chunk/row and are
// re-read from L1/L2, never from DRAM twice in practice. A piece that would run past the end of the
// tensor is read with 16-bit loads instead, so nothing outside W is touched (W must be 16-byte aligned).
// The next chunk's pieces are loaded into registers before the current chunk is computed (register
// double buffering), so every warp keeps ~0.6-1 KB of weight loads in flight.
// On the GPU the pieces are read with ld.global.nc.L1::no_allocate (streamed, keeps L1 for the
// activations); the portable twin is __ldg, which the emulated tests run.
//
// Activations. Quantized types read Q8_1 values (quantize_act_kernel below: d = amax/127 per 32 values,
// the arithmetic of quantize_q8_1.cuh) in a split layout -- int8 values contiguous, (d, s) floats apart
// (matvec_types.cuh, QAct) -- so each lane fetches them with 128-bit loads; they come from L1/L2
// (n_tok * K * 1.25 bytes, re-read by every warp). Float types read the float rows. Integer dot products
// are __dp4a; see matvec_types.cuh for each type's arithmetic.
//
// Bytes moved per launch (DRAM): N * row_bytes of weights (once) + n_tok * K * 1.25 bytes of activations
// (float weights: n_tok * K * 4), L2-resident after the first SM reads them, + n_tok * N * 4 bytes of
// output. The quantization launch reads n_tok * K * 4 and writes n_tok * K * 1.25 bytes. For Qwen3.6-27B
// shapes the weights are > 99% of the traffic.
//
// Expected throughput on an RTX 4090 (1008 GB/s): with 7-9 CTAs of 4 warps resident per SM (56-72 registers,
// Q4_K/Q6_K, n_tok <= 2) and 576-1712 B of weight loads in flight per warp (SASS: gpu_roofline.md), it should stream
// weights at 80-90% of peak for 1-2 tokens: a 5120 x 17408 Q4_K ffn_down (50 MB) in ~60 us, the whole
// Qwen3.6-27B Q4_K_M weight set (~15.8 GB without the gathered token_embd) in ~19 ms, i.e. a ~50 token/s
// matmul ceiling for decode. Per token and 32-unit chunk a warp issues ~3 activation loads per lane
// (2 x 128-bit + scales, ~18 L1 wavefronts for Q4_K, ~36 for Q6_K) against ~9 wavefronts of weight
// staging, so 8 tokens stay within L1 bandwidth (~128 B/clk/SM) at roughly 60-80% of DRAM peak.
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"
#include "matvec_types.cuh"
#include "norm_q8.cuh"
#include "q8_act.cuh"
#include "reduce.cuh"

namespace pq::cuda {

constexpr int kMmvWarps = 4;
constexpr int kMmvThreads = 32 * kMmvWarps;
constexpr int kMmvMaxTok = 8;  // tokens served by one launch (one read of the weights)

// One weight (or GLU pair) of a launch and the CTAs [blk0, next segment's blk0) that serve it. A launch
// holds up to kMmvMaxSeg weights of one type and K that read the same activations (the DeltaNet layer's
// gate, beta and alpha projections: one launch instead of three); each keeps its own warps-per-row, so
// its rows are summed exactly as by a launch of its own.
constexpr int kMmvMaxSeg = 4;
struct MmvSeg {
    const uint8_t* w[2];     // gate (or the only) weight, up weight (GLU)
    const uint8_t* wend[2];  // one past the last byte of each weight tensor
    int64_t nrows;
    float* y;                // y[t * ldy + r]
    int64_t ldy;
    int wpr;                 // warps per row: 1, 2 or 4
    unsigned blk0;           // first CTA of this segment
    // Optional epilogue (non-GLU): row r of the output is channel r of a causal depthwise conv + SiLU over
    // the launch's tokens, in conv1d_silu_kernel's arithmetic (conv1d.cuh): taps conv_w [nrows][conv_k],
    // state conv_state [nrows][conv_k - 1] read and updated, output conv_y[t * ldy + r]. The DeltaNet
    // in-projection's conv without a launch of its own (each channel is one warp's row: no races).
    const float* conv_w;
    float* conv_state;
    float* conv_y;
    int conv_k;
};

struct MmvArgs {
    MmvSeg seg[kMmvMaxSeg];
    int nseg;                // 1..kMmvMaxSeg
    int64_t row_bytes;
    int units_per_row;
    const void* act;         // int8 Q8_1 values (quantized types) or floats (float types), K per token
    const float2* act_ds;    // (d, s) per 32 values, K / 32 per token (quantized types)
    int64_t act_stride;      // K
    int ntok;                // tokens of this launch, 1..NT
    // Optional (one segment, nrows % 32 == 0): y also as the next matmul's Q8_1 activations (the FFN's
    // down-projection input). The CTA that completes a group of 32 rows quantizes it: out_cnt[group]
    // counts the group's finished CTAs and is reset to 0 by the last one (zero before the first launch).
    int8_t* out_qs;          // [t * nrows + r]
    float2* out_ds;          // [t * nrows / 32 + r / 32]
    unsigned* out_cnt;       // [nrows / 32]
    // Optional (one segment, not with out_qs): the next layer entry as the epilogue -- per token row of y,
    // norm_x += y, norm_y = rms_norm(norm_x) * norm_w, its Q8_1 into norm_qs/norm_ds (may be null), in
    // add_rms_norm_q8_kernel<norm_q8_block(nrows)>'s arithmetic (norm_q8.cuh), by the grid's last CTA to
    // finish: norm_cnt counts the finished CTAs and is reset to 0 by the last one (zero before the first
    // launch). The residual add + RMSNorm + Q8_1 after the out and down projections without a launch of
    // their own (issue 10: 128 latency-bound nodes fewer per 27B token).
    float* norm_x;           // [t * nrows + r]
    const float* norm_w;
    float* norm_y;           // [t * nrows + r]
    int8_t* norm_qs;         // [t * nrows + r]
    float2* norm_ds;         // [t * nrows / 32 + r / 32]
    unsigned* norm_cnt;
    float norm_eps;
};

namespace mv {

// 16 bytes of weights at p (16-byte aligned), streamed past L1 on the GPU.
__device__ __forceinline__ uint4 ld_weights16(const uint8_t* p) {
#if PQ_HAVE_PTX
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#else
    return __ldg(reinterpret_cast<const uint4*>(p));
#endif
}

// The 16-byte piece at p (aligned) when it may cross `end` (exclusive; end - p is even): 16-bit loads of
// the bytes before end, zeros after.
__device__ __forceinline__ uint4 ld_weights16_tail(const uint8_t* p, const uint8_t* end) {
    uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        if (p + 2 * k + 2 <= end)
            w[k >> 1] |= (uint32_t)__ldg(reinterpret_cast<const uint16_t*>(p) + k) << (16 * (k & 1));
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

template <class T>
struct Stage {
    static constexpr int kChunkBlocks = 32 / T::kUnits;
    static constexpr int kChunkBytes = kChunkBlocks * T::kBlockBytes;
    // pieces of a chunk: its start is even, so at most 14 bytes before it share its first piece
    static constexpr int kMaxPieces = (14 + kChunkBytes + 15) / 16;
    static constexpr int kPiecesPerLane = (kMaxPieces + 31) / 32;
    static constexpr int kStagePieces = 32 * kPiecesPerLane;
};

// Loads the pieces of chunk c of the row at `row` into regs (lane's share).
template <class T>
__device__ __forceinline__ void fetch_chunk(uint4 (&regs)[Stage<T>::kPiecesPerLane], const uint8_t* row, int c,
                                            int units_per_row, const uint8_t* wend, int lane) {
    constexpr int kChunkBlocks = Stage<T>::kChunkBlocks;
    const int nblk_row = units_per_row / T::kUnits;
    const int b0 = c * kChunkBlocks;
    const int b1 = min(b0 + kChunkBlocks, nblk_row);
    const uint8_t* start = row + (int64_t)b0 * T::kBlockBytes;
    const uint8_t* end = row + (int64_t)b1 * T::kBlockBytes;
    const uint8_t* p0 = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(start) & ~(uintptr_t)15);
    const int npieces = (int)((end - p0 + 15) >> 4);
#pragma unroll
    for (int k = 0; k < Stage<T>::kPiecesPerLane; ++k) {
        const int i = lane + 32 * k;
        const uint8_t* p = p0 + 16 * i;
        regs[k] = i >= npieces     ? make_uint4(0u, 0u, 0u, 0u)
                  : p + 16 <= wend ? ld_weights16(p)
                                   : ld_weights16_tail(p, wend);
    }
}

// One channel of conv1d_silu_kernel (conv1d.cuh) over n <= NT tokens xs, same sums in the same order: y
// = silu(sum_j X[t + j] w[j]) over X = [state | xs], then state = X[n .. n + K - 2]. K <= 8.
template <int NT>
__device__ __forceinline__ void conv_silu_row(const float (&xs)[NT], int n, int K, const float* w, float* state,
                                              float* y, int64_t ldy) {
    float hist[8], old[8], wr[8];
    for (int j = 0; j < K; ++j) wr[j] = w[j];
    for (int j = 0; j < K - 1; ++j) old[j] = hist[j] = state[j];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n) break;
        hist[K - 1] = xs[t];
        float s = 0.0f;
        for (int j = 0; j < K; ++j) s += hist[j] * wr[j];
        y[t * ldy] = s / (1.0f + expf(-s));
        for (int j = 0; j < K - 1; ++j) hist[j] = hist[j + 1];
    }
    for (int j = 0; j < K - 1; ++j) {
        const int xi = n + j;  // X index of the new state's value j
        float v = 0.0f;
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (xi - (K - 1) == t) v = xs[t];
        if (xi < K - 1) v = old[xi];
        state[j] = v;
    }
}

// silu(g) * u as swiglu_f32_kernel (elementwise.cuh) computes it.
__device__ __forceinline__ float silu_mul(float g, float u) {
    return g / (1.0f + expf(-g)) * u;
}

}  // namespace mv

// Activations to Q8_1 in the split layout of mv::QAct: qs[row * K + i], ds[row * (K / 32) + i / 32] =
// (fp16(d), fp16(s)) widened to float. Same arithmetic as quantize_q8_1_kernel (quantize_q8_1.cuh), hence
// bit-identical with ggml's quantize_row_q8_1_ref. K % 32 == 0. Grid: (ceil(K / 256), rows <= 65535).
constexpr int kQuantActBlock = 256;

__global__ void __launch_bounds__(kQuantActBlock)
    quantize_act_kernel(const float* __restrict__ x, int8_t* __restrict__ qs, float2* __restrict__ ds, int64_t K) {
    const int64_t row = blockIdx.y;
    const int64_t i = (int64_t)blockIdx.x * kQuantActBlock + threadIdx.x;
    if (i >= K) return;  // whole warps leave together (K % 32 == 0)
    q8_act_store(x[row * K + i], i, qs + row * K, ds + row * (K / 32));
}

// PDL (sm_90+): the warp's first weight chunk (each GLU weight's) prefetched into L2 before the dependency
// wait -- weights never depend on the predecessor kernel, so their DRAM latency overlaps its tail instead
// of following it. prefetch.global.L2 is a hint, not a load: nothing is read into a register and nothing
// written, so pdl.cuh's rule (no global access before the wait) holds. One prefetch per 128-byte line per
// lane. Empty on sm_86/89 and in the emulator (no PDL there: the kernel starts after its predecessor).
template <class T, bool GLU>
__device__ __forceinline__ void pq_prefetch_mmv_weights(const MmvArgs& args) {
#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 900
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int si = 0;
    for (int i = 1; i < args.nseg; ++i)
        if (blockIdx.x >= args.seg[i].blk0) si = i;
    const MmvSeg& sg = args.seg[si];
    const int64_t row = (int64_t)(blockIdx.x - sg.blk0) * (kMmvWarps / sg.wpr) + warp / sg.wpr;
    const int part = warp % sg.wpr;  // the warp's first chunk
    const int64_t chunk = mv::Stage<T>::kChunkBytes;
    const int64_t off = (int64_t)part * chunk + 128 * lane;
    const int64_t end = min((int64_t)(part + 1) * chunk, args.row_bytes);
    if (row >= sg.nrows || off >= end) return;
#pragma unroll
    for (int g = 0; g < (GLU ? 2 : 1); ++g)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(sg.w[g] + row * args.row_bytes + off));
#else
    (void)args;
#endif
}

// Grid: ceil(nrows / (kMmvWarps / wpr)) CTAs of kMmvThreads.
template <class T, int NT, bool GLU>
__global__ void __launch_bounds__(kMmvThreads) mmv_kernel(const MmvArgs args) {
    pq_prefetch_mmv_weights<T, GLU>(args);  // PDL: an L2 hint on the weights only (no access: see above)
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    using St = mv::Stage<T>;
    constexpr int NW = GLU ? 2 : 1;
    __shared__ uint4 stage[kMmvWarps][NW][St::kStagePieces];
    __shared__ float red[kMmvWarps][NW][NT];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int si = 0;  // this CTA's segment (uniform over the block)
    for (int i = 1; i < args.nseg; ++i)
        if (blockIdx.x >= args.seg[i].blk0) si = i;
    const MmvSeg& sg = args.seg[si];
    const int wpr = sg.wpr;
    const int64_t row = (int64_t)(blockIdx.x - sg.blk0) * (kMmvWarps / wpr) + warp / wpr;
    const int part = warp % wpr;

    float acc[NW][NT];
#pragma unroll
    for (int g = 0; g < NW; ++g)
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[g][t] = 0.0f;

    if (row < sg.nrows) {  // uniform per warp
        const int upr = args.units_per_row;
        const int nchunks = (upr + 31) / 32;
        const uint8_t* wrow[NW];
#pragma unroll
        for (int g = 0; g < NW; ++g) wrow[g] = sg.w[g] + row * args.row_bytes;

        uint4 regs[NW][St::kPiecesPerLane];
        int c = part;
        if (c < nchunks) {
#pragma unroll
            for (int g = 0; g < NW; ++g) mv::fetch_chunk<T>(regs[g], wrow[g], c, upr, sg.wend[g], lane);
        }
        for (; c < nchunks; c += wpr) {
#pragma unroll
            for (int g = 0; g < NW; ++g)
#pragma unroll
                for (int k = 0; k < St::kPiecesPerLane; ++k) stage[warp][g][lane + 32 * k] = regs[g][k];
            __syncwarp();
            if (c + wpr < nchunks) {  // next chunk's loads in flight while this one is computed
#pragma unroll
                for (int g = 0; g < NW; ++g) mv::fetch_chunk<T>(regs[g], wrow[g], c + wpr, upr, sg.wend[g], lane);
            }
            const int unit = c * 32 + lane;
            if (unit < upr) {
                const int64_t ib = unit / T::kUnits;  // block index within the row
                const int u = unit % T::kUnits;
                const int64_t blk_in_chunk = ib - (int64_t)c * St::kChunkBlocks;
                typename T::W w[NW];
#pragma unroll
                for (int g = 0; g < NW; ++g) {
                    const uintptr_t start =
                        reinterpret_cast<uintptr_t>(wrow[g]) + (uintptr_t)((int64_t)c * St::kChunkBytes);
                    const uint8_t* sbase = reinterpret_cast<const uint8_t*>(&stage[warp][g][0]) + (start & 15);
                    T::load_w(w[g], sbase + blk_in_chunk * T::kBlockBytes, u);
                }
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    if (t < args.ntok) {
                        typename T::A a;
                        if constexpr (T::kFloatAct) {
                            T::load_a(a, static_cast<const float*>(args.act) + t * args.act_stride, ib, u);
                        } else {
                            const mv::QAct x{static_cast<const int8_t*>(args.act) + t * args.act_stride,
                                             args.act_ds + t * (args.act_stride / 32)};
                            T::load_a(a, x, ib, u);
                        }
#pragma unroll
                        for (int g = 0; g < NW; ++g) acc[g][t] += T::dot(w[g], a);
                    }
                }
            }
            __syncwarp();  // the stage is overwritten by the next chunk
        }
    }

#pragma unroll
    for (int g = 0; g < NW; ++g)
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[g][t] = warp_sum(acc[g][t]);

    if (wpr > 1) {  // uniform over the block
        if (lane == 0) {
#pragma unroll
            for (int g = 0; g < NW; ++g)
#pragma unroll
                for (int t = 0; t < NT; ++t) red[warp][g][t] = acc[g][t];
        }
        __syncthreads();
        if (part == 0 && row < sg.nrows && lane < args.ntok) {
            float s[NW];
#pragma unroll
            for (int g = 0; g < NW; ++g) {
                s[g] = 0.0f;
                for (int p = 0; p < wpr; ++p) s[g] += red[warp + p][g][lane];
            }
            sg.y[lane * sg.ldy + row] = GLU ? mv::silu_mul(s[0], s[NW - 1]) : s[0];
        }
    } else if (row < sg.nrows && lane == 0) {
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < args.ntok) sg.y[t * sg.ldy + row] = GLU ? mv::silu_mul(acc[0][t], acc[NW - 1][t]) : acc[0][t];
        }
    }

    if constexpr (!GLU) {
        if (sg.conv_w && row < sg.nrows && part == 0 && lane == 0) {
            float xs[NT];  // this row's outputs, as written above
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (wpr > 1) {
                    xs[t] = 0.0f;
                    for (int p = 0; p < wpr; ++p) xs[t] += red[warp + p][0][t];
                } else {
                    xs[t] = acc[0][t];
                }
            }
            mv::conv_silu_row(xs, args.ntok, sg.conv_k, sg.conv_w + row * sg.conv_k,
                              sg.conv_state + row * (sg.conv_k - 1), sg.conv_y + row, sg.ldy);
        }
    }

    if (args.norm_x) {  // uniform over the grid
        // The grid's last CTA to finish runs the norm (the threadfence reduction of the group quantizer
        // below, over the whole grid): every row of y is written and fenced before its CTA counts.
        __shared__ unsigned last_cta;
        __shared__ float norm_scratch[32];
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            last_cta = atomicAdd(args.norm_cnt, 1u) == gridDim.x - 1;
            if (last_cta) *args.norm_cnt = 0u;  // ready for the next launch (every CTA has counted)
        }
        __syncthreads();
        if (last_cta) {
            __threadfence();
            const int K = (int)sg.nrows;
            for (int t = 0; t < args.ntok; ++t) {
                const volatile float* add = sg.y + t * sg.ldy;  // written by other CTAs: not from this SM's L1
                int8_t* qs = args.norm_qs ? args.norm_qs + (int64_t)t * K : nullptr;
                float2* ds = args.norm_qs ? args.norm_ds + (int64_t)t * (K / 32) : nullptr;
                float* nx = args.norm_x + (int64_t)t * K;
                float* ny = args.norm_y + (int64_t)t * K;
                if (norm_q8_block(K) == 256)
                    add_rms_norm_q8_row<256, kMmvThreads>(nx, add, args.norm_w, ny, qs, ds, K, args.norm_eps, norm_scratch);
                else
                    add_rms_norm_q8_row<32, kMmvThreads>(nx, add, args.norm_w, ny, qs, ds, K, args.norm_eps, norm_scratch);
            }
        }
    }

    if (args.out_qs) {  // uniform over the grid
        // The last CTA of a 32-row group to finish quantizes the group (the CUDA guide's threadfence
        // reduction: writes fenced before the count, the counted-last reader after it).
        __shared__ unsigned last_of_group;
        const int rpc = kMmvWarps / wpr;  // rows per CTA: divides 32, so a CTA lies in one group
        const int64_t r0 = (int64_t)(blockIdx.x - sg.blk0) * rpc;
        const int64_t grp = r0 / 32;
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            const unsigned per = (unsigned)(32 / rpc);
            last_of_group = atomicAdd(&args.out_cnt[grp], 1u) == per - 1;
            if (last_of_group) args.out_cnt[grp] = 0u;  // ready for the next launch (the group is complete)
        }
        __syncthreads();
        if (last_of_group && warp == 0) {
            __threadfence();
            const volatile float* yv = sg.y;  // written by other CTAs: not from this SM's L1
            const int64_t i = grp * 32 + lane;
            for (int t = 0; t < args.ntok; ++t)
                q8_act_store(yv[t * sg.ldy + i], i, args.out_qs + (int64_t)t * sg.nrows,
                             args.out_ds + (int64_t)t * (sg.nrows / 32));
        }
    }
}

}  // namespace pq::cuda
