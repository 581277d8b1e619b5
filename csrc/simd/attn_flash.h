// simd/attn_flash.h: flash-style attention over an F16 KV cache (attention.h attention_rows with F16 K
// and V), written once over a vector type and instantiated per ISA by simd/attn_avx2.cpp (8 lanes) and
// simd/attn_avx512.cpp (16 lanes), each compiled with its own flags: everything here is in an unnamed
// namespace, so no copy built for one ISA can be linked into another.
//
// attention_rows' reference form writes an M x keys score matrix and walks it three more times (max,
// exponentials, weighted sum), converting each F16 K row once per 8 query rows. Here keys go in tiles
// of kTile: the tile's K and V rows are widened to floats once for all M rows, the scores of the tile
// are register-blocked (Vec::kRows query rows x 4 keys per step), and each row keeps an online softmax
// (running max m, sum l, output accumulator rescaled by exp(m_old - m_new)), so nothing of size
// M x keys exists.
//
// A row's result depends only on its own query, its own n_keys and the cache: tiles start at fixed key
// positions, each score is its own FMA chain over d reduced in a fixed tree, the softmax step works on
// the row's own tile slots (lanes past its keys masked), and the output accumulators are per (row, d),
// whichever rows share a register block. So a verification batch equals one-token steps bit for bit. It is not
// bit-identical to attention_head (the spec): the dot order and the online rescaling round differently
// (tests/test_kv_quant.py bounds the difference).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace pq {
namespace {

constexpr int64_t kTile = 32;  // keys per tile: the K and V tiles (32 x D floats each) stay in L2

// Cephes expf (as act_avx2.cpp's, the softmax's exponential there) on Vec::kLanes lanes.
template <class Vec>
inline typename Vec::V flash_exp(typename Vec::V x) {
    using V = typename Vec::V;
    x = Vec::min(Vec::max(x, Vec::set1(-88.3762626647949f)), Vec::set1(88.3762626647949f));
    V fx = Vec::floor(Vec::fmadd(x, Vec::set1(1.44269504088896341f), Vec::set1(0.5f)));
    x = Vec::fnmadd(fx, Vec::set1(0.693359375f), x);
    x = Vec::fnmadd(fx, Vec::set1(-2.12194440e-4f), x);
    V y = Vec::set1(1.9875691500e-4f);
    y = Vec::fmadd(y, x, Vec::set1(1.3981999507e-3f));
    y = Vec::fmadd(y, x, Vec::set1(8.3334519073e-3f));
    y = Vec::fmadd(y, x, Vec::set1(4.1665795894e-2f));
    y = Vec::fmadd(y, x, Vec::set1(1.6666665459e-1f));
    y = Vec::fmadd(y, x, Vec::set1(5.0000001201e-1f));
    y = Vec::fmadd(y, Vec::mul(x, x), Vec::add(x, Vec::set1(1.0f)));
    return Vec::mul(y, Vec::pow2i(fx));
}

// S[r * kTile + c] = q_r . k_c for R rows x C keys of the tile (floats, D a multiple of the lanes). Each
// score is one FMA chain per lane over d, then the lanes in Vec's fixed tree: Vec::hsum for one key,
// Vec::hsum4 for four at once (the same tree per key, so a key's score does not depend on whether it
// was reduced alone or in a group of four, i.e. on which other rows share the register block).
template <class Vec, int R, int C>
inline void flash_scores_block(const float* const* q, const float* kf, int64_t D, float* S) {
    using V = typename Vec::V;
    V acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = Vec::zero();
    for (int64_t d = 0; d < D; d += Vec::kLanes) {
        V kv[C];
        for (int c = 0; c < C; ++c) kv[c] = Vec::load(kf + c * D + d);
        for (int r = 0; r < R; ++r) {
            const V qv = Vec::load(q[r] + d);
            for (int c = 0; c < C; ++c) acc[r][c] = Vec::fmadd(qv, kv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r) {
        if constexpr (C == 4) Vec::hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], S + r * kTile);
        else
            for (int c = 0; c < C; ++c) S[r * kTile + c] = Vec::hsum(acc[r][c]);
    }
}

template <class Vec, int R>
inline void flash_scores(const float* const* q, const float* kf, int64_t nk, int64_t D, float* S) {
    int64_t c = 0;
    for (; c + 4 <= nk; c += 4) flash_scores_block<Vec, R, 4>(q, kf + c * D, D, S + c);
    for (; c < nk; ++c) flash_scores_block<Vec, R, 1>(q, kf + c * D, D, S + c);
}

// o_r = o_r * alpha_r + sum over keys c < nk of P[r][c] * v_c (keys in order) for R rows: 4 vectors of
// d per step (R x 4 accumulators), then one at a time.
template <class Vec, int R>
inline void flash_pv(float* const* o, const float* alpha, const float* P, const float* vf, int64_t nk, int64_t D) {
    using V = typename Vec::V;
    constexpr int64_t W = Vec::kLanes;
    int64_t d = 0;
    for (; d + 4 * W <= D; d += 4 * W) {
        V acc[R][4];
        for (int r = 0; r < R; ++r) {
            const V a = Vec::set1(alpha[r]);
            for (int j = 0; j < 4; ++j) acc[r][j] = Vec::mul(Vec::load(o[r] + d + W * j), a);
        }
        for (int64_t c = 0; c < nk; ++c) {
            V vv[4];
            for (int j = 0; j < 4; ++j) vv[j] = Vec::load(vf + c * D + d + W * j);
            for (int r = 0; r < R; ++r) {
                const V p = Vec::set1(P[r * kTile + c]);
                for (int j = 0; j < 4; ++j) acc[r][j] = Vec::fmadd(p, vv[j], acc[r][j]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) Vec::store(o[r] + d + W * j, acc[r][j]);
    }
    for (; d < D; d += W) {
        for (int r = 0; r < R; ++r) {
            V acc = Vec::mul(Vec::load(o[r] + d), Vec::set1(alpha[r]));
            for (int64_t c = 0; c < nk; ++c)
                acc = Vec::fmadd(Vec::set1(P[r * kTile + c]), Vec::load(vf + c * D + d), acc);
            Vec::store(o[r] + d, acc);
        }
    }
}

// F16 rows -> floats, nk x D.
template <class Vec>
inline void flash_widen(const uint8_t* src, size_t stride, int64_t nk, int64_t D, float* dst) {
    for (int64_t s = 0; s < nk; ++s) {
        const uint16_t* h = (const uint16_t*)(src + s * stride);
        for (int64_t d = 0; d < D; d += Vec::kLanes) Vec::store(dst + s * D + d, Vec::load_f16(h + d));
    }
}

// The online softmax step of row i over the tile's scores Sr[0, nk) (the row's own keys: [0, own)):
// scales them, updates mx[i] and l[i], leaves the weights in Sr over the whole tile (0 past own),
// returns exp(m_old - m_new). Vectorised over the tile's kTile slots: lanes past own (whatever they
// held, Sr past nk is stale) are masked to -inf before the max and to 0 after the exponential, so the
// row's weights, and its sum (lanes added vector by vector, then Vec::hsum), are those of the row alone.
template <class Vec>
inline float flash_softmax_step(float* Sr, int64_t own, float scale, float& mx, float& l) {
    using V = typename Vec::V;
    constexpr int kVecs = kTile / Vec::kLanes;
    static_assert(kTile % Vec::kLanes == 0, "the tile is whole vectors");
    const V lim = Vec::set1((float)own), sc = Vec::set1(scale), ninf = Vec::set1(-INFINITY), zero = Vec::zero();
    V s[kVecs];
    V m = ninf;
    for (int j = 0; j < kVecs; ++j) {
        const V idx = Vec::iota(j * Vec::kLanes);
        s[j] = Vec::select_lt(idx, lim, Vec::mul(Vec::load(Sr + j * Vec::kLanes), sc), ninf);
        m = Vec::max(m, s[j]);
    }
    const float m_new = std::max(mx, Vec::hmax(m));
    alignas(64) float e[Vec::kLanes] = {mx - m_new};
    Vec::store(e, flash_exp<Vec>(Vec::load(e)));
    const float alpha = mx == -INFINITY ? 0.0f : e[0];
    const V mv = Vec::set1(m_new);
    V sum = zero;
    for (int j = 0; j < kVecs; ++j) {
        const V idx = Vec::iota(j * Vec::kLanes);
        const V p = Vec::select_lt(idx, lim, flash_exp<Vec>(Vec::sub(s[j], mv)), zero);
        Vec::store(Sr + j * Vec::kLanes, p);
        sum = Vec::add(sum, p);
    }
    l = l * alpha + Vec::hsum(sum);
    mx = m_new;
    return alpha;
}

// R rows starting at i0 against one tile (nt keys from s0, widened in kf/vf).
template <class Vec, int R>
inline void flash_rows(const float* q, int64_t q_stride, int64_t i0, const int64_t* n_keys, int64_t s0, int64_t nt,
                       const float* kf, const float* vf, int64_t D, float scale, float* mx, float* l, float* S,
                       float* o, int64_t o_stride) {
    const float* qr[R];
    float* orow[R];
    for (int r = 0; r < R; ++r) {
        qr[r] = q + (i0 + r) * q_stride;
        orow[r] = o + (i0 + r) * o_stride;
    }
    // The tile's keys any of the R rows sees (the last sees the most); each row masks its own.
    const int64_t nk = std::min(nt, n_keys[i0 + R - 1] - s0);
    flash_scores<Vec, R>(qr, kf, nk, D, S);
    float alpha[R];
    for (int r = 0; r < R; ++r)
        alpha[r] = flash_softmax_step<Vec>(S + r * kTile, std::min(nk, n_keys[i0 + r] - s0), scale, mx[i0 + r], l[i0 + r]);
    flash_pv<Vec, R>(orow, alpha, S, vf, nk, D);
}

template <class Vec>
void flash_attention_rows(const float* q, int64_t q_stride, int64_t M, const int64_t* n_keys, const uint8_t* K,
                          size_t k_stride, const uint8_t* V, size_t v_stride, int64_t D, float scale, float* o,
                          int64_t o_stride) {
    static_assert(Vec::kRows >= 1 && Vec::kRows <= 4, "1 to 4 rows per register block");
    if (M <= 0) return;
    const int64_t L = n_keys[M - 1];
    std::vector<float> kf(kTile * D), vf(kTile * D), S(Vec::kRows * kTile + Vec::kLanes), mx(M, -INFINITY), l(M, 0.0f);
    for (int64_t i = 0; i < M; ++i) std::fill(o + i * o_stride, o + i * o_stride + D, 0.0f);
    int64_t f = 0;  // the first row that sees the tile (n_keys is non-decreasing)
    for (int64_t s0 = 0; s0 < L; s0 += kTile) {
        while (n_keys[f] <= s0) ++f;
        const int64_t nt = std::min(kTile, L - s0);
        flash_widen<Vec>(K + s0 * k_stride, k_stride, nt, D, kf.data());
        flash_widen<Vec>(V + s0 * v_stride, v_stride, nt, D, vf.data());
        for (int64_t i0 = f; i0 < M; i0 += Vec::kRows) {
            const int64_t R = std::min<int64_t>(Vec::kRows, M - i0);
            auto run = [&](auto rows) {
                flash_rows<Vec, decltype(rows)::value>(q, q_stride, i0, n_keys, s0, nt, kf.data(), vf.data(), D,
                                                       scale, mx.data(), l.data(), S.data(), o, o_stride);
            };
            if (R >= 4 && Vec::kRows >= 4) run(std::integral_constant<int, Vec::kRows >= 4 ? 4 : 1>());
            else if (R == 3) run(std::integral_constant<int, Vec::kRows >= 3 ? 3 : 1>());
            else if (R == 2) run(std::integral_constant<int, Vec::kRows >= 2 ? 2 : 1>());
            else run(std::integral_constant<int, 1>());
        }
    }
    for (int64_t i = 0; i < M; ++i) {
        float* oi = o + i * o_stride;
        for (int64_t d = 0; d < D; ++d) oi[d] /= l[i];
    }
}

}  // namespace
}  // namespace pq
