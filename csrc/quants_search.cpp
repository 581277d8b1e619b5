// quants_search.cpp: the per-group scale searches of llama.cpp's k-quant reference quantizers.
//
// These decide which integer level each weight gets, so any difference in float evaluation order
// changes bytes in the GGUF. Expressions keep ggml's association order on purpose; do not "simplify".
#include <cmath>

#include "quants_internal.h"

namespace pq {
namespace qi {

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

float search_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
    // Range, and the weighted sums the least-squares fit needs (first element seeds them, as ggml).
    float lo = x[0], hi = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (lo > 0) lo = 0;  // the offset only ever shifts values down (x = scale*L - min, min >= 0)
    if (hi == lo) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -lo;
        return 0.f;
    }

    // Start from the plain min/max mapping and record its weighted squared error.
    float iscale = (float)nmax / (hi - lo);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; ++i) {
        L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - lo)), 0, nmax);
        float diff = scale * L[i] + lo - x[i];
        diff = diff * diff;
        best_err += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -lo;
        return scale;
    }

    // Try nstep+1 slightly different level spacings; for each, refit scale and offset by weighted
    // least squares on the chosen levels and keep the best.
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (hi - lo);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const int l = clampi(nearest_int(iscale * (x[i] - lo)), 0, nmax);
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {  // a positive offset is not representable: refit the scale alone
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; ++i) {
            float diff = this_scale * Laux[i] + this_min - x[i];
            diff = diff * diff;
            err += weights[i] * diff;
        }
        if (err < best_err) {
            for (int i = 0; i < n; ++i) L[i] = Laux[i];
            best_err = err;
            scale = this_scale;
            lo = this_min;
        }
    }
    *the_min = -lo;
    return scale;
}

float search_scale_sym(int n, int nmax, const float* x, int8_t* L) {
    // The signed value of largest magnitude maps to level -nmax: the level range [-nmax, nmax-1] is
    // lopsided, and putting the extreme on the long side lets it be hit exactly.
    const float vmax = signed_absmax(x, n), amax = fabsf(vmax);  // formats.h
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }

    float iscale = -nmax / vmax;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;

    // Nudge the level spacing by +-0.1..0.9 of a level; keep whichever maximises sumlx^2/suml2
    // (equivalently minimises the weighted error of the least-squares scale).
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / vmax;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

void pack_scale_min_k4(const uint8_t* ls, const uint8_t* lm, uint8_t* q) {
    // Sub-blocks 0..3 keep their 6-bit scale/min in the low 6 bits of bytes 0..3 / 4..7; sub-blocks
    // 4..7 put their low nibbles in bytes 8..11 and their top 2 bits in the spare bits of 0..7.
    // Inverse of get_scale_min_k4 in formats.h.
    for (int j = 0; j < 4; ++j) {
        q[j] = ls[j];
        q[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; ++j) {
        q[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
        q[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
}

}  // namespace qi
}  // namespace pq
