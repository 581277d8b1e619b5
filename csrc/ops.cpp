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

void rope_neox(float* x, int n_rot, int64_t pos, float base) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; ++i) {
        // theta_i = pos * base^(-2i/n_rot), evaluated in double so long contexts keep their phase.
        const double theta = (double)pos * std::pow((double)base, -2.0 * i / (double)n_rot);
        const float c = (float)std::cos(theta), s = (float)std::sin(theta);
        const float a = x[i], b = x[i + half];
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

}  // namespace pq
