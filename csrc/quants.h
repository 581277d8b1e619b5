// quants.h: per-type operations on quantized GGUF blocks (reference versions are the spec).
//
// The forward pass never special-cases a quant format: it asks quant_traits(type) for how to turn
// blocks into floats (embedding rows), how to quantize an activation row into the format the weight's
// dot product wants (vec_dot_type, e.g. Q8_K for k-quants, as llama.cpp does on the CPU), and how to
// take that dot product. Float types (F32/F16/BF16) are handled by the float matmul, not here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "formats.h"

namespace pq {

struct QuantTraits {
    int type;                 // GgmlType of the weight blocks
    const char* name;
    int block_size;           // values per block
    size_t block_bytes;       // bytes per block
    // Blocks -> floats; n is a multiple of block_size.
    void (*to_float)(const void* src, float* dst, int64_t n);
    // Floats -> blocks with llama.cpp's reference quantizer (no importance matrix); nullptr if we do
    // not quantize to this type.
    void (*from_float_ref)(const float* src, void* dst, int64_t n);
    // The activation format that vec_dot expects for its second operand, and its quantizer.
    int vec_dot_type;
    void (*quantize_act)(const float* src, void* dst, int64_t n);
    // Dot product of one weight row (n values) with one quantized activation row. This is the fastest
    // kernel the CPU supports (AVX2 where available); every SIMD kernel returns bit-identical results
    // to vec_dot_ref, the scalar reference (so results never depend on the machine).
    float (*vec_dot)(int64_t n, const void* w, const void* x);
    float (*vec_dot_ref)(int64_t n, const void* w, const void* x);
};

// Which kernel set quant_traits() chose: "avx2" or "ref" (PYQWEN_SIMD=off|ref forces "ref"; read once).
const char* quant_simd_name();

// nullptr for types without quantized support (and for the float types).
// Supported: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS (weights) and Q8_K, Q8_1 (activation-only: their
// from_float_ref is ggml's quantize_row_q8_{K,1}_ref, vec_dot/quantize_act are nullptr and
// vec_dot_type is -1). IQ4_NL/IQ4_XS have from_float_ref == nullptr (read-only formats).
// Reference kernels are scalar and bit-exact with ggml's scalar C code: from_float_ref is byte-identical
// to quantize_row_*_ref, to_float to dequantize_row_*, vec_dot to ggml_vec_dot_*_generic.
const QuantTraits* quant_traits(int type);

// Bytes taken by n values of a type (n a multiple of its block size); 0 for unknown types.
inline size_t row_bytes(int type, int64_t n) {
    const int bs = type_block_size(type);
    if (bs == 0) return 0;
    return (size_t)(n / bs) * (size_t)type_block_bytes(type);
}

// ---- Whole-tensor helpers (quants.cpp). All throw std::invalid_argument on bad arguments. ----

// Index of the first NaN/Inf in x[0..n), or -1. Run before quantizing weights: the k-quant searches
// silently produce garbage blocks from non-finite input.
int64_t find_nonfinite(const float* x, int64_t n);

// Quantize nrows rows of n_per_row floats (contiguous) with the type's from_float_ref into dst (rows
// of row_bytes(type, n_per_row), concatenated). Rows are split across n_threads std::threads
// (<= 0: one per hardware thread). Rejects non-finite input before writing anything.
void quantize_rows(int type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, int n_threads = 0);

// Blocks -> floats for n values (n a multiple of the block size), split across threads.
void dequantize(int type, const void* src, float* dst, int64_t n, int n_threads = 0);

// Reference quantized matmul: y[t, o] = vec_dot(w row o, quantize_act(x row t)) for a weight of
// n_out rows of n_in values. x is [T, n_in], y is [T, n_out], both row-major. Activations are not
// checked for NaN/Inf (they propagate as ggml's would).
void quant_matmul_ref(int type, const void* w, int64_t n_in, int64_t n_out, const float* x, int64_t T, float* y,
                      int n_threads = 0);

}  // namespace pq
