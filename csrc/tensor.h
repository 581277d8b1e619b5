// tensor.h: a read-only view of one GGUF weight tensor, pointing into the mmapped file.
//
// ne0 is the contiguous dimension (a matmul weight's input size), ne1 the number of rows (its output
// size), as in ggml. Weights are never copied or dequantized as a whole: kernels read them in place.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quants.h"

namespace pq {

struct Tensor {
    int type = -1;            // GgmlType
    int64_t ne0 = 0;          // values per row
    int64_t ne1 = 1;          // rows
    const uint8_t* data = nullptr;

    bool valid() const { return data != nullptr; }
    size_t row_bytes() const { return pq::row_bytes(type, ne0); }
    const uint8_t* row(int64_t r) const { return data + (size_t)r * row_bytes(); }
};

// Converts one row of any supported type to floats (n = t.ne0 values).
void tensor_row_to_float(const Tensor& t, int64_t r, float* dst);

// True for types the CPU kernels can use as weights.
bool type_supported(int type);

}  // namespace pq
