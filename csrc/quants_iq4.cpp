// quants_iq4.cpp: IQ4_NL and IQ4_XS (4-bit indices into the non-linear kvalues_iq4nl codebook).
//
// We only read these formats (some community GGUFs use them); no quantizer. IQ4_NL dots against
// Q8_0 activations, IQ4_XS against Q8_K, as on ggml's CPU backend.
#include "quants_internal.h"

namespace pq {
namespace qi {

namespace {

// 6-bit scale of 32-value sub-block ib of an IQ4_XS block, minus its bias of 32.
inline int iq4_xs_scale(const block_iq4_xs& b, int ib) {
    const int lo = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
    const int hi = (b.scales_h >> (2 * ib)) & 3;
    return (lo | (hi << 4)) - 32;
}

// Codebook values of one 32-value group: first 16 from the low nibbles, next 16 from the high.
inline void iq4_group(const uint8_t* qs16, int8_t* v) {
    for (int j = 0; j < 16; ++j) {
        v[j] = kvalues_iq4nl[qs16[j] & 0xF];
        v[j + 16] = kvalues_iq4nl[qs16[j] >> 4];
    }
}

}  // namespace

void iq4_nl_to_float(const void* src, float* y, int64_t n) {
    const block_iq4_nl* b = (const block_iq4_nl*)src;
    int8_t v[32];
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) {
        const float d = fp16_to_fp32(b[i].d);
        iq4_group(b[i].qs, v);
        for (int j = 0; j < 32; ++j) y[j] = d * v[j];
    }
}

float iq4_nl_vec_dot(int64_t n, const void* w, const void* x) {
    const block_iq4_nl* b = (const block_iq4_nl*)w;
    const block_q8_0* a = (const block_q8_0*)x;
    int8_t v[32];
    float sumf = 0;
    for (int64_t i = 0; i < n / QK4_NL; ++i) {
        iq4_group(b[i].qs, v);
        int32_t sumi = 0;
        for (int j = 0; j < 32; ++j) sumi += a[i].qs[j] * v[j];
        const float d = fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d);
        sumf += d * sumi;
    }
    return sumf;
}

void iq4_xs_to_float(const void* src, float* y, int64_t n) {
    const block_iq4_xs* b = (const block_iq4_xs*)src;
    int8_t v[32];
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int ib = 0; ib < QK_K / 32; ++ib, y += 32) {
            const float dl = d * iq4_xs_scale(b[i], ib);
            iq4_group(b[i].qs + 16 * ib, v);
            for (int j = 0; j < 32; ++j) y[j] = dl * v[j];
        }
    }
}

float iq4_xs_vec_dot(int64_t n, const void* w, const void* x) {
    const block_iq4_xs* b = (const block_iq4_xs*)w;
    const block_q8_K* a = (const block_q8_K*)x;
    int8_t v[32];
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d4d8 = fp16_to_fp32(b[i].d) * a[i].d;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            iq4_group(b[i].qs + 16 * ib, v);
            int32_t sumi = 0;
            for (int j = 0; j < 32; ++j) sumi += a[i].qs[32 * ib + j] * v[j];
            sumf += (d4d8 * iq4_xs_scale(b[i], ib)) * sumi;  // one float add per sub-block, as ggml
        }
    }
    return sumf;
}


// The prefill GEMM's packing (quants_internal.h PackedW8): codebook values per 32-value group, the
// super-block d and the group's 6-bit scale - 32, the factors of the reference's float step.
void iq4_xs_pack8(const void* row, int64_t ng, int r, PackedW8* panel) {
    const block_iq4_xs* b = (const block_iq4_xs*)row;
    int8_t v[32];
    for (int64_t g = 0; g < ng; ++g) {
        const block_iq4_xs& bi = b[g / 8];
        const int ib = (int)(g % 8);
        iq4_group(bi.qs + 16 * ib, v);
        pack8_levels(v, r, panel[g]);
        panel[g].d[r] = fp16_to_fp32(bi.d);
        panel[g].ls[r] = (float)iq4_xs_scale(bi, ib);
    }
}

}  // namespace qi
}  // namespace pq
