// qgemm_avx512.cpp: the prefill GEMM micro-kernels with AVX-512 VNNI and the decode row kernels.
//
// K-quants (Q4_K, Q5_K, Q6_K): 32 rows x 4 tokens per tile, unsigned levels with the rows in the dword
// lanes (PackedWK), vpdpbusd against broadcast activation bytes, an integer scale per sub-block, the
// spec's float steps once per super-block on 16 rows at once (tile_k_body). Q8_0 / IQ4_XS: tile8.
// Compiled with AVX-512 flags and picked at run time: it calls no inline function of the shared headers.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "qgemm.h"
#include "simd/avx2_util.h"
#include "simd/qgemm_glue.h"

namespace pq {

namespace {

using qi::PackedA16;

// ---- Prefill: k-quant tiles on unsigned levels, 16 rows in the dword lanes (PackedWK) ----
// Per sub-block j and token: KJ vpdpbusd (4 levels of all 16 rows against the token's 4 broadcast
// activation bytes; Q6_K's accumulator starts at -32 * the sum of the sub-block's activations, taking
// the +32 of its stored levels back out), then one vpmulld by the 16 rows' scales of j into the
// super-block's isum; per super-block the spec's float steps (quants_q4k_q5k.cpp kx_step) on 16
// rows at once, the min term of Q4_K/Q5_K from 4 vpdpwssd of the (m, m) int16 pairs against the token's
// (bs8, bs8) pairs. All integer sums are exact (bounds in quants_q4k_q5k.cpp / quants_q6k.cpp), so
// every (row, token) result is the reference's bit for bit. RG row groups x T tokens: with 2 x 4,
// 8 accumulators of the sub-block, 8 isums and 8 float sums fit the 32 zmm registers, and each loaded
// weight vector serves 4 tokens, each broadcast activation dword 2 row groups.
template <int RG, int T, bool Q6>
void tile_k_body(const qi::PackedWK* w, int64_t ws, int nr, const qi::PackedAK* a, int64_t as, int64_t nb, float* st,
                 int flags, float* y, int64_t ldy) {
    constexpr int NJ = Q6 ? 16 : 8, KJ = 64 / NJ;  // sub-blocks per super-block, dwords per sub-block
    __m512 F[RG][T];
    for (int g = 0; g < RG; ++g)
        for (int t = 0; t < T; ++t)
            F[g][t] = (flags & kChunkFirst) ? _mm512_setzero_ps() : _mm512_loadu_ps(st + 16 * (g * T + t));
    for (int64_t i = 0; i < nb; ++i) {
        const qi::PackedWK* wb[RG];
        const qi::PackedAK* ab[T];
        for (int g = 0; g < RG; ++g) wb[g] = w + g * ws + i;
        for (int t = 0; t < T; ++t) ab[t] = a + t * as + i;
        __m512i S[RG][T];
        for (int g = 0; g < RG; ++g)
            for (int t = 0; t < T; ++t) S[g][t] = _mm512_setzero_si512();
        for (int j = 0; j < NJ; ++j) {
            __m512i A[RG][T];
            for (int t = 0; t < T; ++t) {
                const __m512i init = Q6 ? _mm512_set1_epi32(ab[t]->off6[j]) : _mm512_setzero_si512();
                for (int g = 0; g < RG; ++g) A[g][t] = init;
            }
            for (int kk = 0; kk < KJ; ++kk) {
                const int k = j * KJ + kk;
                __m512i wv[RG];
                for (int g = 0; g < RG; ++g) wv[g] = _mm512_load_si512(wb[g]->q[k]);
                for (int t = 0; t < T; ++t) {
                    int32_t a4;
                    __builtin_memcpy(&a4, ab[t]->q + 4 * k, 4);
                    const __m512i bc = _mm512_set1_epi32(a4);
                    for (int g = 0; g < RG; ++g) A[g][t] = _mm512_dpbusd_epi32(A[g][t], wv[g], bc);
                }
            }
            for (int g = 0; g < RG; ++g) {
                const __m512i scv = _mm512_load_si512(wb[g]->sc[j]);
                for (int t = 0; t < T; ++t) S[g][t] = _mm512_add_epi32(S[g][t], _mm512_mullo_epi32(A[g][t], scv));
            }
        }
        for (int g = 0; g < RG; ++g) {
            const __m512 dw = _mm512_load_ps(wb[g]->d);
            for (int t = 0; t < T; ++t) {
                const __m512 da = _mm512_set1_ps(ab[t]->d);
                F[g][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(S[g][t]), F[g][t]);
            }
            if (!Q6) {
                const __m512 dmw = _mm512_load_ps(wb[g]->dmin);
                for (int t = 0; t < T; ++t) {
                    __m512i M = _mm512_madd_epi16(_mm512_load_si512(wb[g]->m[0]), _mm512_set1_epi32(ab[t]->bs8p[0]));
                    for (int k = 1; k < 4; ++k)
                        M = _mm512_dpwssd_epi32(M, _mm512_load_si512(wb[g]->m[k]), _mm512_set1_epi32(ab[t]->bs8p[k]));
                    // fma(-(dmin_w * d_a), summ, acc) == -(dmin_w * d_a) * summ + acc: vfnmadd.
                    F[g][t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmw, _mm512_set1_ps(ab[t]->d)), _mm512_cvtepi32_ps(M),
                                               F[g][t]);
                }
            }
        }
    }
    if (!(flags & kChunkLast)) {
        for (int g = 0; g < RG; ++g)
            for (int t = 0; t < T; ++t) _mm512_storeu_ps(st + 16 * (g * T + t), F[g][t]);
        return;
    }
    for (int g = 0; g < RG; ++g) {
        const int rows = nr - 16 * g;
        if (rows <= 0) break;
        const __mmask16 mask = rows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rows) - 1);
        for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * ldy + 16 * g, mask, F[g][t]);
    }
}

constexpr int kRgK = 2, kTmaxK = 4;

using TileKInstFn = void (*)(const qi::PackedWK*, int64_t, int, const qi::PackedAK*, int64_t, int64_t, float*, int,
                             float*, int64_t);
template <int RG, bool Q6>
constexpr TileKInstFn tile_k_inst(int nt) {
    return nt == 1 ? tile_k_body<RG, 1, Q6> : nt == 2 ? tile_k_body<RG, 2, Q6> : nt == 3 ? tile_k_body<RG, 3, Q6>
                                                                                       : tile_k_body<RG, 4, Q6>;
}

// QgemmTileKFn: one row group when the panel has at most 16 rows (the state layout is the same: row
// group g, token t at st + 16 * (g * T + t) with T the instance's token count, used only by calls of one
// instance).
void tile_k(int type, const qi::PackedWK* w, int64_t ws, int nr, const qi::PackedAK* a, int64_t as, int nt, int64_t nb,
            float* st, int flags, float* y, int64_t ldy) {
    const bool q6 = type == T_Q6_K;
    TileKInstFn f;
    if (nr > 16) f = q6 ? tile_k_inst<2, true>(nt) : tile_k_inst<2, false>(nt);
    else f = q6 ? tile_k_inst<1, true>(nt) : tile_k_inst<1, false>(nt);
    f(w, ws, nr, a, as, nb, st, flags, y, ldy);
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

// The spec's float steps of one super-block for NT decode tokens at once, 4 tokens per xmm (lane t of
// f[g] is token 4g + t's one float sum): isum[t] = the sum of the 16 int32 of v[t] (exact; groups of 4
// tokens share transposing adds), then per lane fma(d_w * d_a, isum, acc) and, with MIN, fma(-(dmin_w *
// d_a), summ, acc) -- lane for lane the reference's (kx_step). A horizontal reduction and scalar
// steps per token cost the multi-token Q6_K decode about a fifth of its speed per core.
template <int NT, bool MIN>
inline void kq_steps_tokens(__m128 (&f)[(NT + 3) / 4], const __m512i* v, float dw, float dmin, const PackedA16* a,
                            int64_t a_stride, int64_t i, const int32_t* summ) {
    for (int g = 0; 4 * g < NT; ++g) {
        const int t0 = 4 * g;
        __m256i h[4];
        alignas(16) float da[4];
        alignas(16) int32_t sm[4];
        for (int k = 0; k < 4; ++k) {
            const bool in = t0 + k < NT;
            h[k] = in ? _mm256_add_epi32(_mm512_castsi512_si256(v[in ? t0 + k : 0]),
                                         _mm512_extracti64x4_epi64(v[in ? t0 + k : 0], 1))
                      : _mm256_setzero_si256();
            da[k] = in ? a[(t0 + k) * a_stride + i].d : 0.0f;
            sm[k] = MIN && in ? summ[t0 + k] : 0;
        }
        // per 128-bit half: [sum4(h0), sum4(h1), sum4(h2), sum4(h3)] after two hadds.
        const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]));
        const __m128i isum = _mm_add_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
        const __m128 dav = _mm_load_ps(da);
        f[g] = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(dw), dav), _mm_cvtepi32_ps(isum), f[g]);
        if (MIN) {
            const __m128 summ4 = _mm_cvtepi32_ps(_mm_load_si128((const __m128i*)sm));
            f[g] = _mm_fnmadd_ps(_mm_mul_ps(_mm_set1_ps(dmin), dav), summ4, f[g]);
        }
    }
}

template <int NT>
inline void store_tokens(const __m128 (&f)[(NT + 3) / 4], float* y, int64_t y_stride) {
    for (int g = 0; 4 * g < NT; ++g) {
        alignas(16) float o[4];
        _mm_store_ps(o, f[g]);
        for (int k = 0; k < 4 && 4 * g + k < NT; ++k) y[(4 * g + k) * y_stride] = o[k];
    }
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
    __m128 facc[(NT + 3) / 4];  // the spec's one float sum per token (token t in lane t % 4 of facc[t / 4])
    for (auto& f : facc) f = _mm_setzero_ps();
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
            __m256i lo, hi;
            q45k_group(_mm256_loadu_si256((const __m256i*)(qs + 32 * g)), h, g, Q5, lo, hi);
            const __m512i wl = _mm512_mullo_epi16(pairs_u8_to_i16(lo), _mm512_set1_epi16(sc[2 * g]));
            const __m512i wh = _mm512_mullo_epi16(pairs_u8_to_i16(hi), _mm512_set1_epi16(sc[2 * g + 1]));
            for (int t = 0; t < NT; ++t) {
                const PackedA16& at = a[t * a_stride + i];
                acc[t] = _mm512_dpwssd_epi32(acc[t], wl, _mm512_loadu_si512(at.a + 64 * g));
                __m512i& ah = kChains<NT> == 2 ? acc2[t] : acc[t];
                ah = _mm512_dpwssd_epi32(ah, wh, _mm512_loadu_si512(at.a + 64 * g + 32));
            }
        }
        __m512i l[NT];
        int32_t summ[NT];
        for (int t = 0; t < NT; ++t) {
            l[t] = kChains<NT> == 2 ? _mm512_add_epi32(acc[t], acc2[t]) : acc[t];
            summ[t] = hsum4(_mm_madd_epi16(mv, _mm_loadu_si128((const __m128i*)a[t * a_stride + i].bs8)));
        }
        kq_steps_tokens<NT, true>(facc, l, h2f(d16), h2f(dmin16), a, a_stride, i, summ);
    }
    store_tokens<NT>(facc, y, y_stride);
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
    __m128 facc[(NT + 3) / 4];  // the spec's one float sum per token (token t in lane t % 4 of facc[t / 4])
    for (auto& f : facc) f = _mm_setzero_ps();
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
        __m512i l[NT];
        int32_t summ[NT];
        for (int t = 0; t < NT; ++t) {
            l[t] = _mm512_add_epi32(ae[t], ao[t]);
            summ[t] = hsum4(_mm_madd_epi16(mv, _mm_loadu_si128((const __m128i*)a[t * a_stride + i].bs8)));
        }
        kq_steps_tokens<NT, true>(facc, l, h2f(d16), h2f(dmin16), a, a_stride, i, summ);
    }
    store_tokens<NT>(facc, y, y_stride);
}

// Q6_K: levels u (0..63) from ql/qh as in simd/quants_avx2.cpp, value (u - 32) * scale of its 16 values.
template <int NT>
void q6_k_rows(const uint8_t* row, const PackedA16* a, int64_t a_stride, int64_t nb, float* y, int64_t y_stride) {
    const __m512i off = _mm512_set1_epi16(32);
    __m128 facc[(NT + 3) / 4];
    for (auto& f : facc) f = _mm_setzero_ps();
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
        __m512i l[NT];
        for (int t = 0; t < NT; ++t) l[t] = kChains<NT> == 2 ? _mm512_add_epi32(acc[t], acc2[t]) : acc[t];
        kq_steps_tokens<NT, false>(facc, l, h2f(d16), 0.0f, a, a_stride, i, nullptr);
    }
    store_tokens<NT>(facc, y, y_stride);
}

// ---- Weight packing for the prefill GEMM: up to 16 raw weight rows -> nb PackedWK blocks ----
// Per super-block: each row's levels as they are stored (no scale applied), unpacked with the decode
// kernels' shifts and masks into natural order in a 16 x 256-byte staging area, its scales and mins
// as int32 / int16 pairs; then four 16 x 16 dword transposes put dword k of row r at q[k][r] (dword
// scatters for the same took 4 x 16 stores per row and a quarter of a 1-thread qgemm's time).

// o[c] = dword c of r[0..15] (a 16 x 16 dword transpose; r is overwritten).
inline void transpose16(__m512i (&r)[16], __m512i (&o)[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // r[4i + q], 128-bit lane L: rows 4i..4i+3 of column 4L + q.
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int q = 0; q < 4; ++q) {
        const __m512i ab_lo = _mm512_shuffle_i32x4(r[q], r[4 + q], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i ab_hi = _mm512_shuffle_i32x4(r[q], r[4 + q], _MM_SHUFFLE(3, 2, 3, 2));
        const __m512i cd_lo = _mm512_shuffle_i32x4(r[8 + q], r[12 + q], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i cd_hi = _mm512_shuffle_i32x4(r[8 + q], r[12 + q], _MM_SHUFFLE(3, 2, 3, 2));
        o[q] = _mm512_shuffle_i32x4(ab_lo, cd_lo, _MM_SHUFFLE(2, 0, 2, 0));
        o[4 + q] = _mm512_shuffle_i32x4(ab_lo, cd_lo, _MM_SHUFFLE(3, 1, 3, 1));
        o[8 + q] = _mm512_shuffle_i32x4(ab_hi, cd_hi, _MM_SHUFFLE(2, 0, 2, 0));
        o[12 + q] = _mm512_shuffle_i32x4(ab_hi, cd_hi, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

// One raw block's 256 levels in natural order (lv), scales into o.sc[.][r], mins, d, dmin of row r.
inline void unpack_levels_k(int type, const uint8_t* b, int r, uint8_t* lv, qi::PackedWK& o) {
    if (type == T_Q6_K) {
        q6k_levels256(b, lv);
        const int8_t* scales = (const int8_t*)(b + 192);
        for (int j = 0; j < 16; ++j) o.sc[j][r] = scales[j];
        for (int k = 0; k < 4; ++k) o.m[k][r] = 0;
        o.d[r] = h2f(*(const uint16_t*)(b + 208));
        o.dmin[r] = 0;
        return;
    }
    q45k_levels256(b, type == T_Q5_K, lv);
    __m128i sc16, mv;
    scales_k4_16(b + 4, sc16, mv);
    alignas(16) int16_t sc[8], m[8];
    _mm_store_si128((__m128i*)sc, sc16);
    _mm_store_si128((__m128i*)m, mv);
    for (int j = 0; j < 8; ++j) o.sc[j][r] = sc[j];
    for (int j = 8; j < 16; ++j) o.sc[j][r] = 0;
    for (int k = 0; k < 4; ++k)
        o.m[k][r] = (int32_t)((uint32_t)(uint16_t)m[2 * k] | (uint32_t)(uint16_t)m[2 * k + 1] << 16);
    o.d[r] = h2f(*(const uint16_t*)b);
    o.dmin[r] = h2f(*(const uint16_t*)(b + 2));
}

void pack_k(int type, const void* rows, size_t row_stride, int nrows, int64_t nb, qi::PackedWK* out) {
    const size_t bytes = type == T_Q6_K ? sizeof(block_q6_K) : type == T_Q5_K ? sizeof(block_q5_K) : sizeof(block_q4_K);
    alignas(64) uint8_t lv[16][QK_K];
    for (int r = nrows; r < 16; ++r) std::memset(lv[r], 0, QK_K);
    for (int64_t i = 0; i < nb; ++i) {
        qi::PackedWK& o = out[i];
        for (int r = 0; r < nrows; ++r)
            unpack_levels_k(type, (const uint8_t*)rows + r * row_stride + i * bytes, r, lv[r], o);
        for (int r = nrows; r < 16; ++r) {  // rows that hold no weight row: all zero
            for (int j = 0; j < 16; ++j) o.sc[j][r] = 0;
            for (int k = 0; k < 4; ++k) o.m[k][r] = 0;
            o.d[r] = o.dmin[r] = 0;
        }
        for (int c = 0; c < 4; ++c) {
            __m512i rv[16], ov[16];
            for (int r = 0; r < 16; ++r) rv[r] = _mm512_load_si512(lv[r] + 64 * c);
            transpose16(rv, ov);
            for (int k = 0; k < 16; ++k) _mm512_store_si512(o.q[16 * c + k], ov[k]);
        }
    }
}

// ---- Activations of the k-quant GEMM: floats -> PackedAK, exactly as quants_q8.cpp q8_k_from_float ----
// (then qgemm.cpp q8_k_pack_k): the first value of largest magnitude sets iscale = -127 / vmax, each
// value rounds with ggml's nearest_int (add 1.5 * 2^23, read the mantissa: the same float mul and add
// per element as the scalar code), clamped at 127; the scalar quantizer took about a sixth of a
// 1-thread qgemm (Q4_K, K 5120, N 1024).
void pack_act_k(const float* x, int64_t n, qi::PackedAK* out) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        qi::PackedAK& o = out[i];
        __m512 mx = _mm512_setzero_ps();
        for (int c = 0; c < 16; ++c) mx = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + 16 * c), absmask), mx);
        const float amax = _mm512_reduce_max_ps(mx);
        if (!(amax > 0)) {  // all zero (or no value compares greater than 0, as the scalar loop)
            std::memset((void*)&o, 0, sizeof(o));
            continue;
        }
        float vmax = 0;
        for (int c = 0; c < 16; ++c) {
            const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_and_ps(_mm512_loadu_ps(x + 16 * c), absmask),
                                                    _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (eq) {
                vmax = x[16 * c + __builtin_ctz((unsigned)eq)];
                break;
            }
        }
        const float iscale = -127.f / vmax;
        const __m512 is = _mm512_set1_ps(iscale), magic = _mm512_set1_ps(12582912.f);
        const __m512i mant = _mm512_set1_epi32(0x007FFFFF), bias = _mm512_set1_epi32(0x00400000);
        const __m512i top = _mm512_set1_epi32(127);
        alignas(64) int32_t bs16[16];
        for (int c = 0; c < 16; ++c) {
            const __m512 v = _mm512_add_ps(_mm512_mul_ps(is, _mm512_loadu_ps(x + 16 * c)), magic);
            __m512i q = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(v), mant), bias);
            q = _mm512_min_epi32(q, top);
            _mm_storeu_si128((__m128i*)(o.q + 16 * c), _mm512_cvtepi32_epi8(q));
            // The sums per 16 of the stored int8 values (as the scalar code sums its qs).
            bs16[c] = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm512_cvtepi32_epi8(q)));
        }
        o.d = 1 / iscale;
        for (int k = 0; k < 4; ++k) {
            const int32_t lo = (int16_t)bs16[4 * k] + (int16_t)bs16[4 * k + 1];
            const int32_t hi = (int16_t)bs16[4 * k + 2] + (int16_t)bs16[4 * k + 3];
            o.bs8p[k] = (int32_t)(((uint32_t)(uint16_t)(int16_t)lo) | ((uint32_t)(uint16_t)(int16_t)hi << 16));
        }
        for (int j = 0; j < 16; ++j) o.off6[j] = -32 * bs16[j];
    }
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
const QgemmKernels kQgemmAvx512 = {"avx512vnni", 0, 0, nullptr, rows_dot, 8, tile8_any, rows8_dot,
                                   nullptr, 0, nullptr, kRgK, kTmaxK, tile_k, pack_k, pack_act_k};

}  // namespace pq
