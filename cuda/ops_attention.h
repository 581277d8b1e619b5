// ops_attention.h: host entry points of the gated-attention kernels (launch/attention.cu). Plain C++,
// callable from g++-compiled code in the real and the emulated build. All pointers are device pointers;
// every function only enqueues work on `stream` and returns the launch error.
//
// Supported shapes: D (head_dim) in {32, 64, 128, 256}; H a multiple of Hkv; n_rot even, 0 <= n_rot <= D;
// n_ctx < 2^24 (positions are exact in float); pos0 + n <= n_ctx. Anything else: cudaErrorInvalidValue,
// nothing launched.
#pragma once

#include <cstddef>
#include <cstdint>

#include "formats.h"
#include "host_api.h"
#include "plan/workspace_sizes.h"  // AttentionTuning, attention_scratch_bytes_ex
#include "rope_table.h"            // RopeFreqs: the model's rotary table, built once (rope_freqs(config))

namespace pq::cuda {

// One layer's KV cache: K rows [n_ctx][Hkv][D] and V rows likewise, each in its own type: T_F16 (fp16 bit
// patterns), T_Q8_0 or T_Q4_0 (each head's D values as D/32 ggml blocks, written with llama.cpp's reference
// quantizer: formats.h). k / v may be null where a function says so.
// k_rot / v_rot: the rows are stored Hadamard-rotated in blocks of that many values (csrc/common/model_spec.h
// kv_rotation_block, llama.cpp's default for quantized caches; 0: stored as they come; else a power of two
// >= 2 dividing D). k_rot also rotates the queries (scores unchanged), v_rot rotates the attention output
// back before the sigmoid gate (kernels/hadamard.cuh): the CPU backend's csrc/model.cpp attn_layer.
struct KvCache {
    void* k = nullptr;
    void* v = nullptr;
    int k_type = T_F16, v_type = T_F16;
    int k_rot = 0, v_rot = 0;
};

inline bool kv_cache_type_ok(int t) { return t == T_F16 || t == T_Q8_0 || t == T_Q4_0; }

// Bytes of device scratch `attention` needs for a call with these head shapes, any n' <= n tokens and
// any pos0 with pos0 + n' <= n_ctx (so one buffer sized for the largest batch serves every call). It
// holds the split-K partial results (m, l, unnormalised O per query head and split); 0 is possible.
size_t attention_scratch_bytes(int H, int Hkv, int D, int64_t n, int64_t n_ctx);

// One gated-attention layer's core for n tokens at positions pos0..pos0+n-1 of one sequence:
//   qg [n][H][2*D]: the attn_q projection, per head [q (D) | gate (D)]; modified in place (q normed+roped);
//   k, v [n][Hkv][D]: the attn_k / attn_v projections; k modified in place (normed+roped);
//   q_norm, k_norm [D]: RMSNorm weights (already +1 in the GGUF: multiply directly);
//   kv: the caches (KvCache: fp16, Q8_0 or Q4_0 rows): rows pos0..pos0+n-1 are written here;
//   out [n][H*D] = sigmoid(gate) * softmax(q k^T / sqrt(D), causal over 0..pos0+t) v, query head h -> KV head h / (H/Hkv).
// q/k RMSNorm (eps) before NEOX RoPE on dims [0, rope.n_rot): pairs (i, i + n_rot/2), theta_i = pos * f_i,
// cos and sin scaled by rope.mscale (rope_table.h: f_i and mscale of csrc/common/rope_scaling.h).
// `out` [n][H*D] (device, float) receives the gated output; it must not alias qg, k or v.
// n == 1 runs the split-K decode kernel + the split combine (always the same 3 launches, with only the
// decode grid and the scalar arguments depending on pos0: CUDA-graph updates keep the topology), n > 1
// the flash prefill kernel (split over keys, + combine, when the batch is too small to fill the GPU).
// Attention reads K and V back from the cache (dequantizing quantized rows tile by tile in registers or
// shared memory), as the CPU backend does.
cudaError_t attention(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                      const KvCache& kv, int64_t n_ctx, int64_t pos0, int64_t n, int H, int Hkv, int D,
                      const RopeFreqs& rope, float eps, float* out, void* scratch, cudaStream_t stream);

// `attention` for one query (n == 1) that also writes out's Q8_1 activations for the output projection
// (the decode path's shared-activation layout, ops_matvec.h: out_qs H*D int8, out_ds H*D/32 (d, s) float
// pairs; both null: attention itself): the combine kernel quantizes, one launch fewer per attention layer.
// out is bit-identical with attention's, the Q8_1 bytes with quantize_act_q8 of out.
// counters (may be null; H unsigned zeros, left zero): the split-K combine runs in the decode kernel's last
// split block per head group instead of a combine launch (bit-identical; one node fewer per layer).
cudaError_t attention_decode_q8(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                                const KvCache& kv, int64_t n_ctx, int64_t pos0, int H, int Hkv, int D,
                                const RopeFreqs& rope, float eps, float* out, int8_t* out_qs, float* out_ds,
                                void* scratch, cudaStream_t stream, unsigned* counters = nullptr);

// ---- the decode graph: one recording replayed at every position of a bucket ------------------------------
//
// A CUDA graph keeps its kernels' arguments as they were at capture, so a graph that is replayed for token
// after token cannot take the position as an argument. attention_decode_graph is attention_decode_q8 for
// the query at position *dpos (device memory, read when the kernels run: the q/k norm + RoPE + append and
// the split-K decode kernel read it), with the decode grid sized for the bucket of L = pos + 1 keys
// (decode_bucket): every L' of the bucket has L's split length and needs at most its number of splits;
// splits past the live keys write neutral partials that the combine skips, so out (and its Q8_1) is
// bit-identical with attention_decode_q8 at *dpos. `pos` is the position at the call (the capture): it
// picks the bucket and validates the shapes. The graph is valid while *dpos + 1 stays in that bucket.
// dpos == nullptr: the position `pos` by value (a graph replayed at another position would then use the
// stale one: the planted bug of tests/cuda/test_decode_graph_emu.py).
struct DecodeBucket {
    int64_t split_len = 0;  // keys per split (decode_split_len of L)
    int nsplit = 0;         // splits of the grid: the next power of two >= the live splits, at most
                            // cdiv(n_ctx, split_len)
    bool operator==(const DecodeBucket& o) const { return split_len == o.split_len && nsplit == o.nsplit; }
    bool operator!=(const DecodeBucket& o) const { return !(*this == o); }
};
// The bucket of a decode step with L keys in a state of n_ctx positions ({0, 0} when L is not in 1..n_ctx).
// With the default tuning: split_len 128 up to L = 16384 (grids of 1, 2, 4, ... 128 splits: a new bucket
// when L passes 129, 257, 513, ...), then a new split length every 4096 keys.
DecodeBucket decode_bucket(int64_t L, int64_t n_ctx);

cudaError_t attention_decode_graph(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                                   const KvCache& kv, int64_t n_ctx, int64_t pos, const int32_t* dpos, int H,
                                   int Hkv, int D, const RopeFreqs& rope, float eps, float* out, int8_t* out_qs,
                                   float* out_ds, void* scratch, cudaStream_t stream, unsigned* counters = nullptr);

// The device-resident position: *pos = value (a launch of its own: the host's value at the call), or
// *pos += 1 (the decode graph's last node: the next replay runs at the next position).
cudaError_t decode_position_set(int32_t* pos, int64_t value, cudaStream_t stream);
cudaError_t decode_position_advance(int32_t* pos, cudaStream_t stream);

// ---- lower-level pieces (the backend may call them; the tests use them to reach edge cases) ----------

// Step 1 of `attention` alone: q/k RMSNorm + NEOX RoPE in place, and (when k_cache / v_cache are not
// null) the append of k (normed+roped) and v to rows pos0..pos0+n-1 in their types. The RoPE angle matches
// csrc/ops.cpp rope_neox (double-precision frequencies from the host, float-float phase, exact
// Cody-Waite reduction, float sincos): |cos, sin - reference| <= 5e-7 for every position < 2^24.
// qg == nullptr (q_norm may be too): only k and v, into the cache (which must be given) -- an MTP cache
// catching up on rows whose queries nobody needs, with the very arithmetic of a full call.
cudaError_t attention_prepare(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                              const KvCache& kv, int64_t pos0, int64_t n, int H, int Hkv, int D,
                              const RopeFreqs& rope, float eps, cudaStream_t stream);

// AttentionTuning (overrides of the automatic launch choices, for tests) and attention_scratch_bytes_ex:
// plan/workspace_sizes.h.

cudaError_t attention_ex(float* qg, float* k, const float* v, const float* q_norm, const float* k_norm,
                         const KvCache& kv, int64_t n_ctx, int64_t pos0, int64_t n, int H, int Hkv, int D,
                         const RopeFreqs& rope, float eps, float* out, void* scratch, cudaStream_t stream,
                         const AttentionTuning& tuning);

// Test entry point of cuda/kernels/hadamard.cuh: rows [rows][D] (D <= 256, block a power of two dividing
// D) rotated in place, one row per block of D threads (warp == false) or of one warp (warp == true).
cudaError_t hadamard_probe(float* x, int64_t rows, int D, int block, bool warp, cudaStream_t stream);

// Test entry point of cuda/kernels/tile_load.cuh (one warp): the 16 x ld fp16 tile (ld a multiple of 8 in
// 16..64) is copied to shared memory with cp.async (waited for unless skip_wait), then lane l runs
// ldmatrix.x4 and ldmatrix.x4.trans from offset offsets[l] (halves, 16-byte aligned) of it: out[32][8].
cudaError_t tile_load_probe(const uint16_t* tile, int ld, const int* offsets, bool skip_wait, uint32_t* out,
                            cudaStream_t stream);

}  // namespace pq::cuda
