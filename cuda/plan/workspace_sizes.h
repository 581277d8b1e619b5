// workspace_sizes.h: the byte counts of every device buffer the CUDA backend allocates besides weights
// and states -- each kernel family's scratch layout, the model's activation buffers, the sampler's
// workspace -- and the kernel constants they depend on.
//
// Host-only and free of CUDA: the launchers (cuda/launch/*.cu) carve their scratch by these layouts,
// the CUDA model sizes its workspace with plan_workspace(), and pyqwen._core includes the same header to
// plan GPU memory on a machine without a GPU (device_plan.h, `pyqwen info --gpu-mem`). One formula each,
// nothing mirrored.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "config.h"
#include "formats.h"

namespace pq::cuda {

// cuBLAS's workspace, set explicitly by blas_init (cuda/blas.h) before the memory plan is made: the size
// cuBLAS itself picks by default on Ada/Hopper/Blackwell (32 MiB), allocated once instead of lazily.
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

constexpr size_t kAlign = 256;  // every carved buffer starts on a 256-byte boundary
inline size_t align_up(size_t x, size_t a = kAlign) { return (x + a - 1) / a * a; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t m) { return cdiv(a, m) * m; }

// A bump allocator over one allocation: offsets first, then one cudaMalloc of .size bytes.
struct Carver {
    size_t size = 0;
    size_t take(size_t bytes) {
        const size_t off = size;
        size = align_up(size + bytes);
        return off;
    }
};

// ---- matmul family (launch/matvec.cu, gemm.cu) --------------------------------------------------------
//   act   decode: Q8_1 activations, n_tok * K int8 values then n_tok * K/32 (d, s) float pairs;
//         prefill: max(fp16 x as hi rows then lo rows, the Q8_1 layout) (the latter for the no-cuBLAS
//         fallback; the lo rows are written for float weights only, kernels/gemm.cuh)
//   tile  prefill only: two buffers (tile_buf bytes each) of prefill_tile_rows(K, N) * K fp16 values
//         (dequantized weights; tile i+1 is written into one while the GEMM reads tile i from the other)
//   g, u  n_tok * N floats each: the two projections of matmul_swiglu when they are not fused
//   scale prefill only: n_tok floats, the power-of-two scale of each fp16 activation row (kernels/gemm.cuh)

constexpr int64_t kMultiPassMaxTok = 16;             // n_tok <= this: decode (mmv) kernel passes
constexpr int64_t kTileValues = int64_t(16) << 20;  // 16M fp16 values = 32 MB per prefill tile buffer (x2)

// Rows per tile: the whole matrix when it fits one buffer (one tile, one GEMM over every row), else as many
// rows (a multiple of 64) as a buffer holds.

inline int64_t prefill_tile_rows(int64_t K, int64_t N, int64_t tile_values = kTileValues) {
    int64_t r = tile_values / K / 64 * 64;
    if (r < 64) r = 64;
    return r < N ? r : N;
}

// K granularity the matmul kernels need for a weight type (0: not a matmul type).
inline int matmul_k_granularity(int type) {
    switch (type) {
        case T_F32: case T_F16: case T_BF16: return 8;
        case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: case T_IQ4_NL: return 32;
        case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_XS: return 256;
        default: return 0;
    }
}

struct MatmulScratch {
    size_t act = 0, tile = 0, tile_buf = 0, g = 0, u = 0, scale = 0, total = 0;  // tile = 2 * tile_buf
};

inline size_t q8_values_bytes(int64_t K, int64_t n_tok) { return align_up((size_t)n_tok * (size_t)K); }

// Q8_1 activations of n_tok rows of K in the decode kernel's layout (int8 values, then (d, s) float pairs).
inline size_t q8_act_bytes(int64_t K, int64_t n_tok) {
    return q8_values_bytes(K, n_tok) + align_up((size_t)n_tok * (size_t)(K / 32) * sizeof(float) * 2);
}

// fp16_tiles: whether the call may take the fp16 fallback (its weight type(s) not all MMQ's): only then
// does a prefill call need the tile pair (Q4_K_M files never do: up to 64 MB the plan need not reserve).
inline MatmulScratch matmul_scratch_layout(int64_t K, int64_t N, int64_t n_tok, int64_t tile_values = kTileValues,
                                           bool fp16_tiles = true) {
    MatmulScratch l;
    const size_t q8 = q8_act_bytes(K, n_tok);
    if (n_tok <= kMultiPassMaxTok) {
        l.act = align_up(q8);
    } else {
        const size_t x16 = 2 * (size_t)n_tok * (size_t)K * 2;  // hi and lo halves
        l.act = align_up(x16 > q8 ? x16 : q8);
        if (fp16_tiles) {
            l.tile_buf = align_up((size_t)prefill_tile_rows(K, N, tile_values) * (size_t)K * 2);
            l.tile = 2 * l.tile_buf;
        }
        l.scale = align_up((size_t)n_tok * sizeof(float));
    }
    l.g = l.u = align_up((size_t)n_tok * (size_t)N * sizeof(float));
    l.total = l.act + l.tile + l.g + l.u + l.scale;
    return l;
}

// ---- quantized prefill matmul on int8 tensor cores (kernels/mmq.cuh, launch/mmq.cu) -----------------
// No scratch of its own: it reads the Q8_1 activations from the matmul scratch's `act` (which prefill sizes
// max(fp16 x, Q8_1 layout)) and writes y (or g/u) directly. Its only other bytes are the CTA's dynamic
// shared memory, laid out here.
constexpr int kMmqBM = 64;        // weight rows per CTA
constexpr int kMmqBN = 64;        // tokens per CTA
constexpr int kMmqThreads = 128;  // 4 warps, 2 x 2, each 32 rows x 32 tokens
constexpr int kMmqKStep = 256;    // K values per shared-memory fill (one k-quant super-block)
constexpr int kMmqSubs = kMmqKStep / 32;
constexpr int kMmqRowStride = kMmqKStep + 16;  // bytes per int8 row in shared memory (bank-conflict pad)

struct MmqSmem {
    size_t wq, aq, wsc, wmn, ad, as, total;
};

inline constexpr MmqSmem mmq_smem_layout() {
    MmqSmem l{};
    l.wq = 0;
    l.aq = l.wq + (size_t)kMmqBM * kMmqRowStride;
    l.wsc = l.aq + (size_t)kMmqBN * kMmqRowStride;
    l.wmn = l.wsc + sizeof(float) * 2 * kMmqSubs * kMmqBM;
    l.ad = l.wmn + sizeof(float) * kMmqSubs * kMmqBM;
    l.as = l.ad + sizeof(float) * kMmqSubs * kMmqBN;
    l.total = l.as + sizeof(float) * kMmqSubs * kMmqBN;
    return l;
}
static_assert(mmq_smem_layout().total <= 48 * 1024, "mmq: within the default dynamic shared memory limit");
static_assert(kMmqRowStride % 16 == 0 && kMmqBM * kMmqRowStride % 16 == 0, "mmq: 16-byte stores into the tiles");

// Weight types the MMQ kernel reads (the Q4_K_M mix); K must be a multiple of kMmqKStep. Everything else
// (IQ4_XS, the 32-value legacy types, float weights) stays on the fp16 dequantize + cuBLAS path.
inline bool mmq_type_ok(int type, int64_t K) {
    const bool t = type == T_Q4_K || type == T_Q5_K || type == T_Q6_K || type == T_Q8_0;
    return t && K > 0 && K % kMmqKStep == 0;
}

// ---- Gated DeltaNet (launch/gdn.cu): chunked prefill scratch -----------------------------------------

constexpr int kGdnChunk = 64;  // BT: tokens per chunk of the chunked (WY/UT) prefill

struct GdnScratch {
    size_t qn, kn, g, beta, u, w, p, total;
};

inline GdnScratch gdn_scratch_layout(int nk, int nv, int dk, int dv, int64_t n) {
    const int64_t nc = cdiv(n, kGdnChunk);
    GdnScratch s{};
    Carver cv;
    auto take = [&cv](int64_t floats) { return cv.take((size_t)floats * sizeof(float)); };
    s.qn = take(n * nk * dk);
    s.kn = take(n * nk * dk);
    s.g = take((int64_t)nv * n);
    s.beta = take((int64_t)nv * n);
    s.u = take((int64_t)nv * n * dv);
    s.w = take((int64_t)nv * n * dk);
    s.p = take((int64_t)nv * nc * kGdnChunk * kGdnChunk);
    s.total = cv.size;
    return s;
}

// ---- attention (launch/attention.cu): split-K partials ------------------------------------------------

constexpr int64_t kDecodeMinSplit = 128;       // keys per decode split, at least
constexpr int kDecodeMaxSplits = 128;
constexpr int64_t kPrefillMinSplit = 256;      // keys per prefill split, at least
constexpr int kPrefillMaxSplits = 64;
constexpr int kPrefillSplitBelowBlocks = 128;  // split prefill only when the grid has fewer blocks
constexpr int kPrefillTargetBlocks = 256;
constexpr int kPrefillWarps = 4;
constexpr int kPrefillBM = 16 * kPrefillWarps;  // query rows per prefill block

// Overrides of the automatic launch choices, for tests (0 = automatic).
struct AttentionTuning {
    int64_t decode_split = 0;   // keys per split of the decode kernel (rounded up to a multiple of 32)
    int64_t prefill_split = 0;  // keys per split of the prefill kernel (rounded up to a multiple of 64)
    bool force_prefill = false; // n == 1 through the prefill kernel
};

inline bool attention_head_dim_ok(int D) { return D == 32 || D == 64 || D == 128 || D == 256; }
inline bool attention_heads_ok(int H, int Hkv, int D) {
    return H > 0 && Hkv > 0 && H % Hkv == 0 && attention_head_dim_ok(D);
}

// Partial bytes per (token, query head, split): O[D] and (m, l).
inline size_t attention_partial_bytes(int D) { return sizeof(float) * (size_t)D + 2 * sizeof(float); }

// Keys per split of the decode kernel for L keys (a multiple of 32).
inline int64_t decode_split_len(int64_t L, const AttentionTuning& t) {
    if (t.decode_split > 0) return round_up(t.decode_split, 32);
    const int64_t even = round_up(cdiv(L, kDecodeMaxSplits), 32);
    return even > kDecodeMinSplit ? even : kDecodeMinSplit;
}

inline int64_t decode_split_bound(int64_t L_max, const AttentionTuning& t) {
    if (t.decode_split > 0) return cdiv(L_max, round_up(t.decode_split, 32));
    const int64_t b = cdiv(L_max, kDecodeMinSplit);
    return b < kDecodeMaxSplits ? b : kDecodeMaxSplits;
}

inline int64_t prefill_blocks(int64_t n, int H, int Hkv) { return cdiv(n * (H / Hkv), kPrefillBM) * Hkv; }

// Upper bound of the prefill split count (before rounding the split length), for any L <= L_max.
inline int64_t prefill_split_count(int64_t n, int H, int Hkv, int64_t L_max, const AttentionTuning& t) {
    if (t.prefill_split > 0) return cdiv(L_max, round_up(t.prefill_split, 64));
    const int64_t blocks = prefill_blocks(n, H, Hkv);
    if (blocks >= kPrefillSplitBelowBlocks) return 1;
    int64_t ns = cdiv(kPrefillTargetBlocks, blocks);
    const int64_t by_len = cdiv(L_max, kPrefillMinSplit);
    if (ns > by_len) ns = by_len;
    if (ns > kPrefillMaxSplits) ns = kPrefillMaxSplits;
    return ns < 1 ? 1 : ns;
}

inline int64_t prefill_split_len(int64_t n, int H, int Hkv, int64_t L, const AttentionTuning& t) {
    if (t.prefill_split > 0) return round_up(t.prefill_split, 64);
    return round_up(cdiv(L, prefill_split_count(n, H, Hkv, L, t)), 64);
}

// Scratch for any call with n' <= n tokens at any pos0 with pos0 + n' <= n_ctx.
inline size_t attention_scratch_bytes_ex(int H, int Hkv, int D, int64_t n, int64_t n_ctx, const AttentionTuning& t) {
    if (!attention_heads_ok(H, Hkv, D) || n <= 0 || n_ctx <= 0) return 0;
    const size_t per = attention_partial_bytes(D) * (size_t)H;
    size_t need = 0;
    if (!t.force_prefill) need = per * (size_t)decode_split_bound(n_ctx, t);  // decode: always partials
    for (int64_t m = t.force_prefill ? 1 : 2; m <= n && m <= n_ctx; ++m) {
        const int64_t ns = prefill_split_count(m, H, Hkv, n_ctx, t);
        if (ns > 1 && per * (size_t)(ns * m) > need) need = per * (size_t)(ns * m);
    }
    return need;
}

// ---- sampling and argmax (launch/sampling.cu, argmax.cu) ----------------------------------------------

constexpr int kSampleBlock = 256;      // threads of the max / compaction kernels
constexpr int kSampleMaxBlocks = 256;  // blocks of those kernels (each takes a slice of the row)
constexpr int kSampleCap = 8192;       // candidate list capacity
constexpr size_t kSampleCandBytes = 8;  // sizeof(SampleCand): (logit, id)

inline size_t sample_workspace_bytes(int64_t /*n*/) {
    return align_up(sizeof(float) * kSampleMaxBlocks) + align_up(sizeof(int32_t)) + kSampleCandBytes * kSampleCap;
}

constexpr int kArgmaxBlock = 256;
constexpr size_t kArgmaxPairBytes = 8;  // sizeof(ArgmaxPair): (value, index)

// Blocks per row: about 8 values per thread, at most 128 blocks (a 248k vocabulary gives 122).
inline int argmax_blocks(int64_t n) {
    const int64_t b = cdiv(n, (int64_t)kArgmaxBlock * 8);
    return (int)(b < 1 ? 1 : b > 128 ? 128 : b);
}

inline size_t argmax_workspace_bytes(int64_t n, int nrows) {
    const int nblk = argmax_blocks(n);
    return nblk == 1 ? 0 : kArgmaxPairBytes * (size_t)nblk * (size_t)nrows;
}

// ---- the model's activation buffers and workspace (model/model.cu) ----------------------------------

constexpr int64_t kLogitRows = 16;  // rows of logits computed per LM-head launch (bounds the buffer)

// Rows of every activation buffer for chunks of nb tokens: at least the longest speculative verification
// (model_spec.h kMaxVerifyTokens; checked equal in model/model.cu), which is one batch whatever n_batch is.
constexpr int64_t kVerifyRows = 16;
inline int64_t act_rows(int64_t nb) { return nb > kVerifyRows ? nb : kVerifyRows; }

// Offsets of the activation buffers for chunks of up to act_rows(nb) tokens (one allocation; the DeltaNet,
// attention and FFN buffers overlap: a layer uses one mixer, and the FFN runs after it). With an MTP head
// (c.n_nextn > 0) three more, apart from the mixer region (the MTP block runs its attention and FFN
// through it): hid, the main model's final-norm hidden rows (the MTP's input); eh, the MTP's
// [enorm(embedding) | hnorm(hidden)] rows; mx, the MTP block's residual stream.
struct ActLayout {
    size_t tokens, next, x, a, t, hid, eh, mx, qkv, z, beta, alpha, y, o, qg, k, v, ao, h, q8, q8b, q8cnt, logits, total;
};

inline ActLayout act_layout(const Config& c, int64_t nb_chunk) {
    ActLayout L{};
    const int64_t nb = act_rows(nb_chunk);
    Carver cv;
    const int64_t E = c.n_embd, C = c.conv_channels(), Dv = (int64_t)c.ssm_v_heads * c.ssm_v_dim;
    const int64_t nv = c.ssm_v_heads, HD = (int64_t)c.n_head * c.head_dim, KV = c.kv_row_values();
    L.tokens = cv.take(4 * nb);
    L.next = cv.take(4);
    L.x = cv.take(4 * nb * E);
    L.a = cv.take(4 * nb * E);
    L.t = cv.take(4 * nb * E);
    L.hid = L.eh = L.mx = 0;
    if (c.n_nextn > 0) {
        L.hid = cv.take(4 * nb * E);
        L.eh = cv.take(4 * nb * 2 * E);
        L.mx = cv.take(4 * nb * E);
    }
    const size_t region = cv.size;
    Carver g;  // DeltaNet
    L.qkv = region + g.take(4 * nb * C);
    L.z = region + g.take(4 * nb * Dv);
    L.beta = region + g.take(4 * nb * nv);
    L.alpha = region + g.take(4 * nb * nv);
    L.y = region + g.take(4 * nb * C);
    L.o = region + g.take(4 * nb * Dv);
    Carver at;  // attention
    L.qg = region + at.take(4 * nb * 2 * HD);
    L.k = region + at.take(4 * nb * KV);
    L.v = region + at.take(4 * nb * KV);
    L.ao = region + at.take(4 * nb * HD);
    Carver f;  // FFN
    L.h = region + f.take(4 * nb * c.n_ff);
    size_t mix = 0;
    if (c.n_recurrent_layers() > 0) mix = std::max(mix, g.size);
    if (c.n_attn_layers() > 0) mix = std::max(mix, at.size);
    mix = std::max(mix, f.size);
    cv.size = region + mix;
    // Q8_1 activations of the decode path's current matmul input (<= kMultiPassMaxTok rows of the widest
    // one): quantized once, read by every matmul of that input (ops_matvec.h matmul_prepared).
    // q8b: the FFN hidden row's, written by the gate/up matmul while it reads q8; q8cnt: that matmul's
    // per-32-row completion counters (ops_matvec.h matmul_swiglu_prepared), also the DeltaNet decode
    // kernel's per-head ones (ops_gdn.h gdn_decode_q8): zero between launches, so they share it.
    const int64_t kmax = std::max({E, Dv, HD, (int64_t)c.n_ff});
    L.q8 = cv.take(q8_act_bytes(kmax, std::min<int64_t>(nb, kMultiPassMaxTok)));
    L.q8b = cv.take(q8_act_bytes(kmax, std::min<int64_t>(nb, kMultiPassMaxTok)));
    L.q8cnt = cv.take(sizeof(uint32_t) * (size_t)std::max<int64_t>((kmax + 31) / 32, c.ssm_v_heads));
    L.logits = cv.take(4 * std::min(nb, kLogitRows) * c.n_vocab);
    L.total = cv.size;
    return L;
}

// Device memory the model allocates besides weights and states, for chunks of n_batch tokens and states
// of up to n_ctx positions.
struct WorkspacePlan {
    size_t activations = 0;  // residual/norm/projection buffers for n_batch tokens
    size_t logits = 0;       // LM-head output rows (min(n_batch, kLogitRows) x n_vocab)
    size_t scratch = 0;      // max over the ops' scratch at every batch size they will see
    size_t misc = 0;         // sampling / argmax workspace
    size_t total() const { return activations + logits + scratch + misc; }
};

// A weight as the planner needs it (the matmul operands' shapes decide the scratch).
struct WeightShape {
    int type;
    int64_t ne0, ne1;
};

// fp16_tiles_always: reserve the prefill tile pair for every shape, as if no weight went through MMQ (the
// CUDA model's test hook that switches MMQ off); otherwise only for shapes some weight of which takes the
// fp16 fallback (!mmq_type_ok: float weights, IQ4_XS, the legacy 32-value types).
inline WorkspacePlan plan_workspace(const Config& c, const std::vector<WeightShape>& weights, int64_t nb, int64_t n_ctx,
                                    bool fp16_tiles_always = false) {
    WorkspacePlan p;
    const ActLayout L = act_layout(c, nb);
    p.logits = L.total - L.logits;
    p.activations = L.logits;
    // Scratch: the largest any op asks for at any batch size it will see (1..n_batch tokens, LM head
    // 1..kLogitRows). Distinct weight shapes are few, so this loops over each n directly.
    struct Shape {
        int64_t K, N;
        bool lm;
        bool tiles;  // some weight of this shape takes the fp16 fallback (matmul_swiglu: then both do)
    };
    std::vector<Shape> shapes;
    for (const WeightShape& w : weights) {
        if (w.ne1 <= 1) continue;  // vectors are not matmul operands
        const int g = matmul_k_granularity(w.type);
        if (g == 0 || w.ne0 % g != 0) continue;
        const bool lm = w.ne1 == c.n_vocab && w.ne0 == c.n_embd;  // token_embd / output (LM head rows)
        const bool tiles = fp16_tiles_always || !mmq_type_ok(w.type, w.ne0);
        bool seen = false;
        for (Shape& sh : shapes) {
            if (sh.K == w.ne0 && sh.N == w.ne1 && sh.lm == lm) {
                sh.tiles |= tiles;
                seen = true;
            }
        }
        if (!seen) shapes.push_back({w.ne0, w.ne1, lm, tiles});
    }
    size_t s = 0;
    const int64_t rows = act_rows(nb);  // a verification is one batch of up to kVerifyRows tokens
    for (const Shape& sh : shapes) {
        const int64_t nmax = sh.lm ? std::min(rows, kLogitRows) : rows;
        for (int64_t n = 1; n <= nmax; ++n)
            s = std::max(s, matmul_scratch_layout(sh.K, sh.N, n, kTileValues, sh.tiles).total);
    }
    const AttentionTuning auto_tuning{};
    for (int64_t n = 1; n <= nb; ++n) {
        if (c.n_recurrent_layers() > 0 && n > 1)
            s = std::max(s, gdn_scratch_layout(c.ssm_k_heads, c.ssm_v_heads, c.ssm_k_dim, c.ssm_v_dim, n).total);
        if (c.n_attn_layers() > 0 && n_ctx > 0)
            s = std::max(s, attention_scratch_bytes_ex(c.n_head, c.n_head_kv, c.head_dim, n, n_ctx, auto_tuning));
    }
    p.scratch = align_up(s);
    // argmax of up to kLogitRows rows at once: greedy acceptance of a verification on the device
    p.misc = align_up(std::max(sample_workspace_bytes(c.n_vocab), argmax_workspace_bytes(c.n_vocab, (int)kLogitRows)));
    return p;
}

}  // namespace pq::cuda
