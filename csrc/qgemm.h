// qgemm.h: the prefill GEMM on quantized weights (Q4_K, Q5_K, Q6_K, Q8_0, IQ4_XS): y = W x for many tokens.
//
// What makes it faster than one dot per (row, token): the activations are quantized (Q8_K) and
// repacked once per call; each weight super-block is unpacked once per call into int16 values already
// multiplied by their sub-block scales (quants_internal.h, PackedW16) and then reused for every token;
// a register-blocked micro-kernel (several rows x several tokens, simd/qgemm_*.cpp) takes the integer
// dot products with vpdpwssd (AVX-512 VNNI) or vpmaddwd (AVX2). Results are bit-identical to the
// reference vec_dot of quants.h at every SIMD level: the integer lane sums are exact and the float
// steps are ggml's, in ggml's order (see kx_vec_dot in quants_q4k_q5k.cpp). Kernel sets with a
// tile_chunk (AVX-512) run every tile of a 32-row panel over 4 super-blocks of K at a time, keeping the
// tiles' float sums between chunks, so that the weights and activations of a chunk come from L1.
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
