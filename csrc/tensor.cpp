#include "tensor.h"

namespace pq {

bool type_supported(int type) {
    if (type == T_F32 || type == T_F16 || type == T_BF16) return true;
    const QuantTraits* qt = quant_traits(type);
    return qt != nullptr && qt->vec_dot != nullptr;  // Q8_K/Q8_1 are activation-only formats
}

void tensor_row_to_float(const Tensor& t, int64_t r, float* dst) {
    const uint8_t* src = t.row(r);
    switch (t.type) {
        case T_F32:
            memcpy(dst, src, (size_t)t.ne0 * 4);
            return;
        case T_F16: {
            const uint16_t* h = (const uint16_t*)src;
            for (int64_t i = 0; i < t.ne0; ++i) dst[i] = fp16_to_fp32(h[i]);
            return;
        }
        case T_BF16: {
            const uint16_t* h = (const uint16_t*)src;
            for (int64_t i = 0; i < t.ne0; ++i) dst[i] = bf16_to_fp32(h[i]);
            return;
        }
        default:
            quant_traits(t.type)->to_float(src, dst, t.ne0);
    }
}

}  // namespace pq
