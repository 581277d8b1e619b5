// attention.cu: launch code of the gated-attention core (norm + RoPE + cache append, decode, prefill).
#include <cmath>

#include "../compat.cuh"
#include "../kernels/attention_common.cuh"
#include "../kernels/attention_decode.cuh"
#include "../kernels/attention_prefill.cuh"
#include "../kernels/decode_position.cuh"
#include "../kernels/hadamard.cuh"
#include "../kernels/rope.cuh"
#include "../ops_attention.h"

namespace pq::cuda {

namespace {

constexpr int64_t kMaxCtx = int64_t(1) << 24;  // positions exact in float (RoPE)

// Split choices (decode_split_len, prefill_split_count, ...) and the scratch they need:
// plan/workspace_sizes.h, shared with the memory planner.
bool valid_heads(int H, int Hkv, int D) { return attention_heads_ok(H, Hkv, D); }

// The decode kernel's own combine (attn_decode_kernel's tail; cnt == nullptr: attn_combine_kernel follows).
struct DecodeCombine {
    float* out = nullptr;
    int8_t* out_qs = nullptr;
    float2* out_ds = nullptr;
    unsigned* cnt = nullptr;
};

template <int D, int NR>
void launch_decode(const float* qg, const uint8_t* kc, const uint8_t* vc, const KvLayout& kv, float* po, float2* pml, int H, int Hkv,
                   int64_t L, const int32_t* dpos, int64_t split_len, int nsplit, float q_scale, const DecodeCombine& dc,
                   cudaStream_t stream) {
    const dim3 grid(nsplit, Hkv * (H / Hkv / NR));
    auto* attn_decode_kernel_nr = attn_decode_kernel<D, NR>;
    PQ_LAUNCH_PDL(attn_decode_kernel_nr, grid, kDecodeWarps * 32, (decode_smem_bytes<D, NR>()), stream, qg, kc, vc, kv, po, pml, H, Hkv, L,
              dpos, split_len, q_scale, dc.out, dc.out_qs, dc.out_ds, dc.cnt);
}

// Query heads per decode block: all G of a KV head when G is one of the instantiated counts, else the
// largest instantiated divisor of G (the K/V rows are then read G / NR times).
int decode_heads_per_block(int G) {
    for (int nr : {8, 6, 4, 3, 2})
        if (G % nr == 0) return nr;
    return 1;
}

template <int D>
void decode_dispatch(const float* qg, const uint8_t* kc, const uint8_t* vc, const KvLayout& kv, float* po, float2* pml, int H,
                     int Hkv, int64_t L, const int32_t* dpos, int64_t split_len, int nsplit, float q_scale,
                     const DecodeCombine& dc, cudaStream_t stream) {
    switch (decode_heads_per_block(H / Hkv)) {
        case 8: launch_decode<D, 8>(qg, kc, vc, kv, po, pml, H, Hkv, L, dpos, split_len, nsplit, q_scale, dc, stream); break;
        case 6: launch_decode<D, 6>(qg, kc, vc, kv, po, pml, H, Hkv, L, dpos, split_len, nsplit, q_scale, dc, stream); break;
        case 4: launch_decode<D, 4>(qg, kc, vc, kv, po, pml, H, Hkv, L, dpos, split_len, nsplit, q_scale, dc, stream); break;
        case 3: launch_decode<D, 3>(qg, kc, vc, kv, po, pml, H, Hkv, L, dpos, split_len, nsplit, q_scale, dc, stream); break;
        case 2: launch_decode<D, 2>(qg, kc, vc, kv, po, pml, H, Hkv, L, dpos, split_len, nsplit, q_scale, dc, stream); break;
        default: launch_decode<D, 1>(qg, kc, vc, kv, po, pml, H, Hkv, L, dpos, split_len, nsplit, q_scale, dc, stream); break;
    }
}

template <int D>
cudaError_t launch_prefill(const float* qg, const uint8_t* kc, const uint8_t* vc, const KvLayout& kv, float* out, float* po, float2* pml,
                    int H, int Hkv, int pos0, int n, int split_len, int nsplit, float s_scale, cudaStream_t stream) {
    const dim3 grid((unsigned)cdiv((int64_t)n * (H / Hkv), kPrefillBM), Hkv, nsplit);
    constexpr size_t smem = prefill_smem_bytes<D>();
    static_assert(smem <= 99 * 1024, "the prefill tiles must fit the 99 KiB per block of sm_86/89/120");
    if constexpr (smem > 48 * 1024) {
        // Above the default 48 KiB a kernel must opt in (per device; cheap next to a prefill launch).
        const cudaError_t e = cudaFuncSetAttribute(attn_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   (int)smem);
        if (e != cudaSuccess) return e;
    }
    PQ_LAUNCH(attn_prefill_kernel<D>, grid, kPrefillWarps * 32, smem, stream, qg, kc, vc, kv, out,
              po, pml, H, Hkv, pos0, n, split_len, s_scale);
    return cudaSuccess;
}

}  // namespace

size_t attention_scratch_bytes(int H, int Hkv, int D, int64_t n, int64_t n_ctx) {
    return attention_scratch_bytes_ex(H, Hkv, D, n, n_ctx, AttentionTuning{});
}

namespace {

KvLayout kv_layout(const KvCache& kv, int Hkv, int D) {
    KvLayout l;
    l.k_type = kv.k_type;
    l.v_type = kv.v_type;
    l.k_head = kv_head_bytes(kv.k_type, D);
    l.v_head = kv_head_bytes(kv.v_type, D);
    l.k_row = (int64_t)Hkv * l.k_head;
    l.v_row = (int64_t)Hkv * l.v_head;
    l.k_rot = kv.k_rot;
    l.v_rot = kv.v_rot;
    return l;
}

// Every head dim the launchers take (32..256) is whole Q8_0/Q4_0 blocks.
bool kv_ok(const KvCache& kv, int D) {
    return kv_cache_type_ok(kv.k_type) && kv_cache_type_ok(kv.v_type) && hadamard_block_ok(kv.k_rot, D) &&
           hadamard_block_ok(kv.v_rot, D);
}

}  // namespace

namespace {

// attention_prepare; dpos: the position pos0 names is read from device memory when the kernel runs
// (pos0 only validates the call).
cudaError_t prepare_impl(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                         const KvCache& kv, int64_t pos0, const int32_t* dpos, int64_t n, int H, int Hkv, int D,
                         const RopeFreqs& rope, float eps, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (n < 0 || pos0 < 0 || pos0 + n > kMaxCtx || !valid_heads(H, Hkv, D) || rope.n_rot < 0 || rope.n_rot > D ||
        !k || (qg && !q_norm) || !k_norm || (kv.v && !v) || (!qg && !kv.k) || !kv_ok(kv, D))
        return cudaErrorInvalidValue;
    const int64_t rows = n * ((qg ? H : 0) + Hkv);
    const int64_t blocks = cdiv(rows, kPrepWarps);
    if (blocks > INT_MAX) return cudaErrorInvalidValue;
    PQ_LAUNCH_PDL(qk_norm_rope_kernel, (unsigned)blocks, kPrepWarps * 32, 0, stream, qg, k, v, q_norm, k_norm,
              static_cast<uint8_t*>(kv.k), static_cast<uint8_t*>(kv.v), kv_layout(kv, Hkv, D), pos0, dpos, (int)n, H,
              Hkv, D, eps, rope);
    return cudaGetLastError();
}

}  // namespace

cudaError_t attention_prepare(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                              const KvCache& kv, int64_t pos0, int64_t n, int H, int Hkv, int D,
                              const RopeFreqs& rope, float eps, cudaStream_t stream) {
    return prepare_impl(qg, k, v, q_norm, k_norm, kv, pos0, nullptr, n, H, Hkv, D, rope, eps, stream);
}

DecodeBucket decode_bucket(int64_t L, int64_t n_ctx) {
    DecodeBucket b;
    if (L < 1 || n_ctx < L) return b;
    b.split_len = decode_split_len(L, AttentionTuning{});
    const int64_t live = cdiv(L, b.split_len);
    int64_t cap = 1;
    while (cap < live) cap *= 2;
    // never more splits than the longest L of the state needs (the scratch holds decode_split_bound(n_ctx))
    const int64_t most = cdiv(n_ctx, b.split_len);
    b.nsplit = (int)(cap < most ? cap : most);
    return b;
}

namespace {

cudaError_t attention_impl(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                           const KvCache& kv, int64_t n_ctx, int64_t pos0, int64_t n, int H, int Hkv, int D,
                           const RopeFreqs& rope, float eps, float* out, void* scratch, cudaStream_t stream,
                           const AttentionTuning& tuning, int8_t* out_qs, float* out_ds, bool bucketed = false,
                           const int32_t* dpos = nullptr, unsigned* counters = nullptr) {
    if (n == 0) return cudaSuccess;
    if (out_qs && (n != 1 || tuning.force_prefill || !out_ds || D % 32 != 0)) return cudaErrorInvalidValue;
    if (counters && (n != 1 || tuning.force_prefill)) return cudaErrorInvalidValue;
    if (n < 0 || pos0 < 0 || n_ctx <= 0 || n_ctx > kMaxCtx || pos0 + n > n_ctx || !valid_heads(H, Hkv, D) || !v ||
        !kv.k || !kv.v || !kv_ok(kv, D) || !out || n * (H / Hkv) > INT_MAX)
        return cudaErrorInvalidValue;

    // Plan (and validate) everything before the first launch: a rejected call changes nothing.
    const int64_t L = pos0 + n;  // keys of the last query
    const bool decode = n == 1 && !tuning.force_prefill;
    int64_t split_len = decode ? decode_split_len(L, tuning) : prefill_split_len(n, H, Hkv, L, tuning);
    if (split_len > round_up(L, 64)) split_len = round_up(L, 64);  // one split (keeps it an int)
    int64_t nsplit = cdiv(L, split_len);
    if (bucketed) {
        // the grid of L's bucket: every L' of it has this split length and needs at most nsplit splits
        // (one split covers the same keys in the same order whatever its length: no clamp needed)
        if (!decode || tuning.decode_split > 0) return cudaErrorInvalidValue;
        const DecodeBucket b = decode_bucket(L, n_ctx);
        split_len = b.split_len;
        nsplit = b.nsplit;
    }
    const bool combine = decode || nsplit > 1;  // decode always goes through the partials
    if (nsplit > 65535 || (combine && !scratch) || (combine && n > 65535)) return cudaErrorInvalidValue;
    float* po = combine ? static_cast<float*>(scratch) : nullptr;
    float2* pml = combine ? reinterpret_cast<float2*>(po + n * H * nsplit * D) : nullptr;

    cudaError_t e = prepare_impl(qg, k, v, q_norm, k_norm, kv, pos0, dpos, n, H, Hkv, D, rope, eps, stream);
    if (e != cudaSuccess) return e;

    const KvLayout lay = kv_layout(kv, Hkv, D);
    const uint8_t* kc = static_cast<const uint8_t*>(kv.k);
    const uint8_t* vc = static_cast<const uint8_t*>(kv.v);
    const float scale_log2 = kLog2e / std::sqrt((float)D);
    if (decode) {
        auto* launch = D == 32 ? decode_dispatch<32> : D == 64 ? decode_dispatch<64>
                     : D == 128 ? decode_dispatch<128> : decode_dispatch<256>;
        DecodeCombine dc;
        if (counters) dc = DecodeCombine{out, out_qs, reinterpret_cast<float2*>(out_ds), counters};
        launch(qg, kc, vc, lay, po, pml, H, Hkv, L, dpos, split_len, (int)nsplit, scale_log2, dc, stream);
        if (counters) return cudaGetLastError();  // combined by the decode kernel's last split blocks
    } else {
        auto* launch = D == 32 ? launch_prefill<32> : D == 64 ? launch_prefill<64>
                     : D == 128 ? launch_prefill<128> : launch_prefill<256>;
        if ((e = launch(qg, kc, vc, lay, out, po, pml, H, Hkv, (int)pos0, (int)n, (int)split_len, (int)nsplit,
                        scale_log2, stream)) != cudaSuccess)
            return e;
    }
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    if (combine) {
        PQ_LAUNCH_PDL(attn_combine_kernel, dim3(H, (unsigned)n), D, 0, stream, po, pml, qg, out, H, D, (int)nsplit, out_qs,
                  reinterpret_cast<float2*>(out_ds), kv.v_rot);
        return cudaGetLastError();
    }
    return cudaSuccess;
}

}  // namespace

cudaError_t attention_ex(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                         const KvCache& kv, int64_t n_ctx, int64_t pos0, int64_t n, int H, int Hkv, int D,
                         const RopeFreqs& rope, float eps, float* out, void* scratch, cudaStream_t stream,
                         const AttentionTuning& tuning) {
    return attention_impl(qg, k, v, q_norm, k_norm, kv, n_ctx, pos0, n, H, Hkv, D, rope, eps, out, scratch, stream,
                          tuning, nullptr, nullptr);
}

cudaError_t attention_decode_q8(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                                const KvCache& kv, int64_t n_ctx, int64_t pos0, int H, int Hkv, int D,
                                const RopeFreqs& rope, float eps, float* out, int8_t* out_qs, float* out_ds,
                                void* scratch, cudaStream_t stream, unsigned* counters) {
    return attention_impl(qg, k, v, q_norm, k_norm, kv, n_ctx, pos0, 1, H, Hkv, D, rope, eps, out, scratch, stream,
                          AttentionTuning{}, out_qs, out_ds, false, nullptr, counters);
}

cudaError_t attention_decode_graph(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                                   const KvCache& kv, int64_t n_ctx, int64_t pos, const int32_t* dpos, int H,
                                   int Hkv, int D, const RopeFreqs& rope, float eps, float* out, int8_t* out_qs,
                                   float* out_ds, void* scratch, cudaStream_t stream, unsigned* counters) {
    return attention_impl(qg, k, v, q_norm, k_norm, kv, n_ctx, pos, 1, H, Hkv, D, rope, eps, out, scratch, stream,
                          AttentionTuning{}, out_qs, out_ds, true, dpos, counters);
}

cudaError_t hadamard_probe(float* x, int64_t rows, int D, int block, bool warp, cudaStream_t stream) {
    if (!x || rows < 0 || rows > 65535 || D < 2 || D > 256 || block == 0 || !hadamard_block_ok(block, D))
        return cudaErrorInvalidValue;
    if (rows == 0) return cudaSuccess;
    if (warp) PQ_LAUNCH(hadamard_probe_kernel<true>, (unsigned)rows, 32, 0, stream, x, D, block);
    else PQ_LAUNCH(hadamard_probe_kernel<false>, (unsigned)rows, D, 0, stream, x, D, block);
    return cudaGetLastError();
}

cudaError_t decode_position_set(int32_t* pos, int64_t value, cudaStream_t stream) {
    if (!pos || value < 0 || value >= kMaxCtx) return cudaErrorInvalidValue;
    PQ_LAUNCH_PDL(decode_position_kernel, 1, 32, 0, stream, pos, (int)value, 0);
    return cudaGetLastError();
}

cudaError_t decode_position_advance(int32_t* pos, cudaStream_t stream) {
    if (!pos) return cudaErrorInvalidValue;
    PQ_LAUNCH_PDL(decode_position_kernel, 1, 32, 0, stream, pos, 0, 1);
    return cudaGetLastError();
}

cudaError_t attention(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                      const KvCache& kv, int64_t n_ctx, int64_t pos0, int64_t n, int H, int Hkv, int D,
                      const RopeFreqs& rope, float eps, float* out, void* scratch, cudaStream_t stream) {
    return attention_ex(qg, k, v, q_norm, k_norm, kv, n_ctx, pos0, n, H, Hkv, D, rope, eps, out, scratch, stream,
                        AttentionTuning{});
}

}  // namespace pq::cuda
