// qgemm.h: the prefill GEMM on quantized weights (Q4_K, Q5_K, Q6_K, Q8_0, IQ4_XS): y = W x for many tokens.
//
// What makes it faster than one dot per (row, token): the activations are quantized (Q8_K) and
// repacked once per call; each weight super-block is unpacked once per call and then reused for every
// token by a register-blocked micro-kernel (several rows x several tokens, simd/qgemm_*.cpp). AVX-512
// VNNI: unsigned levels with 16 rows in the dword lanes (PackedWK), vpdpbusd against broadcast
// activation bytes, one integer multiply by the sub-block scale per sub-block; AVX2 and the plain
// kernel: int16 values already times their sub-block scale (PackedW16), vpmaddwd. Results are
// bit-identical to the reference vec_dot of quants.h at every SIMD level: the spec takes one exact
// int32 per (row, token, super-block) and a fixed float sequence (kx_vec_dot in quants_q4k_q5k.cpp).
// The tiles run over K in chunks of a few super-blocks, keeping their float sums between chunks, so
// that the weights and activations of a chunk come from L1 for all the token tiles.
//
// Q8_0 and IQ4_XS take one float step per 32 values, so they have their own packing (PackedW8: 16 rows
// interleaved, int8 levels) and micro-kernel (tile8, vpdpbusd with the rows in the dword lanes).
#pragma once

#include <cstdint>

#include "quants_internal.h"
#include "tensor.h"
#include "threadpool.h"

namespace pq {

// Micro-kernel: y[t * ldy + r] = dot(weight row r, token t) for r < nr <= rmax, t < nt <= tmax over nb
// super-blocks. Row r's blocks start at w + r * w_stride, token t's at a + t * a_stride. has_min:
// the weight has sub-block mins (Q4_K/Q5_K), whose term uses the activation block sums.
using QgemmTileFn = void (*)(const qi::PackedW16* w, int64_t w_stride, int nr, const qi::PackedA16* a, int64_t a_stride,
                             int nt, int64_t nb, bool has_min, float* y, int64_t ldy);

// Decode: dots of one raw weight row (blocks as in the GGUF) with nt packed tokens of nb super-blocks
// (Q4_K: packed by q8_k_pack16_dec, the others by q8_k_pack16)
// (token t's blocks at a + t * a_stride), y[t * y_stride]; each block is unpacked once for all tokens and
// every token's result is that of nt = 1 (verification batches equal decode steps bit for bit).
using QgemvRowFn = void (*)(int type, const void* w, const qi::PackedA16* a, int64_t a_stride, int nt, int64_t nb,
                            float* y, int64_t y_stride);

// 32-value group micro-kernel: y[t * ldy + r] for r < nr <= 16, t < nt <= tmax8, over ng groups (a
// panel's 16 rows, group g at w[g]; token t's groups at a + t * a_stride). Each output is the serial sum
// over groups of c * sumi, c = d_w * d_a (scaled: times ls).
using QgemmTile8Fn = void (*)(const qi::PackedW8* w, int64_t ng, const qi::PackedA8* a, int64_t a_stride, int nt,
                              bool scaled, float* y, int64_t ldy, int nr);

// Decode of Q8_0 and IQ4_XS: one raw weight row against nt tokens of ng PackedA8 groups (token t's at
// a + t * a_stride), y[t * y_stride]; every token's result is that of nt = 1 and of the reference dot.
using QgemvRow8Fn = void (*)(int type, const void* w, const qi::PackedA8* a, int64_t a_stride, int nt, int64_t ng,
                             float* y, int64_t y_stride);

// A tile over a range of super-blocks of K (w, a: that range's first block; nb its length): flags
// kChunkFirst starts the tile's float sums, otherwise they are read from st (tile_state floats,
// written by the call on the previous range); kChunkLast writes y, otherwise the sums go to st. The
// result of a tile run in chunks is bit-identical to one QgemmTileFn call over the whole K.
enum : int { kChunkFirst = 1, kChunkLast = 2 };
using QgemmTileChunkFn = void (*)(const qi::PackedW16* w, int64_t w_stride, int nr, const qi::PackedA16* a,
                                  int64_t a_stride, int nt, int64_t nb, bool has_min, float* st, int flags, float* y,
                                  int64_t ldy);

// The k-quant tile on PackedWK (type T_Q4_K, T_Q5_K or T_Q6_K): y[t * ldy + r] for r < nr <= 16 * rg,
// t < nt, over the nb super-blocks at w (row group g's at w + g * w_stride) and a + t * a_stride,
// chunked over K as QgemmTileChunkFn (flags kChunkFirst / kChunkLast, float sums in st).
using QgemmTileKFn = void (*)(int type, const qi::PackedWK* w, int64_t w_stride, int nr, const qi::PackedAK* a,
                              int64_t a_stride, int nt, int64_t nb, float* st, int flags, float* y, int64_t ldy);

struct QgemmKernels {
    const char* name;  // "ref", "avx2", "avx512vnni"
    int rmax, tmax;    // register block: weight rows x tokens
    QgemmTileFn tile;
    QgemvRowFn row;    // nullptr: decode keeps quants.h's vec_dot
    int tmax8;         // tokens per tile8 call
    QgemmTile8Fn tile8;
    QgemvRow8Fn row8;  // Q8_0/IQ4_XS decode; nullptr: quants.h's vec_dot
    QgemmTileChunkFn tile_chunk = nullptr;  // nullptr: every tile runs over the whole K (tile)
    int tile_state = 0;                     // floats of st per tile_chunk tile
    // One raw Q4_K/Q5_K/Q6_K block -> PackedW16, the same values as quants_internal.h's q*_k_pack16;
    // nullptr: those scalar ones.
    void (*pack16)(int type, const void* block, qi::PackedW16* out) = nullptr;
    // The k-quants on unsigned levels (PackedWK/PackedAK; when set, used instead of tile/tile_chunk):
    // tiles of rg_k groups of 16 rows x tmax_k tokens, K in chunks as QgemmTileChunkFn (st: rg_k *
    // tmax_k * 16 floats). pack_k: nrows <= 16 raw weight rows (row r at rows + r * row_stride) -> nb
    // PackedWK blocks (the missing rows all zero).
    int rg_k = 0, tmax_k = 0;
    QgemmTileKFn tile_k = nullptr;
    void (*pack_k)(int type, const void* rows, size_t row_stride, int nrows, int64_t nb, qi::PackedWK* out) = nullptr;
    // n floats -> n / 256 PackedAK, the same as q8_k_from_float + qgemm.cpp's repacking; nullptr: those.
    void (*pack_act_k)(const float* x, int64_t n, qi::PackedAK* out) = nullptr;
    int kc_k = 0;  // super-blocks per K chunk of tile_k (0: the whole K); PYQWEN_QGEMM_KCK overrides it
};

// True for the weight types qgemm handles.
bool qgemm_supported(int type);

// The kernel set for this CPU (PYQWEN_SIMD=off|ref forces the scalar one), or by name (nullptr when
// not compiled in or not supported by this CPU).
const QgemmKernels& qgemm_kernels();
const QgemmKernels* qgemm_kernels_named(const char* name);

// x: [n_tok][W.ne0] floats, y: [n_tok][W.ne1]. W.type must be qgemm_supported. kern: nullptr = automatic.
void qgemm(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y,
           const QgemmKernels* kern = nullptr);

// Decode (a few tokens): y = W x with the weight read once, straight from the mmap, rows split
// across the pool. Returns false (nothing done) when kern has no row kernel. Bit-identical to qgemm.
bool qgemv(ThreadPool& pool, const Tensor& W, const float* x, int64_t n_tok, float* y,
           const QgemmKernels* kern = nullptr);

}  // namespace pq
