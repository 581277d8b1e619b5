// qgemm.cpp: the prefill GEMM driver (packing, cache blocking, threads) and the scalar micro-kernel.
#include "qgemm.h"

#include "simd/dispatch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace pq {

using qi::PackedA16;
using qi::PackedW16;

namespace {

// The plain micro-kernel: per (row, token, super-block) the exact integer dot isum (the packed weights
// already carry their sub-block scales) and the min term summ, then the spec's float steps
// (kx_vec_dot in quants_q4k_q5k.cpp, q6_k_dot in quants_q6k.cpp) into one accumulator.
void tile_ref(const PackedW16* w, int64_t ws, int nr, const PackedA16* a, int64_t as, int nt, int64_t nb,
              bool has_min, float* y, int64_t ldy) {
    for (int r = 0; r < nr; ++r) {
        for (int t = 0; t < nt; ++t) {
            float acc = 0;
            for (int64_t i = 0; i < nb; ++i) {
                const PackedW16& wb = w[r * ws + i];
                const PackedA16& ab = a[t * as + i];
                int32_t isum = 0;
                for (int e = 0; e < QK_K; ++e) isum += (int32_t)wb.w[e] * ab.a[e];
                acc = std::fma(wb.d * ab.d, (float)isum, acc);
                if (has_min) {
                    int32_t summ = 0;
                    for (int j = 0; j < 8; ++j) summ += (int32_t)wb.m[j] * ab.bs8[j];
                    acc = std::fma(-(wb.dmin * ab.d), (float)summ, acc);
                }
            }
            y[t * ldy + r] = acc;
        }
    }
}

// The plain 32-value group kernel: each group's integer sum, then the reference's float step
// (q8_0_vec_dot: sumi * (d_w * d_a); iq4_xs_vec_dot: (d_w * d_a * ls) * sumi), groups in order.
void tile8_ref(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t as, int nt, bool scaled, float* y,
               int64_t ldy, int nr) {
    for (int r = 0; r < nr; ++r) {
        for (int t = 0; t < nt; ++t) {
            float sumf = 0;
            for (int64_t g = 0; g < ng; ++g) {
                const qi::PackedA8& ag = a[t * as + g];
                int32_t sumi = 0;
                for (int e = 0; e < 32; ++e) sumi += (w[g].q[e / 4][r][e % 4] - 128) * ag.q[e];
                float c = w[g].d[r] * ag.d;
                if (scaled) c = c * w[g].ls[r];
                sumf += c * (float)sumi;
            }
            y[t * ldy + r] = sumf;
        }
    }
}

const QgemmKernels kRef = {"ref", 4, 4, tile_ref, nullptr, 4, tile8_ref, nullptr};

}  // namespace

#if defined(PQ_HAVE_AVX2_KERNELS)
extern const QgemmKernels kQgemmAvx2;  // simd/qgemm_avx2.cpp
#endif
#if defined(PQ_HAVE_AVX512_KERNELS)
extern const QgemmKernels kQgemmAvx512;  // simd/qgemm_avx512.cpp
#endif
#if defined(PQ_HAVE_AMX_KERNELS)
// simd/qgemm_amx.cpp: the k-quant tile with AMX-INT8 (16 rows x 16 tokens); the rest of the set is the
// AVX-512 one.
void qgemm_amx_tile_k(int type, const qi::PackedWK* w, int64_t ws, int nr, const qi::PackedAK* a, int64_t as, int nt,
                      int64_t nb, float* st, int flags, float* y, int64_t ldy);
bool qgemm_amx_ready();
static const QgemmKernels* amx_set() {
    static const QgemmKernels k = [] {
        QgemmKernels s = kQgemmAvx512;
        s.name = "amx";
        s.rg_k = 4;
        s.tmax_k = 16;
        s.tile_k = qgemm_amx_tile_k;
        return s;
    }();
    return &k;
}
#endif

namespace {

const QgemmKernels* pick() {
    const char* env = std::getenv("PYQWEN_SIMD");
    if (env && (!std::strcmp(env, "off") || !std::strcmp(env, "ref"))) return &kRef;
    // PYQWEN_QGEMM=<set name> picks a set (when compiled in and supported here), e.g. "amx", which is not
    // the default: on this host its Q4_K tile measured 163-167 against the VNNI tile's 154-158 GMAC per
    // CPU-second and its Q6_K tile 115 against 143 (1 thread, K 5120, 256 tokens, interleaved runs): the
    // per-sub-block integer scaling on AVX-512 after each tdpbssd, not the tile multiply, bounds it.
    if (const char* q = std::getenv("PYQWEN_QGEMM"))
        if (const QgemmKernels* k = qgemm_kernels_named(q)) return k;
    if (const QgemmKernels* k = qgemm_kernels_named("avx512vnni")) return k;
    if (const QgemmKernels* k = qgemm_kernels_named("avx2")) return k;
    return &kRef;
}

using PackFn = void (*)(const void*, PackedW16*);

PackFn pack_fn(int type) {
    switch (type) {
        case T_Q4_K: return qi::q4_k_pack16;
        case T_Q5_K: return qi::q5_k_pack16;
        case T_Q6_K: return qi::q6_k_pack16;
        default: return nullptr;
    }
}

// Rows unpacked together: their packed blocks (kPanel * nb * 576 bytes) stay in L2 while every
// token tile of the call runs over them. 32 rather than 16: with the K chunks of tile_chunk a chunk of
// the panel is reused by twice the tiles while in L1 (Q4_K, K 5120, 256 tokens: 78-81 against 65-74
// GMAC per CPU-second, one thread, interleaved runs).
constexpr int64_t kPanel = 32;

}  // namespace

const QgemmKernels* qgemm_kernels_named(const char* name) {
    if (!std::strcmp(name, "ref")) return &kRef;
#if defined(PQ_HAVE_AVX2_KERNELS)
    if (!std::strcmp(name, "avx2") && cpu_supports("avx2")) return &kQgemmAvx2;
#endif
#if defined(PQ_HAVE_AVX512_KERNELS)
    if (!std::strcmp(name, "avx512vnni") && cpu_supports("avx512")) return &kQgemmAvx512;
#endif
#if defined(PQ_HAVE_AMX_KERNELS)
    if (!std::strcmp(name, "amx") && cpu_supports("avx512") && qgemm_amx_ready()) return amx_set();
#endif
    return nullptr;
}

const QgemmKernels& qgemm_kernels() {
    static const QgemmKernels* k = pick();
    return *k;
}

// The 32-value group types: how a weight row is packed, how activations are quantized (as the reference
// dot's vec_dot_type), and whether the float step has the sub-block scale.
struct Group8Type {
    void (*pack_row)(const void* row, int64_t ng, int r, qi::PackedW8* panel);
    void (*pack_act)(const float* x, int64_t n, qi::PackedA8* out);
    bool scaled;
};

const Group8Type* group8_type(int type) {
    static const Group8Type q8_0 = {qi::q8_0_pack8, qi::q8_0_pack_a8, false};
    static const Group8Type iq4_xs = {qi::iq4_xs_pack8, qi::q8_k_pack_a8, true};
    switch (type) {
        case T_Q8_0: return &q8_0;
        case T_IQ4_XS: return &iq4_xs;
        default: return nullptr;
    }
}

bool qgemm_supported(int type) { return pack_fn(type) != nullptr || group8_type(type) != nullptr; }

// Q8_0 / IQ4_XS: panels of 16 rows (one PackedW8 per group), every token tile over the panel.
static void qgemm8(ThreadPool& pool, const QgemmKernels& k, const Group8Type& gt, const Tensor& W, const float* x,
                   int64_t n_tok, float* y) {
    const int64_t K = W.ne0, N = W.ne1, ng = K / 32;
    std::vector<qi::PackedA8> act((size_t)(n_tok * ng));
    pool.parallel_for(n_tok, [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) gt.pack_act(x + t * K, K, &act[t * ng]);
    });
    const int64_t n_panels = (N + 15) / 16;
    pool.parallel_for(n_panels, [&](int64_t p0, int64_t p1, int) {
        std::vector<qi::PackedW8> panel((size_t)ng);
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t row0 = p * 16;
            const int rows = (int)std::min<int64_t>(16, N - row0);
            for (int r = 0; r < 16; ++r) {
                if (r < rows) gt.pack_row(W.row(row0 + r), ng, r, panel.data());
                else qi::pack8_clear_row(ng, r, panel.data());
            }
            // No K blocking: splitting K into blocks of 512 or 2048 values measured no faster here
            // (Q8_0, K = 17408, 256 tokens: the panel's 348 KB stay in L2 across the token tiles).
            for (int64_t t0 = 0; t0 < n_tok; t0 += k.tmax8) {
                const int nt = (int)std::min<int64_t>(k.tmax8, n_tok - t0);
                k.tile8(panel.data(), ng, &act[t0 * ng], ng, nt, gt.scaled, y + t0 * N + row0, N, rows);
            }
        }
    });
}

// Activations -> Q8_K with the reference quantizer (the same blocks vec_dot would see), repacked (by
// default in the GEMM's lane-pair order).
static void pack_activations(ThreadPool& pool, const float* x, int64_t n_tok, int64_t K, std::vector<PackedA16>& act,
                             void (*pack)(const void*, PackedA16*) = qi::q8_k_pack16) {
    const int64_t nb = K / QK_K;
    act.resize((size_t)(n_tok * nb));
    pool.parallel_for(n_tok, [&](int64_t t0, int64_t t1, int) {
        std::vector<block_q8_K> q((size_t)nb);
        for (int64_t t = t0; t < t1; ++t) {
            qi::q8_k_from_float(x + t * K, q.data(), K);
            for (int64_t i = 0; i < nb; ++i) pack(&q[i], &act[t * nb + i]);
        }
    });
}

bool qgemv(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y, const QgemmKernels* kern) {
    const QgemmKernels& k = kern ? *kern : qgemm_kernels();
    if (const Group8Type* gt = group8_type(W.type); gt && k.row8) {
        const int64_t K = W.ne0, N = W.ne1, ng = K / 32;
        std::vector<qi::PackedA8> act((size_t)(n_tok * ng));
        for (int64_t t = 0; t < n_tok; ++t) gt->pack_act(x + t * K, K, &act[t * ng]);
        pool.parallel_for(N, [&](int64_t r0, int64_t r1, int) {
            for (int64_t r = r0; r < r1; ++r) k.row8(W.type, W.row(r), act.data(), ng, (int)n_tok, ng, y + r, N);
        });
        return true;
    }
    if (!k.row || !pack_fn(W.type)) return false;
    const int64_t K = W.ne0, N = W.ne1, nb = K / QK_K;
    std::vector<PackedA16> act;
    pack_activations(pool, x, n_tok, K, act, W.type == T_Q4_K ? qi::q8_k_pack16_dec : qi::q8_k_pack16);
    // Contiguous row ranges per thread: each streams its own part of the weight once; outputs of a
    // range are written by one thread only (a shared cache line at most at the two range ends).
    pool.parallel_for(N, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
            k.row(W.type, W.row(r), act.data(), nb, (int)n_tok, nb, y + r, N);
        }
    });
    return true;
}

// Super-blocks per K chunk of the chunked tiles: a 4-row tile's 4 blocks of packed weights (9 KB) and a
// token quad's (9 KB) come from L1 for all the tiles that share them; the panel's chunk (74 KB) from
// L2 once per token quad. 4 measured faster than 2 (the per-call state traffic) and than the whole K.
// PYQWEN_QGEMM_KC overrides it (tuning only; results are the same for any value).
static int64_t chunk_blocks() {
    static const int64_t kc = [] {
        const char* e = std::getenv("PYQWEN_QGEMM_KC");
        const long v = e ? std::atol(e) : 0;
        return (int64_t)(v > 0 ? v : 4);
    }();
    return kc;
}

static int64_t chunk_tiles(const QgemmKernels& k, int64_t n_tok) {
    return ((n_tok + k.tmax - 1) / k.tmax) * ((kPanel + k.rmax - 1) / k.rmax);
}

// One panel (rows <= kPanel packed rows) against all tokens, K in chunks: for each chunk, every tile
// (token tile x row tile) runs over it, its float sums kept in state between chunks.
static void run_panel_chunked(const QgemmKernels& k, const PackedW16* panel, int64_t rows, int64_t nb,
                              const PackedA16* act, int64_t n_tok, bool has_min, std::vector<float>& state, float* y,
                              int64_t ldy) {
    const int64_t kc = chunk_blocks();
    for (int64_t k0 = 0; k0 < nb; k0 += kc) {
        const int64_t nbc = std::min(kc, nb - k0);
        const int flags = (k0 == 0 ? kChunkFirst : 0) | (k0 + nbc == nb ? kChunkLast : 0);
        float* st = state.data();
        for (int64_t t0 = 0; t0 < n_tok; t0 += k.tmax) {
            const int nt = (int)std::min<int64_t>(k.tmax, n_tok - t0);
            for (int64_t r0 = 0; r0 < rows; r0 += k.rmax, st += k.tile_state) {
                const int nr = (int)std::min<int64_t>(k.rmax, rows - r0);
                k.tile_chunk(&panel[r0 * nb + k0], nb, nr, &act[t0 * nb + k0], nb, nt, nbc, has_min, st, flags,
                             y + t0 * ldy + r0, ldy);
            }
        }
    }
}

// One Q8_K block -> PackedAK: the values, d, the int16 pairs of sums per 32 (bsums, as the reference's
// min term) and -32 times the sums per 16 from the values (as the reference's (u - 32) * q8).
static void q8_k_pack_k(const block_q8_K& b, qi::PackedAK& o) {
    std::memcpy(o.q, b.qs, QK_K);
    o.d = b.d;
    for (int k = 0; k < 4; ++k) {
        const int32_t lo = b.bsums[4 * k] + b.bsums[4 * k + 1], hi = b.bsums[4 * k + 2] + b.bsums[4 * k + 3];
        o.bs8p[k] = (int32_t)(((uint32_t)(uint16_t)(int16_t)lo) | ((uint32_t)(uint16_t)(int16_t)hi << 16));
    }
    for (int j = 0; j < 16; ++j) {
        int32_t s = 0;
        for (int e = 0; e < 16; ++e) s += b.qs[16 * j + e];
        o.off6[j] = -32 * s;
    }
}

// Super-blocks per K chunk of the PackedWK tiles (default: the kernel set's kc_k; 0 = the whole K).
// Unlike the PackedW16 tiles the VNNI ones gained nothing from chunks that keep a panel's weights in L1
// across the token tiles: with 32 rows x 4 tokens a tile reads 16 bytes of weights per vpdpbusd, which
// L2 sustains (Q4_K, 1 thread, GMAC per CPU-second: K 5120 whole 160 vs chunks of 2 blocks 145; K 17408
// whole 130 vs 4: 114, 8: 119).
// PYQWEN_QGEMM_KCK sets a chunk length (tuning only; results are the same for any value).
static int64_t chunk_blocks_k() {
    static const int64_t kc = [] {
        const char* e = std::getenv("PYQWEN_QGEMM_KCK");
        const long v = e ? std::atol(e) : 0;
        return (int64_t)(v > 0 ? v : 0);
    }();
    return kc;
}

// Q4_K/Q5_K/Q6_K with a PackedWK kernel set: panels of 16 * rg_k rows, packed once per call, every token
// tile over each K chunk of the panel.
static void qgemm_k(ThreadPool& pool, const QgemmKernels& k, const Tensor& W, const float* x, int64_t n_tok,
                    float* y) {
    const int64_t K = W.ne0, N = W.ne1, nb = K / QK_K;
    const size_t wbytes = row_bytes(W.type, QK_K);
    // Whole token tiles (zero tokens at the end): a tile may read all tmax_k tokens (the AMX one does).
    const int64_t n_pad = (n_tok + k.tmax_k - 1) / k.tmax_k * k.tmax_k;
    std::vector<qi::PackedAK> act((size_t)(n_pad * nb));
    pool.parallel_for(n_tok, [&](int64_t t0, int64_t t1, int) {
        std::vector<block_q8_K> q((size_t)nb);
        for (int64_t t = t0; t < t1; ++t) {
            if (k.pack_act_k) {
                k.pack_act_k(x + t * K, K, &act[t * nb]);
                continue;
            }
            qi::q8_k_from_float(x + t * K, q.data(), K);
            for (int64_t i = 0; i < nb; ++i) q8_k_pack_k(q[i], act[t * nb + i]);
        }
    });
    const int64_t panel_rows = 16 * (int64_t)k.rg_k, n_panels = (N + panel_rows - 1) / panel_rows;
    const int64_t kc = chunk_blocks_k() ? chunk_blocks_k() : k.kc_k ? k.kc_k : nb;
    const int64_t n_ttiles = (n_tok + k.tmax_k - 1) / k.tmax_k, st_floats = 16 * (int64_t)k.rg_k * k.tmax_k;
    pool.parallel_for(n_panels, [&](int64_t p0, int64_t p1, int) {
        std::vector<qi::PackedWK> panel((size_t)(k.rg_k * nb));
        std::vector<float> state((size_t)(n_ttiles * st_floats));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t row0 = p * panel_rows, rows = std::min(panel_rows, N - row0);
            for (int64_t r = 0; r < rows; r += 16)
                k.pack_k(W.type, W.row(row0 + r), wbytes * nb, (int)std::min<int64_t>(16, rows - r), nb,
                         &panel[(r / 16) * nb]);
            for (int64_t k0 = 0; k0 < nb; k0 += kc) {
                const int64_t nbc = std::min(kc, nb - k0);
                const int flags = (k0 == 0 ? kChunkFirst : 0) | (k0 + nbc == nb ? kChunkLast : 0);
                for (int64_t tt = 0; tt < n_ttiles; ++tt) {
                    const int64_t t0 = tt * k.tmax_k;
                    const int nt = (int)std::min<int64_t>(k.tmax_k, n_tok - t0);
                    k.tile_k(W.type, &panel[k0], nb, (int)rows, &act[t0 * nb + k0], nb, nt, nbc,
                             state.data() + tt * st_floats, flags, y + t0 * N + row0, N);
                }
            }
        }
    });
}

void qgemm(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y, const QgemmKernels* kern) {
    const QgemmKernels& k = kern ? *kern : qgemm_kernels();
    if (const Group8Type* gt = group8_type(W.type)) return qgemm8(pool, k, *gt, W, x, n_tok, y);
    const PackFn pack = pack_fn(W.type);
    if (k.tile_k) return qgemm_k(pool, k, W, x, n_tok, y);
    const int64_t K = W.ne0, N = W.ne1, nb = K / QK_K;
    const size_t wbytes = row_bytes(W.type, QK_K);
    const bool has_min = W.type != T_Q6_K;

    std::vector<PackedA16> act;
    pack_activations(pool, x, n_tok, K, act);

    const int64_t n_panels = (N + kPanel - 1) / kPanel;
    pool.parallel_for(n_panels, [&](int64_t p0, int64_t p1, int) {
        std::vector<PackedW16> panel((size_t)(kPanel * nb));
        std::vector<float> state;
        if (k.tile_chunk) state.resize((size_t)(chunk_tiles(k, n_tok) * k.tile_state));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t row0 = p * kPanel, rows = std::min(kPanel, N - row0);
            for (int64_t r = 0; r < rows; ++r) {
                const uint8_t* src = W.row(row0 + r);
                if (k.pack16) {
                    for (int64_t i = 0; i < nb; ++i) k.pack16(W.type, src + i * wbytes, &panel[r * nb + i]);
                } else {
                    for (int64_t i = 0; i < nb; ++i) pack(src + i * wbytes, &panel[r * nb + i]);
                }
            }
            if (k.tile_chunk) {
                run_panel_chunked(k, panel.data(), rows, nb, act.data(), n_tok, has_min, state, y + row0, N);
                continue;
            }
            for (int64_t t0 = 0; t0 < n_tok; t0 += k.tmax) {
                const int nt = (int)std::min<int64_t>(k.tmax, n_tok - t0);
                for (int64_t r0 = 0; r0 < rows; r0 += k.rmax) {
                    const int nr = (int)std::min<int64_t>(k.rmax, rows - r0);
                    k.tile(&panel[r0 * nb], nb, nr, &act[t0 * nb], nb, nt, nb, has_min, y + t0 * N + row0 + r0, N);
                }
            }
        }
    });
}

}  // namespace pq
