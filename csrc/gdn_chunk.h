// gdn_chunk.h: the chunked (WY/UT) gated delta rule for prefill on the CPU (spec: gdn.h delta_rule_chunked_ref).
//
// The token loop (delta_rule_head) streams the 64 KiB state of a head through L2 twice per token, with about
// 7 loads/stores per 4 flops: bound by the load/store ports. The chunked form does slightly fewer flops
// (3 dk dv per token for W S, Q S and the state update, plus ~2.5 L d for the in-chunk products) as
// register-blocked matrix products, where the FMA units are the bound. Rounding differs from the token loop
// (tests/test_gdn_chunk.py bounds it), so it serves only prefill batches of at least kGdnChunkMinTokens:
// a speculative verification (at most kMaxVerifyTokens, model_spec.h) and its rollback replay keep the token
// loop, and stay bit-identical to one-token steps.
#pragma once

#include <cstdint>

namespace pq {

// Tokens per chunk: the in-chunk products grow with L (about 2.5 L d flops per token) while the state's
// (3 dk dv per token) do not; at dk = dv = 128 chunk 16 is fastest (8 and 24..32 within 10%, 64 1.2-1.5x
// slower). benchmarks/gdn_kernel.py on a 2-core AVX-512 Xeon: 1.1-1.2 us per token and head against the token
// loop's 2.6-2.7 with AVX-512, 1.5 with AVX2.
constexpr int64_t kGdnChunkCpu = 16;
// Batches from this many tokens take the chunked form. It is ahead from 17 tokens (1.1-1.4x at 17..24,
// 1.2-1.7x at 32); 32 leaves a margin above the verification size (kMaxVerifyTokens = 16) that must stay
// on the token loop.
constexpr int64_t kGdnChunkMinTokens = 32;

// Off by default: the CPU backend's contract (docs/CONTRACTS.md) is batch invariance -- a token's logits do not
// depend on how the tokens were split into forwards -- and session reuse (pyqwen.session) relies on it bit for
// bit (a restored prefix + the suffix equals one fresh prefill). The chunked form rounds differently from the
// token loop, so a prompt split at another place gives logits ~1e-4 apart (relative ~4e-5) and those checks
// fail. At the 27B's shapes the delta rule is ~1-2% of a prefill's CPU time, so the default keeps the contract
// (and since the AVX-512 token loop keeps each state row in registers, simd/gdn_avx512.cpp, it takes 1.5 us per
// token and head against the chunked form's 1.34 at 256 tokens, dk = dv = 128: the chunked form would save
// 0.16 us x 144 heads and layers of a 27B-slice token, ~0.1% of its ~24 CPU-ms at 8K tokens in
// benchmarks/prefill_by_position.py);
// PYQWEN_GDN_CHUNK=on (read on first use) or gdn_set_chunked (pyqwen._core.set_gdn_chunked) turns it on.
// A batch-invariant variant is possible (not done: it changes State, snapshots and rollback): align chunks to
// absolute positions and keep the state at the last aligned boundary plus the pending tokens' q/k/v/g/beta;
// a row's chunked output depends only on the rows before it (the products add exact zeros past the diagonal),
// so every split, decode included, would give the same floats, at about 2 dk dv per decode token.
void gdn_set_chunked(bool on);
bool gdn_chunked_enabled();
// Whether a batch of n tokens outside a verification takes the chunked form.
bool gdn_use_chunked(int64_t n);

// C[M][N] = c_scale C + A[M][K] B[K][N], row-major with leading dimensions lda, ldb, ldc; c_scale == 0:
// C is only written (it may hold anything, NaN included).
using GdnGemmFn = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                           int64_t ldb, float* C, int64_t ldc, float c_scale);

// The selected kernel set's product (simd_kernels().name: "ref" plain loops, "avx2", "avx512").
GdnGemmFn gdn_gemm();

// delta_rule_head's arguments and result (up to rounding), chunk tokens at a time. With the reference
// kernel set it runs delta_rule_chunked_ref.
void delta_rule_chunked(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                        int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S, int64_t dk,
                        int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride,
                        int64_t chunk = kGdnChunkCpu);

}  // namespace pq
