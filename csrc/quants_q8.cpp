// quants_q8.cpp: the 8-bit formats. Q8_0 is both a weight format and the activation format for
// Q8_0/IQ4_NL weights; Q8_K is the activation format for the k-quants and IQ4_XS on the CPU; Q8_1
// (Q8_0 plus d*sum) is what llama.cpp's CUDA backend quantizes activations to.
#include <cmath>

#include "quants_internal.h"

namespace pq {
namespace qi {

// ---- Q8_0: d = amax/127 (fp16), q = round(x/d) with C roundf (ties away from zero) ----
void q8_0_from_float(const float* x, void* dst, int64_t n) {
    block_q8_0* y = (block_q8_0*)dst;
    for (int64_t i = 0; i < n / QK8_0; ++i) quantize_block_q8_0(x + i * QK8_0, y + i);  // formats.h
}

void q8_0_to_float(const void* src, float* y, int64_t n) {
    const block_q8_0* b = (const block_q8_0*)src;
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = b[i].qs[j] * d;
    }
}

namespace {

// Integer dot of each 32-value block pair: sumi[i] = sum_j w[i].qs[j] * a[i].qs[j].
void q8_0_block_sums_ref(int64_t nb, const block_q8_0* w, const block_q8_0* a, int32_t* sumi) {
    for (int64_t i = 0; i < nb; ++i) {
        int32_t s = 0;
        for (int j = 0; j < QK8_0; ++j) s += w[i].qs[j] * a[i].qs[j];
        sumi[i] = s;
    }
}

// Float part in ggml's order: one float add per block. Integer sums come in chunks so a SIMD kernel
// can produce them without any float arithmetic of its own.
template <class SumsFn>
float q8_0_dot(int64_t n, const void* w, const void* x, SumsFn sums) {
    const block_q8_0* b = (const block_q8_0*)w;
    const block_q8_0* a = (const block_q8_0*)x;
    constexpr int64_t kChunk = 64;
    int32_t sumi[kChunk];
    float sumf = 0;
    const int64_t nb = n / QK8_0;
    for (int64_t i0 = 0; i0 < nb; i0 += kChunk) {
        const int64_t m = nb - i0 < kChunk ? nb - i0 : kChunk;
        sums(m, b + i0, a + i0, sumi);
        for (int64_t i = 0; i < m; ++i) {
            sumf += sumi[i] * (fp16_to_fp32(b[i0 + i].d) * fp16_to_fp32(a[i0 + i].d));
        }
    }
    return sumf;
}

}  // namespace

float q8_0_vec_dot(int64_t n, const void* w, const void* x) { return q8_0_dot(n, w, x, q8_0_block_sums_ref); }

#if defined(PQ_HAVE_AVX2_KERNELS)
float q8_0_vec_dot_avx2(int64_t n, const void* w, const void* x) {
    return q8_0_dot(n, w, x, avx2::q8_0_block_sums);
}
#endif

// ---- Q8_1: Q8_0 plus s = fp16(d * sum(q)) so a dot with an offset format can fold the offset ----
void q8_1_from_float(const float* x, void* dst, int64_t n) {
    block_q8_1* y = (block_q8_1*)dst;
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        float amax = 0;
        for (int j = 0; j < QK8_0; ++j) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        int32_t sum = 0;
        for (int j = 0; j < QK8_0; ++j) {
            y[i].qs[j] = trunc_to_i8(roundf(x[j] * id));
            sum += y[i].qs[j];
        }
        y[i].s = fp32_to_fp16(sum * d);
    }
}

void q8_1_to_float(const void* src, float* y, int64_t n) {
    const block_q8_1* b = (const block_q8_1*)src;
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = b[i].qs[j] * d;
    }
}

// ---- Q8_K: fp32 d per 256 values, q in [-127, 127] via nearest_int, plus sums of each 16 ----
void q8_k_from_float(const float* x, void* dst, int64_t n) {
    block_q8_K* y = (block_q8_K*)dst;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        const float vmax = signed_absmax(x, QK_K);  // formats.h
        if (!vmax) {
            // ggml leaves bsums untouched here; we zero the whole block so output is deterministic.
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        // -127/max (not -128): keeps the range symmetric, which ggml's SIMD dot kernels rely on.
        const float iscale = -127.f / vmax;
        for (int j = 0; j < QK_K; ++j) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

void q8_k_to_float(const void* src, float* y, int64_t n) {
    const block_q8_K* b = (const block_q8_K*)src;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        for (int j = 0; j < QK_K; ++j) y[j] = b[i].d * b[i].qs[j];
    }
}

}  // namespace qi
}  // namespace pq

namespace pq {
namespace qi {

void q8_k_pack16(const void* block, PackedA16* o) {
    const block_q8_K& b = *(const block_q8_K*)block;
    const int one[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    pack_lane_pairs(b.qs, one, o->a);
    o->d = b.d;
    for (int j = 0; j < 8; ++j) o->bs8[j] = (int16_t)(b.bsums[2 * j] + b.bsums[2 * j + 1]);
}


// The kernel loads 64 raw Q4_K bytes (groups 2G, 2G+1 of 64 values), shuffles each 16-byte lane L by
// P = 0,1,8,9,2,3,10,11,4,5,12,13,6,7,14,15 and splits each 16-bit word into its 4 nibbles: E = 0 the
// low nibble of the word's first byte, 1 its high nibble, 2 and 3 those of the second byte. Position
// p = 128G + 32E + 8L + i holds word i of lane L of nibble set E.
int q4k_dec_value(int p) {
    static const int kP[16] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
    const int G = p / 128, E = (p / 32) % 4, L = (p / 8) % 4, i = p % 8;
    const int g = 2 * G + L / 2;                        // the 64-value group of the lane
    const int byte = 16 * (L % 2) + kP[2 * i + E / 2];  // its raw byte in the group's 32
    return 64 * g + byte + (E % 2 ? 32 : 0);            // high nibbles: the group's second 32 values
}

void q8_k_pack16_dec(const void* block, PackedA16* o) {
    static const auto order = [] {
        struct { int v[QK_K]; } t;
        for (int p = 0; p < QK_K; ++p) t.v[p] = q4k_dec_value(p);
        return t;
    }();
    const block_q8_K& b = *(const block_q8_K*)block;
    for (int p = 0; p < QK_K; ++p) o->a[p] = b.qs[order.v[p]];
    o->d = b.d;
    for (int j = 0; j < 8; ++j) o->bs8[j] = (int16_t)(b.bsums[2 * j] + b.bsums[2 * j + 1]);
}

// ---- The 32-value group packing of the prefill GEMM (quants_internal.h PackedW8/PackedA8) ----
void pack8_clear_row(int64_t ng, int r, PackedW8* panel) {
    for (int64_t g = 0; g < ng; ++g) {
        for (int k = 0; k < 8; ++k)
            for (int j = 0; j < 4; ++j) panel[g].q[k][r][j] = 128;
        panel[g].d[r] = 0;
        panel[g].ls[r] = 0;
    }
}

// 32 signed levels of one group into row r of a PackedW8.
void pack8_levels(const int8_t* v, int r, PackedW8& p) {
    for (int k = 0; k < 8; ++k)
        for (int j = 0; j < 4; ++j) p.q[k][r][j] = (uint8_t)(v[4 * k + j] + 128);
}

void q8_0_pack8(const void* row, int64_t ng, int r, PackedW8* panel) {
    const block_q8_0* b = (const block_q8_0*)row;
    for (int64_t g = 0; g < ng; ++g) {
        pack8_levels(b[g].qs, r, panel[g]);
        panel[g].d[r] = fp16_to_fp32(b[g].d);
        panel[g].ls[r] = 1;
    }
}

static void pack_a8(const int8_t* q, float d, PackedA8* o) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += o->q[j] = q[j];
    o->d = d;
    o->sum = s;
}

void q8_0_pack_a8(const float* x, int64_t n, PackedA8* out) {
    for (int64_t g = 0; g < n / QK8_0; ++g) {
        block_q8_0 b;
        quantize_block_q8_0(x + g * QK8_0, &b);
        pack_a8(b.qs, fp16_to_fp32(b.d), out + g);
    }
}

void q8_k_pack_a8(const float* x, int64_t n, PackedA8* out) {
    for (int64_t i = 0; i < n / QK_K; ++i) {
        block_q8_K b;
        q8_k_from_float(x + i * QK_K, &b, QK_K);
        for (int g = 0; g < QK_K / 32; ++g) pack_a8(b.qs + 32 * g, b.d, out + 8 * i + g);
    }
}

}  // namespace qi
}  // namespace pq
