// qgemm_avx512.cpp: the prefill GEMM micro-kernel with AVX-512 VNNI (vpdpwssd), 4 rows x 4 tokens.
//
// Each step loads 32 packed int16 values of 4 weight rows and 4 tokens and does 16 vpdpwssd: 16
// accumulators + 8 operands fit the 32 zmm registers. The packed order (quants_internal.h) puts two
// values of the same lane side by side, so dword k of a zmm holds lane k mod 8; the two 256-bit halves
// are added at the end of a super-block to give ggml's 8 lanes, exactly (integer sums). The float steps
// per super-block are the reference's (qgemm.cpp tile_ref), in its order, on 8 lanes at once.
// Compiled with AVX-512 flags and picked at run time: it calls no inline function of the shared headers.
#include <immintrin.h>

#include <algorithm>

#include "qgemm.h"
#include "simd/avx2_util.h"
#include "simd/qgemm_glue.h"

namespace pq {

namespace {

using qi::PackedA16;
using qi::PackedW16;

// The min term of Q4_K/Q5_K for up to 4 rows x 4 tokens at once: dword 4r + t of the result is
// summ(r, t) = sum_j m_r[j] * bs8_t[j], four vpdpwssd on word pairs (j = 2k, 2k + 1). mall holds row r's
// 8 mins in 128-bit lane r; bsk[k] holds, in every 128-bit lane, dword k of the 4 tokens' bs8 (dword t).
// Two dependency chains of two (integer sums: exact in any order).
inline __m512i mins_4x4(__m512i mall, const __m512i (&bsk)[4]) {
    __m512i s0 = _mm512_madd_epi16(_mm512_shuffle_epi32(mall, (_MM_PERM_ENUM)0x00), bsk[0]);
    __m512i s1 = _mm512_madd_epi16(_mm512_shuffle_epi32(mall, (_MM_PERM_ENUM)0x55), bsk[1]);
    s0 = _mm512_dpwssd_epi32(s0, _mm512_shuffle_epi32(mall, (_MM_PERM_ENUM)0xAA), bsk[2]);
    s1 = _mm512_dpwssd_epi32(s1, _mm512_shuffle_epi32(mall, (_MM_PERM_ENUM)0xFF), bsk[3]);
    return _mm512_add_epi32(s0, s1);
}

// R rows x T tokens. The float step of a super-block is done for two tokens at once on 16 lanes
// (token 2p in lanes 0-7, 2p + 1 in 8-15: the two 256-bit halves of each int32 accumulator folded
// with one shuffle pair), which halves the per-block epilogue that bounded the 4 x 4 kernel as much as
// its 128 vpdpwssd did. The min term runs on 16 (row, token) dwords at once (mins_4x4) into its own
// float sums. Every float operation is the reference's, per (row, token), in its order.
//
// K chunks (tile_chunk): the float sums of a tile live in st (kTileState floats) between calls over
// consecutive ranges of super-blocks, so the driver can run every tile of a panel over a few blocks at
// a time while those blocks of weights and activations stay in L1 (over the whole K, a 4 x 4 tile
// streamed 80 KB per token quad from L2 and was bound by L2 bandwidth, not by vpdpwssd). Starting,
// continuing and finishing a tile in chunks gives the same float operations in the same order.
constexpr int kTileState = 4 * 2 * 16 + 16;

template <int R, int T>
void tile_body(const PackedW16* w, int64_t ws, const PackedA16* a, int64_t as, int64_t nb, bool has_min, float* st,
               int flags, float* y, int64_t ldy) {
    constexpr int TP = (T + 1) / 2;  // token pairs; an odd last token is paired with itself
    __m512 S[R][TP];
    __m512 SF;  // the min-term sums, (row, token) in dword 4r + t
    if (flags & kChunkFirst) {
        for (int r = 0; r < R; ++r)
            for (int p = 0; p < TP; ++p) S[r][p] = _mm512_setzero_ps();
        SF = _mm512_setzero_ps();
    } else {
        for (int r = 0; r < R; ++r)
            for (int p = 0; p < TP; ++p) S[r][p] = _mm512_loadu_ps(st + 16 * (2 * r + p));
        SF = _mm512_loadu_ps(st + 128);
    }
    // Lane 4r + t of the min-term vectors: which row's dmin, which token's d.
    const __m512i row_of = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int64_t i = 0; i < nb; ++i) {
        const PackedW16* wb[R];
        const PackedA16* ab[T];
        for (int r = 0; r < R; ++r) wb[r] = w + r * ws + i;
        for (int t = 0; t < T; ++t) ab[t] = a + t * as + i;
        __m512i acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
        for (int g = 0; g < QK_K / 32; ++g) {
            __m512i av[T];
            for (int t = 0; t < T; ++t) av[t] = _mm512_loadu_si512(ab[t]->a + 32 * g);
            for (int r = 0; r < R; ++r) {
                const __m512i wv = _mm512_loadu_si512(wb[r]->w + 32 * g);
                for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], wv, av[t]);
            }
        }
        __m512 adp[TP];  // token 2p's d in lanes 0-7, 2p + 1's in 8-15
        for (int p = 0; p < TP; ++p) {
            const int t1 = 2 * p + 1 < T ? 2 * p + 1 : 2 * p;
            adp[p] = _mm512_insertf32x8(_mm512_set1_ps(ab[2 * p]->d), _mm256_set1_ps(ab[t1]->d), 1);
        }
        for (int r = 0; r < R; ++r) {
            const __m512 dw = _mm512_set1_ps(wb[r]->d);
            for (int p = 0; p < TP; ++p) {
                const __m512i a0 = acc[r][2 * p], a1 = 2 * p + 1 < T ? acc[r][2 * p + 1] : a0;
                const __m512i l16 = _mm512_add_epi32(_mm512_shuffle_i64x2(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
                                                     _mm512_shuffle_i64x2(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
                S[r][p] = _mm512_add_ps(S[r][p], _mm512_mul_ps(_mm512_mul_ps(dw, adp[p]), _mm512_cvtepi32_ps(l16)));
            }
        }
        if (has_min) {
            __m512i mall = _mm512_setzero_si512();
            alignas(16) float dmv[4] = {0, 0, 0, 0};
            for (int r = 0; r < R; ++r) {
                mall = _mm512_mask_broadcast_i32x4(mall, (__mmask16)(0xFu << (4 * r)), _mm_loadu_si128((const __m128i*)wb[r]->m));
                dmv[r] = wb[r]->dmin;
            }
            const __m512 dmin = _mm512_permutexvar_ps(row_of, _mm512_castps128_ps512(_mm_load_ps(dmv)));
            // The 4 tokens' bs8 as a 4 x 4 dword matrix (token t, word pair k), transposed: bsk[k] dword t.
            __m128i b[4];
            alignas(16) float adv[4];
            for (int t = 0; t < 4; ++t) {
                b[t] = t < T ? _mm_loadu_si128((const __m128i*)ab[t]->bs8) : _mm_setzero_si128();
                adv[t] = t < T ? ab[t]->d : 0.0f;
            }
            const __m128i u0 = _mm_unpacklo_epi32(b[0], b[1]), u1 = _mm_unpackhi_epi32(b[0], b[1]);
            const __m128i u2 = _mm_unpacklo_epi32(b[2], b[3]), u3 = _mm_unpackhi_epi32(b[2], b[3]);
            const __m512i bsk[4] = {_mm512_broadcast_i32x4(_mm_unpacklo_epi64(u0, u2)),
                                    _mm512_broadcast_i32x4(_mm_unpackhi_epi64(u0, u2)),
                                    _mm512_broadcast_i32x4(_mm_unpacklo_epi64(u1, u3)),
                                    _mm512_broadcast_i32x4(_mm_unpackhi_epi64(u1, u3))};
            const __m512 ad = _mm512_broadcast_f32x4(_mm_load_ps(adv));
            // sumf -= (dmin * d_a) * summ, as the reference.
            SF = _mm512_sub_ps(SF, _mm512_mul_ps(_mm512_mul_ps(dmin, ad), _mm512_cvtepi32_ps(mins_4x4(mall, bsk))));
        }
    }
    if (!(flags & kChunkLast)) {
        for (int r = 0; r < R; ++r)
            for (int p = 0; p < TP; ++p) _mm512_storeu_ps(st + 16 * (2 * r + p), S[r][p]);
        _mm512_storeu_ps(st + 128, SF);
        return;
    }
    alignas(64) float sf[16];
    _mm512_store_ps(sf, SF);
    for (int r = 0; r < R; ++r) {
        for (int p = 0; p < TP; ++p) {
            alignas(64) float l[16];
            _mm512_store_ps(l, S[r][p]);
            for (int h = 0; h < 2 && 2 * p + h < T; ++h) {
                const int t = 2 * p + h;
                float s = sf[4 * r + t];
                for (int k = 0; k < 8; ++k) s += l[8 * h + k];
                y[t * ldy + r] = s;
            }
        }
    }
}

// The 4 x 4 VNNI tile for qgemm_glue.h.
struct Tile512 {
    static constexpr int kRows = 4;
    template <int R, int T>
    static void run(const PackedW16* w, int64_t ws, const PackedA16* a, int64_t as, int64_t nb, bool has_min,
                    float* y, int64_t ldy) {
        tile_body<R, T>(w, ws, a, as, nb, has_min, nullptr, kChunkFirst | kChunkLast, y, ldy);
    }
};

// The chunked tile (QgemmTileChunkFn): the instance for nr x nt.
using ChunkInstFn = void (*)(const PackedW16*, int64_t, const PackedA16*, int64_t, int64_t, bool, float*, int, float*,
                             int64_t);
template <int R>
constexpr ChunkInstFn chunk_inst(int nt) {
    return nt == 1 ? tile_body<R, 1> : nt == 2 ? tile_body<R, 2> : nt == 3 ? tile_body<R, 3> : tile_body<R, 4>;
}

void tile_chunk(const PackedW16* w, int64_t ws, int nr, const PackedA16* a, int64_t as, int nt, int64_t nb,
                bool has_min, float* st, int flags, float* y, int64_t ldy) {
    const ChunkInstFn f = nr >= 4 ? chunk_inst<4>(nt) : nr == 3 ? chunk_inst<3>(nt) : nr == 2 ? chunk_inst<2>(nt)
                                                                                              : chunk_inst<1>(nt);
    f(w, ws, a, as, nb, has_min, st, flags, y, ldy);
}

// ---- Decode: one weight row against a few packed tokens, unpacking each block in registers ----
// The weight is read once, straight from the mmap, and never stored unpacked: a block's nibbles are
// put in lane-pair order with one byte interleave per 16 values, widened to int16, multiplied by the
// sub-block scale and fed to vpdpwssd with the packed activation. Same lanes and float steps as tile().

// fp16 -> fp32 with F16C (exact, as formats.h's fp16_to_fp32, which this file may not call).
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Bytes b0..b15 of each 128-bit lane -> b0,b8,b1,b9,...,b7,b15, widened to 32 int16.
inline __m512i pairs_u8_to_i16(__m256i v) {
    return _mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(v, _mm256_bsrli_epi128(v, 8)));
}

// Software prefetch of the 192 bytes 1 KiB ahead of a decode kernel's read position: with the rows
// contiguous this runs into the next row near a row's end. Without it the one-thread Q4_K decode
// streamed 5.9 GB per CPU-second, with it 10.7 (the plain read loop: 12.1).
inline void prefetch_ahead(const uint8_t* p) {
    _mm_prefetch((const char*)p + 1024, _MM_HINT_T0);
    _mm_prefetch((const char*)p + 1024 + 64, _MM_HINT_T0);
    _mm_prefetch((const char*)p + 1024 + 128, _MM_HINT_T0);
}

// The same 6-bit scales and mins as 8 int16 each, computed in general registers on the three 32-bit
// words: byte stores into an array read back as one vector stall on store forwarding (two per block,
// which made the Q4_K decode slower per byte than Q6_K's).
inline void scales_k4_16(const uint8_t* q, __m128i& sc, __m128i& m) {
    uint32_t u0, u1, u2;
    __builtin_memcpy(&u0, q, 4);
    __builtin_memcpy(&u1, q + 4, 4);
    __builtin_memcpy(&u2, q + 8, 4);
    const uint32_t sc_lo = u0 & 0x3F3F3F3Fu, m_lo = u1 & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (u2 & 0x0F0F0F0Fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t m_hi = ((u2 >> 4) & 0x0F0F0F0Fu) | (((u1 >> 6) & 0x03030303u) << 4);
    sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)(sc_lo | (uint64_t)sc_hi << 32)));
    m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)(m_lo | (uint64_t)m_hi << 32)));
}

inline float finish(__m256 sums, float sumf) {
    alignas(32) float l[8];
    _mm256_store_ps(l, sums);
    for (int k = 0; k < 8; ++k) sumf += l[k];
    return sumf;
}

inline __m256i fold(__m512i acc) {
    return _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
}

// Integer accumulators per token: with few tokens a block's 8 vpdpwssd into one register are a
// latency chain (5 cycles each) that, not the loads, bounded a one-token decode; two chains halve it.
// The two are added before the float step (integer sums, exact). 8 tokens need the registers.
template <int NT>
constexpr int kChains = NT <= 4 ? 2 : 1;

// Q4_K (q5 = false) and Q5_K (q5 = true): bit 4 of value 64g+l is bit 2g of qh[l], of 64g+32+l bit 2g+1.
// NT tokens per call: each block is unpacked once and fed to every token, whose lanes and float steps
// are exactly those of a one-token call (a token's result does not depend on NT).
template <bool Q5, int NT>
void k45_rows(const uint8_t* row, const PackedA16* a, int64_t a_stride, int64_t nb, float* y, int64_t y_stride) {
    constexpr size_t kBytes = Q5 ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 sums[NT];
    float sumf[NT];
    for (int t = 0; t < NT; ++t) {
        sums[t] = _mm256_setzero_ps();
        sumf[t] = 0;
    }
    for (int64_t i = 0; i < nb; ++i, row += kBytes) {
        prefetch_ahead(row);
        const uint16_t d16 = *(const uint16_t*)row, dmin16 = *(const uint16_t*)(row + 2);
        const uint8_t* scales = row + 4;
        const uint8_t* qh = row + 16;  // Q5_K only
        const uint8_t* qs = Q5 ? row + 48 : row + 16;
        __m128i sc16, mv;
        scales_k4_16(scales, sc16, mv);
        alignas(16) int16_t sc[8];
        _mm_store_si128((__m128i*)sc, sc16);
        __m512i acc[NT], acc2[NT];  // two dependency chains per token (see kChains)
        for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = _mm512_setzero_si512();
        const __m256i h = Q5 ? _mm256_loadu_si256((const __m256i*)qh) : _mm256_setzero_si256();
        for (int g = 0; g < 4; ++g) {
            const __m256i raw = _mm256_loadu_si256((const __m256i*)(qs + 32 * g));
            __m256i lo = _mm256_and_si256(raw, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (Q5) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * g), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * g + 1), one), 4));
            }
            const __m512i wl = _mm512_mullo_epi16(pairs_u8_to_i16(lo), _mm512_set1_epi16(sc[2 * g]));
            const __m512i wh = _mm512_mullo_epi16(pairs_u8_to_i16(hi), _mm512_set1_epi16(sc[2 * g + 1]));
            for (int t = 0; t < NT; ++t) {
                const PackedA16& at = a[t * a_stride + i];
                acc[t] = _mm512_dpwssd_epi32(acc[t], wl, _mm512_loadu_si512(at.a + 64 * g));
                __m512i& ah = kChains<NT> == 2 ? acc2[t] : acc[t];
                ah = _mm512_dpwssd_epi32(ah, wh, _mm512_loadu_si512(at.a + 64 * g + 32));
            }
        }
        for (int t = 0; t < NT; ++t) {
            const PackedA16& at = a[t * a_stride + i];
            const float dd = h2f(d16) * at.d;
            const __m512i l = kChains<NT> == 2 ? _mm512_add_epi32(acc[t], acc2[t]) : acc[t];
            sums[t] = _mm256_add_ps(sums[t], _mm256_mul_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(fold(l))));
            const int32_t summ = hsum4(_mm_madd_epi16(mv, _mm_loadu_si128((const __m128i*)at.bs8)));
            const float dm = h2f(dmin16) * at.d;
            sumf[t] -= dm * (float)summ;
        }
    }
    for (int t = 0; t < NT; ++t) y[t * y_stride] = finish(sums[t], sumf[t]);
}

// Q4_K in the decode order (quants_q8.cpp q4k_dec_value): per 64 raw bytes one vpshufb and shifts/masks
// give the 128 levels as int16, pairs of the same lane side by side, where the lane-pair interleave of
// k45_rows took three shuffles per 32 values (port 5 bound that kernel to ~5 GB/s per core). Nibble
// sets 0, 1 (first byte of each word) hold even lanes 0,2,4,6 in the dwords of each 128-bit lane, sets
// 2, 3 the odd lanes; the 4 lanes x 2 are folded and interleaved to ggml's 8 lanes once per block.
template <int NT>
void q4_k_rows(const uint8_t* row, const PackedA16* a, int64_t a_stride, int64_t nb, float* y, int64_t y_stride) {
    const __m512i shuf = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
    const __m512i m4 = _mm512_set1_epi16(0x0F);
    // Scale word index per nibble set half (lo/hi) and group pair G: lanes 0-1 group 2G, lanes 2-3 group 2G+1.
    __m512i sidx[2][2];
    for (int G = 0; G < 2; ++G)
        for (int hi = 0; hi < 2; ++hi)
            sidx[G][hi] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(4 * G + hi))),
                                             _mm256_set1_epi16((short)(4 * G + 2 + hi)), 1);
    __m256 sums[NT];
    float sumf[NT];
    for (int t = 0; t < NT; ++t) {
        sums[t] = _mm256_setzero_ps();
        sumf[t] = 0;
    }
    for (int64_t i = 0; i < nb; ++i, row += sizeof(block_q4_K)) {
        prefetch_ahead(row);
        const uint16_t d16 = *(const uint16_t*)row, dmin16 = *(const uint16_t*)(row + 2);
        __m128i sc16, mv;
        scales_k4_16(row + 4, sc16, mv);
        const __m512i scz = _mm512_broadcast_i32x4(sc16);
        __m512i ae[NT], ao[NT];
        for (int t = 0; t < NT; ++t) ae[t] = ao[t] = _mm512_setzero_si512();
        for (int G = 0; G < 2; ++G) {
            const __m512i raw = _mm512_shuffle_epi8(_mm512_loadu_si512(row + 16 + 64 * G), shuf);
            const __m512i s_lo = _mm512_permutexvar_epi16(sidx[G][0], scz);
            const __m512i s_hi = _mm512_permutexvar_epi16(sidx[G][1], scz);
            const __m512i e0 = _mm512_mullo_epi16(_mm512_and_si512(raw, m4), s_lo);
            const __m512i e1 = _mm512_mullo_epi16(_mm512_and_si512(_mm512_srli_epi16(raw, 4), m4), s_hi);
            const __m512i e2 = _mm512_mullo_epi16(_mm512_and_si512(_mm512_srli_epi16(raw, 8), m4), s_lo);
            const __m512i e3 = _mm512_mullo_epi16(_mm512_srli_epi16(raw, 12), s_hi);
            for (int t = 0; t < NT; ++t) {
                const int16_t* at = a[t * a_stride + i].a + 128 * G;
                ae[t] = _mm512_dpwssd_epi32(ae[t], e0, _mm512_loadu_si512(at));
                ao[t] = _mm512_dpwssd_epi32(ao[t], e2, _mm512_loadu_si512(at + 64));
                ae[t] = _mm512_dpwssd_epi32(ae[t], e1, _mm512_loadu_si512(at + 32));
                ao[t] = _mm512_dpwssd_epi32(ao[t], e3, _mm512_loadu_si512(at + 96));
            }
        }
        for (int t = 0; t < NT; ++t) {
            const PackedA16& at = a[t * a_stride + i];
            const __m256i e8 = fold(ae[t]), o8 = fold(ao[t]);
            const __m128i e4 = _mm_add_epi32(_mm256_castsi256_si128(e8), _mm256_extracti128_si256(e8, 1));
            const __m128i o4 = _mm_add_epi32(_mm256_castsi256_si128(o8), _mm256_extracti128_si256(o8, 1));
            const __m256i l8 = _mm256_set_m128i(_mm_unpackhi_epi32(e4, o4), _mm_unpacklo_epi32(e4, o4));
            const float dd = h2f(d16) * at.d;
            sums[t] = _mm256_add_ps(sums[t], _mm256_mul_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(l8)));
            const int32_t summ = hsum4(_mm_madd_epi16(mv, _mm_loadu_si128((const __m128i*)at.bs8)));
            const float dm = h2f(dmin16) * at.d;
            sumf[t] -= dm * (float)summ;
        }
    }
    for (int t = 0; t < NT; ++t) y[t * y_stride] = finish(sums[t], sumf[t]);
}

// Q6_K: levels u (0..63) from ql/qh as in simd/quants_avx2.cpp, value (u - 32) * scale of its 16 values.
template <int NT>
void q6_k_rows(const uint8_t* row, const PackedA16* a, int64_t a_stride, int64_t nb, float* y, int64_t y_stride) {
    const __m512i off = _mm512_set1_epi16(32);
    __m256 sums[NT];
    for (int t = 0; t < NT; ++t) sums[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i, row += sizeof(block_q6_K)) {
        prefetch_ahead(row);
        _mm_prefetch((const char*)row + 1024 + 192, _MM_HINT_T0);  // 210-byte blocks
        const uint8_t* ql = row;
        const uint8_t* qhb = row + 128;
        const int8_t* scales = (const int8_t*)(row + 192);
        const uint16_t d16 = *(const uint16_t*)(row + 208);
        __m512i acc[NT], acc2[NT];
        for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = _mm512_setzero_si512();
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i*)(ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i*)(ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i*)(qhb + 32 * h));
            __m256i u[4];
            q6k_quarters(ql0, ql1, qh, u);
            for (int k = 0; k < 4; ++k) {
                const int sb = 8 * h + 2 * k;  // the two 16-value groups of this quarter
                const __m512i s = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(scales[sb]),
                                                          _mm512_set1_epi16(scales[sb + 1]));
                const __m512i w = _mm512_mullo_epi16(_mm512_sub_epi16(pairs_u8_to_i16(u[k]), off), s);
                for (int t = 0; t < NT; ++t) {
                    __m512i& ak = kChains<NT> == 2 && (k & 1) ? acc2[t] : acc[t];
                    ak = _mm512_dpwssd_epi32(ak, w, _mm512_loadu_si512(a[t * a_stride + i].a + 128 * h + 32 * k));
                }
            }
        }
        for (int t = 0; t < NT; ++t) {
            const float dd = h2f(d16) * a[t * a_stride + i].d;
            const __m512i l = kChains<NT> == 2 ? _mm512_add_epi32(acc[t], acc2[t]) : acc[t];
            sums[t] = _mm256_add_ps(sums[t], _mm256_mul_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(fold(l))));
        }
    }
    for (int t = 0; t < NT; ++t) y[t * y_stride] = finish(sums[t], 0.0f);
}

// ---- Weight packing for the prefill GEMM: one raw block -> PackedW16 with the decode kernels' unpacking ----
// The same integers as the scalar q4/q5/q6_k_pack16 (levels times their sub-block scale in lane-pair
// order), which took 7% of a pp512 profile of the 27B slice; the fp16 scales convert exactly.
void pack16_k(int type, const void* block, PackedW16* o) {
    const uint8_t* b = (const uint8_t*)block;
    if (type == T_Q6_K) {
        const __m512i off = _mm512_set1_epi16(32);
        const int8_t* scales = (const int8_t*)(b + 192);
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i*)(b + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i*)(b + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * h));
            __m256i u[4];
            q6k_quarters(ql0, ql1, qh, u);
            for (int k = 0; k < 4; ++k) {
                const int sb = 8 * h + 2 * k;
                const __m512i sc = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(scales[sb]),
                                                           _mm512_set1_epi16(scales[sb + 1]));
                _mm512_storeu_si512(o->w + 128 * h + 32 * k,
                                    _mm512_mullo_epi16(_mm512_sub_epi16(pairs_u8_to_i16(u[k]), off), sc));
            }
        }
        o->d = h2f(*(const uint16_t*)(b + 208));
        o->dmin = 0;
        _mm_storeu_si128((__m128i*)o->m, _mm_setzero_si128());
        return;
    }
    const bool q5 = type == T_Q5_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const uint8_t* qs = q5 ? b + 48 : b + 16;
    __m128i sc16, mv;
    scales_k4_16(b + 4, sc16, mv);
    alignas(16) int16_t sc[8];
    _mm_store_si128((__m128i*)sc, sc16);
    const __m256i h = q5 ? _mm256_loadu_si256((const __m256i*)(b + 16)) : _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
        const __m256i raw = _mm256_loadu_si256((const __m256i*)(qs + 32 * g));
        __m256i lo = _mm256_and_si256(raw, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if (q5) {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * g), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * g + 1), one), 4));
        }
        _mm512_storeu_si512(o->w + 64 * g, _mm512_mullo_epi16(pairs_u8_to_i16(lo), _mm512_set1_epi16(sc[2 * g])));
        _mm512_storeu_si512(o->w + 64 * g + 32, _mm512_mullo_epi16(pairs_u8_to_i16(hi), _mm512_set1_epi16(sc[2 * g + 1])));
    }
    o->d = h2f(*(const uint16_t*)b);
    o->dmin = h2f(*(const uint16_t*)(b + 2));
    _mm_storeu_si128((__m128i*)o->m, mv);
}

template <int NT>
void rows_nt(int type, const uint8_t* w, const PackedA16* a, int64_t a_stride, int64_t nb, float* y, int64_t ys) {
    switch (type) {
        case T_Q4_K: q4_k_rows<NT>(w, a, a_stride, nb, y, ys); break;
        case T_Q5_K: k45_rows<true, NT>(w, a, a_stride, nb, y, ys); break;
        default: q6_k_rows<NT>(w, a, a_stride, nb, y, ys); break;
    }
}

// y[t * y_stride] = dot(row, token t) for t < nt: up to 8 tokens per pass over the row (8 int32
// accumulators + the unpacked weights fit the 32 zmm registers), so a verification of up to 8 tokens
// reads and unpacks each weight byte once.
void rows_dot(int type, const void* w, const PackedA16* a, int64_t a_stride, int nt, int64_t nb, float* y,
              int64_t y_stride) {
    const uint8_t* row = (const uint8_t*)w;
    for (int t = 0; t < nt; t += 8) {
        const PackedA16* at = a + t * a_stride;
        float* yt = y + t * y_stride;
        switch (std::min(8, nt - t)) {
            case 8: rows_nt<8>(type, row, at, a_stride, nb, yt, y_stride); break;
            case 7: rows_nt<7>(type, row, at, a_stride, nb, yt, y_stride); break;
            case 6: rows_nt<6>(type, row, at, a_stride, nb, yt, y_stride); break;
            case 5: rows_nt<5>(type, row, at, a_stride, nb, yt, y_stride); break;
            case 4: rows_nt<4>(type, row, at, a_stride, nb, yt, y_stride); break;
            case 3: rows_nt<3>(type, row, at, a_stride, nb, yt, y_stride); break;
            case 2: rows_nt<2>(type, row, at, a_stride, nb, yt, y_stride); break;
            default: rows_nt<1>(type, row, at, a_stride, nb, yt, y_stride); break;
        }
    }
}

// ---- Decode of Q8_0 and IQ4_XS: one raw weight row against up to 8 PackedA8 tokens ----
// 16 groups of 32 per step: two groups per zmm (levels + 128, as vpdpbusd's unsigned operand), one
// vpdpbusd per pair and token, a transposing reduction to the 16 group sums in order, minus 128 *
// sum(a); then the reference's float step on 16 lanes and the 16 adds into sumf in group order (the
// reference dots' serial sum). Each token's result is that of a one-token call.

// s[j]: dwords 0-7 sum block 2j, dwords 8-15 block 2j+1 -> the 16 block sums, block i in dword i.
inline __m512i block_sums16(const __m512i (&s)[8]) {
    __m512i t[4], u[2];
    for (int j = 0; j < 4; ++j)
        t[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2 * j], s[2 * j + 1]), _mm512_unpackhi_epi32(s[2 * j], s[2 * j + 1]));
    for (int j = 0; j < 2; ++j)
        u[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * j], t[2 * j + 1]), _mm512_unpackhi_epi64(t[2 * j], t[2 * j + 1]));
    // u[j] 128-bit lane L, dword q: the part of s[4j + q] in its lane L (blocks 2(4j+q) in L 0-1, +1 in L 2-3).
    const __m512i v = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    // v lanes: blocks {0,2,4,6}, {1,3,5,7}, {8,10,12,14}, {9,11,13,15}.
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15), v);
}

// The 16 groups g..g+15 of NT tokens against the weight groups in wv (levels + 128, two groups per
// register): sumf[t] += c * sumi per group in order, c = d_w * d_a (SCALED: times ls), as the reference
// dots' float steps (q8_0_vec_dot: sumi * (d_w * d_a); iq4_xs_vec_dot: (d_w * d_a * ls) * sumi).
template <int NT, bool SCALED>
inline void groups16(const __m512i (&wv)[8], __m512 dw, __m512 ls, const qi::PackedA8* a, int64_t as, int64_t g,
                     float* sumf) {
    const __m512i a_idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32((int)(sizeof(qi::PackedA8) / 4)));
    for (int t = 0; t < NT; ++t) {
        const qi::PackedA8* at = a + t * as + g;
        __m512i sv[8];
        for (int j = 0; j < 8; ++j) {
            const __m512i av = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)at[2 * j].q)),
                                                  _mm256_loadu_si256((const __m256i*)at[2 * j + 1].q), 1);
            sv[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[j], av);
        }
        const __m512i asum = _mm512_i32gather_epi32(a_idx, &at[0].sum, 4);
        const __m512 ad = _mm512_i32gather_ps(a_idx, &at[0].d, 4);
        const __m512i sumi = _mm512_sub_epi32(block_sums16(sv), _mm512_slli_epi32(asum, 7));
        __m512 c = _mm512_mul_ps(dw, ad);
        if (SCALED) c = _mm512_mul_ps(c, ls);
        alignas(64) float prod[16];
        _mm512_store_ps(prod, _mm512_mul_ps(c, _mm512_cvtepi32_ps(sumi)));
        for (int i = 0; i < 16; ++i) sumf[t] += prod[i];
    }
}

template <int NT>
void q8_0_rows(const uint8_t* row, const qi::PackedA8* a, int64_t as, int64_t ng, float* y, int64_t ys) {
    constexpr int64_t kB = sizeof(block_q8_0);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    float sumf[NT];
    for (int t = 0; t < NT; ++t) sumf[t] = 0;
    int64_t g = 0;
    for (; g + 16 <= ng; g += 16) {
        const uint8_t* b = row + g * kB;
        for (int k = 0; k < 9; ++k) _mm_prefetch((const char*)b + 1024 + 64 * k, _MM_HINT_T0);  // 544 bytes/step
        __m512i wv[8];
        alignas(32) uint16_t dh[16];
        for (int i = 0; i < 16; ++i) __builtin_memcpy(&dh[i], b + i * kB, 2);
        for (int j = 0; j < 8; ++j) {
            const __m256i lo = _mm256_loadu_si256((const __m256i*)(b + 2 * j * kB + 2));
            const __m256i hi = _mm256_loadu_si256((const __m256i*)(b + (2 * j + 1) * kB + 2));
            wv[j] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), flip);
        }
        groups16<NT, false>(wv, _mm512_cvtph_ps(_mm256_load_si256((const __m256i*)dh)), _mm512_setzero_ps(), a, as, g,
                            sumf);
    }
    for (; g < ng; ++g) {
        const block_q8_0& bw = *(const block_q8_0*)(row + g * kB);
        for (int t = 0; t < NT; ++t) {
            const qi::PackedA8& at = a[t * as + g];
            int32_t sumi = 0;
            for (int j = 0; j < 32; ++j) sumi += bw.qs[j] * at.q[j];
            sumf[t] += (float)sumi * (h2f(bw.d) * at.d);
        }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = sumf[t];
}

// IQ4_XS: two super-blocks (16 groups of 32) per step. A group's 16 bytes give its values 0-15 (low
// nibbles) and 16-31 (high); one in-lane byte shuffle looks the 4-bit indices up in the codebook.
inline int iq4_xs_ls(const uint8_t* blk, int ib) {
    const int lo = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
    const int hi = (*(const uint16_t*)(blk + 2) >> (2 * ib)) & 3;
    return (lo | (hi << 4)) - 32;
}

template <int NT>
void iq4_xs_rows(const uint8_t* row, const qi::PackedA8* a, int64_t as, int64_t ng, float* y, int64_t ys) {
    constexpr int64_t kB = sizeof(block_iq4_xs);
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)kvalues_iq4nl));
    const __m512i flip = _mm512_set1_epi8((char)0x80), m4 = _mm512_set1_epi8(0x0F);
    float sumf[NT];
    for (int t = 0; t < NT; ++t) sumf[t] = 0;
    int64_t g = 0;
    for (; g + 16 <= ng; g += 16) {
        const uint8_t* b = row + (g / 8) * kB;
        prefetch_ahead(b);
        prefetch_ahead(b + 192);
        __m512i wv[8];
        alignas(64) float ls[16];
        for (int sb = 0; sb < 2; ++sb) {
            const uint8_t* blk = b + sb * kB;
            for (int ib = 0; ib < 8; ++ib) ls[8 * sb + ib] = (float)iq4_xs_ls(blk, ib);
            for (int p = 0; p < 4; ++p) {
                const __m512i raw = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(blk + 8 + 32 * p)));
                const __m512i nib = _mm512_inserti64x4(_mm512_and_si512(raw, m4),
                                                       _mm512_castsi512_si256(_mm512_and_si512(_mm512_srli_epi16(raw, 4), m4)), 1);
                // lanes lo(2p), lo(2p+1), hi(2p), hi(2p+1) -> lo(2p), hi(2p), lo(2p+1), hi(2p+1)
                const __m512i idx = _mm512_shuffle_i64x2(nib, nib, _MM_SHUFFLE(3, 1, 2, 0));
                wv[4 * sb + p] = _mm512_xor_si512(_mm512_shuffle_epi8(lut, idx), flip);
            }
        }
        const __m512 dw = _mm512_insertf32x8(_mm512_set1_ps(h2f(*(const uint16_t*)b)),
                                             _mm256_set1_ps(h2f(*(const uint16_t*)(b + kB))), 1);
        groups16<NT, true>(wv, dw, _mm512_load_ps(ls), a, as, g, sumf);
    }
    for (; g < ng; ++g) {  // an odd last super-block
        const uint8_t* blk = row + (g / 8) * kB;
        const int ib = (int)(g % 8);
        const uint8_t* qs = blk + 8 + 16 * ib;
        for (int t = 0; t < NT; ++t) {
            const qi::PackedA8& at = a[t * as + g];
            int32_t sumi = 0;
            for (int j = 0; j < 16; ++j) sumi += kvalues_iq4nl[qs[j] & 0xF] * at.q[j] + kvalues_iq4nl[qs[j] >> 4] * at.q[j + 16];
            sumf[t] += ((h2f(*(const uint16_t*)blk) * at.d) * (float)iq4_xs_ls(blk, ib)) * (float)sumi;
        }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = sumf[t];
}

template <int NT>
void rows8_nt(int type, const uint8_t* row, const qi::PackedA8* a, int64_t as, int64_t ng, float* y, int64_t ys) {
    if (type == T_IQ4_XS) iq4_xs_rows<NT>(row, a, as, ng, y, ys);
    else q8_0_rows<NT>(row, a, as, ng, y, ys);
}

void rows8_dot(int type, const void* w, const qi::PackedA8* a, int64_t as, int nt, int64_t ng, float* y, int64_t ys) {
    const uint8_t* row = (const uint8_t*)w;
    for (int t = 0; t < nt; t += 8) {
        const qi::PackedA8* at = a + t * as;
        float* yt = y + t * ys;
        switch (std::min(8, nt - t)) {
            case 8: rows8_nt<8>(type, row, at, as, ng, yt, ys); break;
            case 7: rows8_nt<7>(type, row, at, as, ng, yt, ys); break;
            case 6: rows8_nt<6>(type, row, at, as, ng, yt, ys); break;
            case 5: rows8_nt<5>(type, row, at, as, ng, yt, ys); break;
            case 4: rows8_nt<4>(type, row, at, as, ng, yt, ys); break;
            case 3: rows8_nt<3>(type, row, at, as, ng, yt, ys); break;
            case 2: rows8_nt<2>(type, row, at, as, ng, yt, ys); break;
            default: rows8_nt<1>(type, row, at, as, ng, yt, ys); break;
        }
    }
}

// ---- 32-value groups (Q8_0, IQ4_XS): 16 rows x T tokens, rows in the dword lanes ----
// Per group: 8 vpdpbusd per token (4 values of all 16 rows against 4 broadcast activation bytes), the
// accumulator started at -128 * sum(activations) to take out the +128 of the stored levels; then the
// reference's float step on the 16 rows at once, groups in order.
template <int T, bool SCALED>
void tile8(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t as, float* y, int64_t ldy,
           int nr) {
    const __mmask16 mask = (__mmask16)((1u << nr) - 1);
    __m512 sumf[T];
    for (int t = 0; t < T; ++t)
        sumf[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        const qi::PackedW8& wg = w[g];
        const qi::PackedA8* ag[T];
        __m512i acc[T];
        for (int t = 0; t < T; ++t) {
            ag[t] = a + t * as + g;
            acc[t] = _mm512_set1_epi32(-128 * ag[t]->sum);
        }
        for (int k = 0; k < 8; ++k) {
            const __m512i wv = _mm512_loadu_si512(wg.q[k]);
            for (int t = 0; t < T; ++t) {
                int32_t a4;
                __builtin_memcpy(&a4, ag[t]->q + 4 * k, 4);
                acc[t] = _mm512_dpbusd_epi32(acc[t], wv, _mm512_set1_epi32(a4));
            }
        }
        const __m512 dv = _mm512_loadu_ps(wg.d);
        for (int t = 0; t < T; ++t) {
            __m512 c = _mm512_mul_ps(dv, _mm512_set1_ps(ag[t]->d));
            if (SCALED) c = _mm512_mul_ps(c, _mm512_loadu_ps(wg.ls));
            sumf[t] = _mm512_add_ps(sumf[t], _mm512_mul_ps(c, _mm512_cvtepi32_ps(acc[t])));
        }
    }
    for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, sumf[t]);
}

template <bool SCALED>
void tile8_nt(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t as, int nt, float* y, int64_t ldy,
              int nr) {
    switch (nt) {
        case 8: tile8<8, SCALED>(w, ng, a, as, y, ldy, nr); break;
        case 7: tile8<7, SCALED>(w, ng, a, as, y, ldy, nr); break;
        case 6: tile8<6, SCALED>(w, ng, a, as, y, ldy, nr); break;
        case 5: tile8<5, SCALED>(w, ng, a, as, y, ldy, nr); break;
        case 4: tile8<4, SCALED>(w, ng, a, as, y, ldy, nr); break;
        case 3: tile8<3, SCALED>(w, ng, a, as, y, ldy, nr); break;
        case 2: tile8<2, SCALED>(w, ng, a, as, y, ldy, nr); break;
        default: tile8<1, SCALED>(w, ng, a, as, y, ldy, nr); break;
    }
}

void tile8_any(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t as, int nt, bool scaled, float* y,
               int64_t ldy, int nr) {
    if (scaled) tile8_nt<true>(w, ng, a, as, nt, y, ldy, nr);
    else tile8_nt<false>(w, ng, a, as, nt, y, ldy, nr);
}

}  // namespace

extern const QgemmKernels kQgemmAvx512;
const QgemmKernels kQgemmAvx512 = {"avx512vnni", 4, 4, tile_any<Tile512>, rows_dot, 8, tile8_any, rows8_dot,
                                   tile_chunk, kTileState, pack16_k};

}  // namespace pq
