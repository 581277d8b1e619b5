// qgemm_amx.cpp: the k-quant prefill GEMM tile with AMX-INT8 (tdpbssd), 16 rows x 16 tokens.
//
// The PackedWK weights (quants_internal.h: dword k of 16 rows in one 64-byte line) are already the B
// operand's layout of tdpbssd (K/4 rows of N x 4 bytes), and the PackedAK activations of 16 tokens are
// the A operand (one token per tile row, its bytes in order, rows sizeof(PackedAK) * a_stride apart).
// Per sub-block j one tdpbssd gives the 16 x 16 (token, row) integer dots of its 32 (Q6_K: 16) values
// (levels 0..63 fit the signed bytes); they are stored, Q6_K's -32 offset added (-32 * the token's sum
// over the sub-block), multiplied by the rows' scales of j and added into the super-block's isum with
// AVX-512, exactly as the VNNI kernel (qgemm_avx512.cpp tile_k_body) does; then the spec's float steps
// per super-block. All integer sums are exact, so the results are the reference's bits.
//
// Linux hands out the tile data state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, once per
// process): qgemm_amx_ready() asks for it and reports whether the CPU and kernel allow AMX; when not,
// this set is not offered and the AVX-512 one runs.
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "qgemm.h"

namespace pq {

namespace {

struct alignas(64) TileConfig {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// Integer epilogue of sub-block j: S[t] += (C[t] (+ Q6_K's offset)) * the rows' scales of j.
template <bool Q6>
inline void add_scaled(__m512i (&S)[16], const int32_t (&c)[16][16], const qi::PackedWK& wb, int j,
                       const qi::PackedAK* a, int64_t as, int64_t i) {
    const __m512i scv = _mm512_load_si512(wb.sc[j]);
    for (int t = 0; t < 16; ++t) {
        __m512i v = _mm512_load_si512(c[t]);
        if (Q6) v = _mm512_add_epi32(v, _mm512_set1_epi32(a[t * as + i].off6[j]));
        S[t] = _mm512_add_epi32(S[t], _mm512_mullo_epi32(v, scv));
    }
}

// Tiles: 0-3: C of two pairs of sub-blocks (16 tokens x 16 int32), double-buffered; 4, 5: A (16 tokens x
// KB bytes); 6, 7: B (KB / 4 rows x 64 bytes). Tile registers are not renamed, so the sub-block pairs are
// software-pipelined: the tdpbssd of pair p run while the AVX-512 epilogue of pair p - 1 (stored one
// step earlier) runs (without it: no faster than the VNNI tile).
template <bool Q6>
void tile_amx_body(const qi::PackedWK* w, int nr, const qi::PackedAK* a, int64_t as, int nt, int64_t nb, float* st,
                   int flags, float* y, int64_t ldy) {
    constexpr int NJ = Q6 ? 16 : 8, KJ = 64 / NJ, KB = 4 * KJ;  // sub-blocks; dwords and bytes of one
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int c = 0; c < 4; ++c) cfg.rows[c] = 16, cfg.colsb[c] = 64;
    for (int c = 4; c < 6; ++c) cfg.rows[c] = 16, cfg.colsb[c] = KB;
    for (int c = 6; c < 8; ++c) cfg.rows[c] = KJ, cfg.colsb[c] = 64;
    _tile_loadconfig(&cfg);
    const size_t astride = (size_t)as * sizeof(qi::PackedAK);
    alignas(64) int32_t cbuf[2][2][16][16];
    alignas(64) float F[16][16];
    for (int t = 0; t < 16; ++t)
        _mm512_store_ps(F[t], (flags & kChunkFirst) ? _mm512_setzero_ps() : _mm512_loadu_ps(st + 16 * t));
    for (int64_t i = 0; i < nb; ++i) {
        const qi::PackedWK& wb = w[i];
        const uint8_t* abase = (const uint8_t*)(a + i);
        __m512i S[16];
        for (int t = 0; t < 16; ++t) S[t] = _mm512_setzero_si512();
        for (int p = 0; p <= NJ / 2; ++p) {
            const int j0 = 2 * p;
            if (p < NJ / 2) {
                if (p % 2 == 0) {
                    _tile_zero(0);
                    _tile_zero(1);
                } else {
                    _tile_zero(2);
                    _tile_zero(3);
                }
                _tile_loadd(4, abase + KB * j0, astride);
                _tile_loadd(5, abase + KB * (j0 + 1), astride);
                _tile_loadd(6, wb.q[KJ * j0], 64);
                _tile_loadd(7, wb.q[KJ * (j0 + 1)], 64);
                if (p % 2 == 0) {
                    _tile_dpbssd(0, 4, 6);
                    _tile_dpbssd(1, 5, 7);
                    _tile_stored(0, cbuf[0][0], 64);
                    _tile_stored(1, cbuf[0][1], 64);
                } else {
                    _tile_dpbssd(2, 4, 6);
                    _tile_dpbssd(3, 5, 7);
                    _tile_stored(2, cbuf[1][0], 64);
                    _tile_stored(3, cbuf[1][1], 64);
                }
            }
            if (p > 0) {
                const int q = (p - 1) % 2;
                add_scaled<Q6>(S, cbuf[q][0], wb, j0 - 2, a, as, i);
                add_scaled<Q6>(S, cbuf[q][1], wb, j0 - 1, a, as, i);
            }
        }
        const __m512 dw = _mm512_load_ps(wb.d);
        for (int t = 0; t < 16; ++t) {
            const qi::PackedAK& at = a[t * as + i];
            __m512 f = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(at.d)), _mm512_cvtepi32_ps(S[t]),
                                       _mm512_load_ps(F[t]));
            if (!Q6) {
                __m512i M = _mm512_madd_epi16(_mm512_load_si512(wb.m[0]), _mm512_set1_epi32(at.bs8p[0]));
                for (int k = 1; k < 4; ++k)
                    M = _mm512_dpwssd_epi32(M, _mm512_load_si512(wb.m[k]), _mm512_set1_epi32(at.bs8p[k]));
                f = _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_load_ps(wb.dmin), _mm512_set1_ps(at.d)),
                                     _mm512_cvtepi32_ps(M), f);
            }
            _mm512_store_ps(F[t], f);
        }
    }
    _tile_release();
    if (!(flags & kChunkLast)) {
        for (int t = 0; t < 16; ++t) _mm512_storeu_ps(st + 16 * t, _mm512_load_ps(F[t]));
        return;
    }
    const __mmask16 mask = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    for (int t = 0; t < nt; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, _mm512_load_ps(F[t]));
}

}  // namespace

// QgemmTileKFn for up to 4 groups of 16 rows x 16 tokens (the activations must hold 16 tokens: the
// driver pads with zeros), the groups one after the other over the same K range. Q4_K, 1 thread, K 5120,
// GMAC per CPU-second: 4 groups over the whole K 163-167, 1 group 153-155; 4 groups in K chunks of 1, 2
// and 4 super-blocks (activations from L1 for all groups) 122, 134, 157: the per-call tile setup costs
// more than the strided activation loads from L2.
void qgemm_amx_tile_k(int type, const qi::PackedWK* w, int64_t ws, int nr, const qi::PackedAK* a, int64_t as,
                      int nt, int64_t nb, float* st, int flags, float* y, int64_t ldy) {
    for (int g = 0; 16 * g < nr; ++g) {
        const int rows = nr - 16 * g < 16 ? nr - 16 * g : 16;
        if (type == T_Q6_K) tile_amx_body<true>(w + g * ws, rows, a, as, nt, nb, st + 256 * g, flags, y + 16 * g, ldy);
        else tile_amx_body<false>(w + g * ws, rows, a, as, nt, nb, st + 256 * g, flags, y + 16 * g, ldy);
    }
}

bool qgemm_amx_ready() {
    static const bool ok = [] {
        unsigned eax, ebx, ecx, edx;
        if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
        const bool amx_tile = (edx >> 24) & 1, amx_int8 = (edx >> 25) & 1;
        if (!amx_tile || !amx_int8) return false;
        constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return ok;
}

}  // namespace pq
