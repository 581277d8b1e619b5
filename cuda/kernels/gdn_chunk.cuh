// gdn_chunk.cuh: the chunked (WY / UT) form of the gated delta rule, for prefill (n > 1 tokens).
//
// Per V head (QK head h % nk), chunks of BT = 64 tokens, rows = tokens of the chunk, K/Q L2-normalised
// (Q also scaled by 1/sqrt(dk)), G_i = g_0 + ... + g_i (cumulative log decay within the chunk),
// Gamma_ij = exp(G_i - G_j) for i >= j (<= 1: only differences are exponentiated, never -G):
//   A  = I + tril_{-1}(diag(beta) K K^T o Gamma)           (unit lower triangular)
//   U  = A^-1 diag(beta) V,   W = A^-1 diag(beta) (K o e^G)
//   P  = Q K^T o Gamma o causal (incl. diagonal)
// and then, with the state S (math layout [dk][dv]) entering the chunk:
//   V' = U - W S,   O = (Q o e^G) S + P V',   S <- e^{G_last} S + (K o e^{G_last - G})^T V'
// which equals the token recurrence exactly in exact arithmetic (csrc/gdn.cpp delta_rule_head).
//
// Two kernels (plus gdn_prep_kernel before them and gdn_gated_norm_kernel after, gdn_common.cuh):
//  1. gdn_chunk_prep_kernel, grid (chunks, nv): everything that does not depend on the state -- the chunk
//     cumsum G (written back over g), K K^T and Q K^T (dk-tiled through shared memory, 4x4 register tiles),
//     P (to scratch), M = A - I (shared), T = A^-1 (row by row, warp-synchronous), and [U | W] = T [beta V |
//     beta K e^G] (64-column tiles, 4x4 register tiles); U and W go to scratch. All chunks and heads run
//     in parallel.
//  2. gdn_chunk_scan_kernel, grid (dv / 16, nv): the state-dependent part, sequential over chunks. In the
//     stored layout S[h][j][i] (row j = column j of the math state) every row evolves independently:
//       V'[:, j] = U[:, j] - W S[j]^T,  O[:, j] = e^G o (Q S[j]^T) + P V'[:, j],
//       S[j] <- e^{G_last} S[j] + V'[:, j]^T (K o e^{G_last - G})
//     so a block owns R = 16 rows of S, keeps them in shared memory in fp32 across all chunks (the
//     inter-chunk carry never leaves the chip), and writes them back once. O (before the norm) goes to out.
//
// Cost on the 27B (nv 48, dk = dv = 128), per 64-token chunk and V head:
//   prep: ~4.3 MFLOP (K K^T + Q K^T 2.1, A^-1 0.1, T [beta V | beta K e^G] 2.1); reads Q, K, V, K = 128 KiB
//         (Q, K shared by the 3 V heads of a QK head: L2 hits), writes U, W, P = 80 KiB.
//   scan: ~6.8 MFLOP (W S 2.1, Q S 2.1, P V' 0.5, K^T V' 2.1); each of the 8 row blocks reads W, Q, K, P and
//         its U slice (116 KiB, ~144 KiB distinct per chunk and head, the rest L2 hits), writes O 32 KiB.
//   state: 64 KiB read + 64 KiB written per head once per call, not per token.
// Per token and layer: ~8 MFLOP and ~0.2 MiB of DRAM traffic (scratch round trips included); 512 tokens
// ~4.3 GFLOP per layer, ~0.2 TFLOP for the 48 GDN layers. fp32 on CUDA cores (no tensor cores: the scan's
// accumulations and the state carry stay in fp32; a TF32 mma path for K K^T / T B / W S would be the next
// step and needs a GPU to validate).
#pragma once

#include "../compat.cuh"
#include "gdn_common.cuh"
#include "../plan/workspace_sizes.h"

namespace pq::cuda {

// kGdnChunk (BT, tokens per chunk): plan/workspace_sizes.h, which sizes the scratch per chunk.
constexpr int kGdnChunkThreads = 256;
constexpr int kGdnKTile = 32;         // dk columns per shared-memory tile
constexpr int kGdnScanRows = 16;      // state rows per scan block
constexpr int kGdnTld = 72;           // row stride of A^-1 in shared memory (see the bank notes below)

// Dynamic shared memory (floats) of the two kernels.
constexpr int gdn_chunk_prep_smem_floats() {
    return 2 * kGdnChunk * (kGdnKTile + 1) + kGdnChunk * kGdnTld + 2 * kGdnChunk;
}
constexpr int gdn_chunk_scan_smem_floats(int dk) {
    return kGdnScanRows * (dk + 1) + 2 * kGdnChunk * (kGdnKTile + 1) + 2 * kGdnChunk * kGdnScanRows + kGdnChunk;
}

// Scratch arrays (see launch/gdn.cu): qn, kn [n][nk][dk]; g [nv][n] (raw in, cumulative per chunk out);
// beta [nv][n]; U [nv][n][dv]; W [nv][n][dk]; P [nv][chunks][BT][BT].
__global__ void __launch_bounds__(kGdnChunkThreads)
    gdn_chunk_prep_kernel(const float* __restrict__ y, const float* __restrict__ qn, const float* __restrict__ kn,
                          float* __restrict__ G, const float* __restrict__ beta, float* __restrict__ U,
                          float* __restrict__ W, float* __restrict__ P, int nk, int nv, int dk, int dv, int64_t n) {
    constexpr int BT = kGdnChunk, KT = kGdnKTile, KTP = KT + 1, NT = kGdnChunkThreads, TLD = kGdnTld;
    static_assert(NT == 256 && BT == 64, "thread mappings below assume 256 threads and 64-token chunks");
    static_assert(2 * BT * KTP >= BT * BT, "M and the B tile reuse the K/Q tile buffers");
    PQ_DYN_SHARED(float, smem);
    float* Kt = smem;           // [BT][KTP]: K tile (padded rows: conflict-free column reads)
    float* Qt = Kt + BT * KTP;  // [BT][KTP]: Q tile
    float* M = smem;            // [BT][BT]: strictly lower part of A (after the tiles are consumed)
    float* Bt = smem;           // [BT][BT]: column tile of [beta V | beta K e^G] (after M is consumed)
    float* T = Qt + BT * KTP;   // [BT][TLD]: A^-1
    float* Gs = T + BT * TLD;   // [BT]: cumulative log decay (padded with G_last)
    float* Bs = Gs + BT;        // [BT]: beta (padded with 0)

    const int tid = threadIdx.x;
    const int64_t c = blockIdx.x, nc = gridDim.x;
    const int h = blockIdx.y, kh = h % nk;
    const int64_t t0 = c * BT;
    const int L = n - t0 < BT ? (int)(n - t0) : BT;
    const int64_t C = 2LL * nk * dk + (int64_t)nv * dv;
    const int64_t hn = (int64_t)h * n;

    if (tid < BT) {
        Gs[tid] = tid < L ? G[hn + t0 + tid] : 0.0f;
        Bs[tid] = tid < L ? beta[hn + t0 + tid] : 0.0f;
    }
    for (int e = tid; e < BT * TLD; e += NT) T[e] = (e / TLD == e % TLD) ? 1.0f : 0.0f;
    __syncthreads();
    if (tid == 0) {  // 64 adds: not worth a parallel scan
        float acc = 0.0f;
        for (int i = 0; i < BT; ++i) {
            if (i < L) acc += Gs[i];
            Gs[i] = acc;
        }
    }
    __syncthreads();
    if (tid < L) G[hn + t0 + tid] = Gs[tid];

    // K K^T and Q K^T: thread (ti, tj) accumulates rows ti*4 + a, columns tj + 16*bb.
    const int ti = tid / 16, tj = tid % 16;
    float akk[4][4], aqk[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int bb = 0; bb < 4; ++bb) akk[a][bb] = aqk[a][bb] = 0.0f;
    for (int k0 = 0; k0 < dk; k0 += KT) {
        __syncthreads();  // the previous tile is consumed
        for (int e = tid; e < BT * KT; e += NT) {
            const int i = e / KT, kk = e % KT;
            const bool ok = i < L && k0 + kk < dk;
            const int64_t off = ((t0 + i) * nk + kh) * dk + k0 + kk;
            Kt[i * KTP + kk] = ok ? kn[off] : 0.0f;
            Qt[i * KTP + kk] = ok ? qn[off] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < KT; ++kk) {
            float kr[4], qr[4], kc[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                kr[a] = Kt[(ti * 4 + a) * KTP + kk];
                qr[a] = Qt[(ti * 4 + a) * KTP + kk];
                kc[a] = Kt[(tj + 16 * a) * KTP + kk];
            }
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int bb = 0; bb < 4; ++bb) {
                    akk[a][bb] += kr[a] * kc[bb];
                    aqk[a][bb] += qr[a] * kc[bb];
                }
        }
    }
    __syncthreads();  // tiles consumed: M takes their place
    // A's strictly lower part M (shared) and P (scratch; every entry written, padding included).
    float* Pc = P + (h * nc + c) * BT * BT;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int bb = 0; bb < 4; ++bb) {
            const int i = ti * 4 + a, j = tj + 16 * bb;
            const float gam = i >= j ? expf(Gs[i] - Gs[j]) : 0.0f;
            M[i * BT + j] = i > j ? Bs[i] * akk[a][bb] * gam : 0.0f;
            Pc[i * BT + j] = aqk[a][bb] * gam;
        }
    __syncthreads();

    // T = (I + M)^-1 row by row: T[i][cc] = -sum_{cc <= j < i} M[i][j] T[j][cc] (cc < i). Four lanes of one
    // warp share a column cc (tid / 4), each summing j = p mod 4 (p = tid % 4), then a two-step shuffle; a
    // column never leaves its warp, so rows are ordered by __syncwarp, not block barriers. With TLD = 72 the
    // 32 T[j][cc] reads of a warp fall on distinct banks (bank = (8 (j mod 4) + cc) mod 32).
    {
        const int cc = tid / 4, p = tid % 4;
        const int jstart = cc + ((p - cc) & 3);  // first j >= cc with j = p (mod 4)
        for (int i = 1; i < BT; ++i) {
            float acc = 0.0f;
            for (int j = jstart; j < i; j += 4) acc += M[i * BT + j] * T[j * TLD + cc];
            acc += __shfl_xor_sync(kFullMask, acc, 1);
            acc += __shfl_xor_sync(kFullMask, acc, 2);
            if (p == 0 && cc < i) T[i * TLD + cc] = -acc;
            __syncwarp();  // column cc lives in four lanes of one warp: row i is visible to them
        }
    }
    __syncthreads();  // T complete

    // [U | W] = T [beta V | beta K e^G], 64 columns at a time. Thread (ti, tj): rows ti + 16a (two adjacent
    // rows per warp: distinct banks with TLD = 72), columns tj + 16bb.
    const int ncol = dv + dk;
    for (int col0 = 0; col0 < ncol; col0 += BT) {  // (M, which Bt overwrites, is consumed: barrier above)
        for (int e = tid; e < BT * BT; e += NT) {
            const int i = e / BT, col = col0 + e % BT;
            float v = 0.0f;
            if (i < L && col < ncol)
                v = col < dv ? y[(t0 + i) * C + 2LL * nk * dk + (int64_t)h * dv + col]
                             : expf(Gs[i]) * kn[((t0 + i) * nk + kh) * dk + (col - dv)];
            Bt[e] = Bs[i] * v;
        }
        __syncthreads();
        float acc[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int bb = 0; bb < 4; ++bb) acc[a][bb] = 0.0f;
#pragma unroll 4
        for (int j = 0; j < BT; ++j) {
            float tv[4], bv[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                tv[a] = T[(ti + 16 * a) * TLD + j];
                bv[a] = Bt[j * BT + tj + 16 * a];
            }
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int bb = 0; bb < 4; ++bb) acc[a][bb] += tv[a] * bv[bb];
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int i = ti + 16 * a;
            if (i >= L) continue;
#pragma unroll
            for (int bb = 0; bb < 4; ++bb) {
                const int col = col0 + tj + 16 * bb;
                if (col < dv) U[(hn + t0 + i) * dv + col] = acc[a][bb];
                else if (col < ncol) W[(hn + t0 + i) * dk + (col - dv)] = acc[a][bb];
            }
        }
        __syncthreads();  // Bt consumed before the next column tile overwrites it
    }
}

__global__ void __launch_bounds__(kGdnChunkThreads)
    gdn_chunk_scan_kernel(const float* __restrict__ qn, const float* __restrict__ kn, const float* __restrict__ G,
                          const float* __restrict__ U, const float* __restrict__ W, const float* __restrict__ P,
                          float* __restrict__ S, float* __restrict__ out, int nk, int nv, int dk, int dv, int64_t n) {
    constexpr int BT = kGdnChunk, KT = kGdnKTile, KTP = KT + 1, R = kGdnScanRows, NT = kGdnChunkThreads;
    constexpr int PLD = BT + 1;  // P row stride in shared memory (rows i, i+1 on different banks)
    static_assert(NT == 256 && R == 16 && BT == 64, "thread mappings below assume 256 threads, 16 rows, 64 tokens");
    static_assert(2 * BT * KTP >= BT * PLD, "P reuses the two tile buffers");
    PQ_DYN_SHARED(float, smem);
    const int dkp = dk + 1;     // padded S row: the 16 rows read by a warp fall on distinct banks
    float* Ss = smem;           // [R][dkp]: the state rows of this block (fp32, all chunks)
    float* T0 = Ss + R * dkp;   // [BT][KTP]: W tile, later K tile
    float* T1 = T0 + BT * KTP;  // [BT][KTP]: Q tile
    float* Ps = T0;             // [BT][PLD]: P of the chunk (over T0 and T1)
    float* Vp = T1 + BT * KTP;  // [BT][R]: V'
    float* Vd = Vp + BT * R;    // [BT][R]: V' e^{G_last - G_i}
    float* Gs = Vd + BT * R;    // [BT]

    const int tid = threadIdx.x;
    const int j0 = blockIdx.x * R;
    const int h = blockIdx.y, kh = h % nk;
    const int rows = dv - j0 < R ? dv - j0 : R;
    const int64_t nc = (n + BT - 1) / BT, hn = (int64_t)h * n, ldo = (int64_t)nv * dv;
    float* Sh = S + ((int64_t)h * dv + j0) * dk;

    for (int e = tid; e < R * dk; e += NT) {
        const int r = e / dk, kk = e % dk;
        Ss[r * dkp + kk] = r < rows ? Sh[(int64_t)r * dk + kk] : 0.0f;
    }

    const int r = tid % R, ib = tid / R;      // V' and O: row r of S, tokens ib + 16a
    const int ku = tid % 32, ru = tid / 32;  // update: column ku of the K tile, S rows ru and ru + 8

    for (int64_t c = 0; c < nc; ++c) {
        const int64_t t0 = c * BT;
        const int L = n - t0 < BT ? (int)(n - t0) : BT;
        __syncthreads();  // the previous chunk's readers are done; Ss updates are visible
        if (tid < BT) Gs[tid] = G[hn + t0 + (tid < L ? tid : L - 1)];

        // W S^T and Q S^T over dk tiles (the old state).
        float av[4] = {0.0f, 0.0f, 0.0f, 0.0f}, ao[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k0 = 0; k0 < dk; k0 += KT) {
            __syncthreads();
            for (int e = tid; e < BT * KT; e += NT) {
                const int i = e / KT, kk = e % KT;
                const bool ok = i < L && k0 + kk < dk;
                T0[i * KTP + kk] = ok ? W[(hn + t0 + i) * dk + k0 + kk] : 0.0f;
                T1[i * KTP + kk] = ok ? qn[((t0 + i) * nk + kh) * dk + k0 + kk] : 0.0f;
            }
            __syncthreads();
            const int kt = dk - k0 < KT ? dk - k0 : KT;
            for (int kk = 0; kk < kt; ++kk) {
                const float s = Ss[r * dkp + k0 + kk];
#pragma unroll
                for (int a = 0; a < 4; ++a) {
                    av[a] += T0[(ib + 16 * a) * KTP + kk] * s;
                    ao[a] += T1[(ib + 16 * a) * KTP + kk] * s;
                }
            }
        }
        const float gl = Gs[BT - 1];  // G of the chunk's last token (padding repeats it)
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int i = ib + 16 * a;
            float v = 0.0f;
            if (i < L && r < rows) v = U[(hn + t0 + i) * dv + j0 + r] - av[a];
            Vp[i * R + r] = v;
            Vd[i * R + r] = v * expf(gl - Gs[i]);
        }
        __syncthreads();  // tiles consumed, V' complete
        const float* Pc = P + ((int64_t)h * nc + c) * BT * BT;
        for (int e = tid; e < BT * BT; e += NT) Ps[(e / BT) * PLD + e % BT] = Pc[e];
        __syncthreads();
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int i = ib + 16 * a;
            float o = expf(Gs[i]) * ao[a];
            for (int j = 0; j <= i; ++j) o += Ps[i * PLD + j] * Vp[j * R + r];
            if (i < L && r < rows) out[(t0 + i) * ldo + (int64_t)h * dv + j0 + r] = o;
        }

        // S <- e^{G_last} S + V'^T (K o e^{G_last - G}), one K tile at a time.
        const float egl = expf(gl);
        for (int k0 = 0; k0 < dk; k0 += KT) {
            __syncthreads();  // P / the previous K tile consumed
            for (int e = tid; e < BT * KT; e += NT) {
                const int i = e / KT, kk = e % KT;
                const bool ok = i < L && k0 + kk < dk;
                T0[i * KTP + kk] = ok ? kn[((t0 + i) * nk + kh) * dk + k0 + kk] : 0.0f;
            }
            __syncthreads();
            const int kk = k0 + ku;
            if (kk < dk) {
                float a0 = 0.0f, a1 = 0.0f;
                for (int i = 0; i < BT; ++i) {
                    const float kv = T0[i * KTP + ku];
                    a0 += kv * Vd[i * R + ru];
                    a1 += kv * Vd[i * R + ru + 8];
                }
                Ss[ru * dkp + kk] = egl * Ss[ru * dkp + kk] + a0;
                Ss[(ru + 8) * dkp + kk] = egl * Ss[(ru + 8) * dkp + kk] + a1;
            }
        }
    }
    __syncthreads();
    for (int e = tid; e < rows * dk; e += NT) {
        const int rr = e / dk, kk = e % dk;
        Sh[(int64_t)rr * dk + kk] = Ss[rr * dkp + kk];
    }
}

}  // namespace pq::cuda
