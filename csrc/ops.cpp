#include "ops.h"

namespace pq {

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / std::sqrt(ss / (double)n + (double)eps));
    if (w) {
        for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
    } else {
        for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
    }
}

void l2_norm(float* x, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / std::sqrt(ss + (double)eps));
    for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

void rope_neox(float* x, int n_rot, int64_t pos, const double* freqs, float mscale) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; ++i) {
        // theta_i = pos * f_i, evaluated in double so long contexts keep their phase.
        const double theta = (double)pos * freqs[i];
        float c = (float)std::cos(theta), s = (float)std::sin(theta);
        if (mscale != 1.0f) {
            c *= mscale;
            s *= mscale;
        }
        const float a = x[i], b = x[i + half];
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

void hadamard(float* x, int64_t n, int block) {
    const float scale = 1.0f / std::sqrt((float)block);
    for (int64_t b = 0; b + block <= n; b += block) {
        float* y = x + b;
        for (int h = 1; h < block; h *= 2)  // fast Walsh-Hadamard transform, natural (Sylvester) order
            for (int i = 0; i < block; i += 2 * h)
                for (int j = i; j < i + h; ++j) {
                    const float a = y[j], c = y[j + h];
                    y[j] = a + c;
                    y[j + h] = a - c;
                }
        for (int i = 0; i < block; ++i) y[i] *= scale;
    }
}

}  // namespace pq
