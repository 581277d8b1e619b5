// rope_scaling.h: the rotary frequencies and magnitude of a qwen35 model, with RoPE scaling (YaRN,
// linear), written once for the CPU core and the CUDA backend (its host code builds the kernel's
// frequency table from rope_pair_freq).
//
// Pair i of the n_rot rotated dims (i < n_rot/2, NEOX layout: dims i and i + n_rot/2) turns by
// theta_i(pos) = pos * f_i, and both rotated halves are scaled by m (rope_mscale); the other head_dim -
// n_rot dims are left alone. Without scaling f_i = base^(-2i/n_rot), m = 1.
//
// YaRN (Peng et al. 2023; transformers' _compute_yarn_parameters, llama.cpp's rope_yarn): pairs that turn
// many times within the original context keep their frequency (extrapolation), slow pairs are
// interpolated by freq_scale = 1/factor, and a linear ramp between the correction dims lo and hi mixes
// the two:
//   corr(r) = n_rot * ln(orig_ctx / (2 pi r)) / (2 ln base)   (the dim that turns r times in orig_ctx)
//   lo = max(0, floor(corr(beta_fast))), hi = min(n_rot - 1, ceil(corr(beta_slow)))
//   mix_i = (1 - clamp((i - lo) / max(hi - lo, 0.001), 0, 1)) * ext_factor
//   f_i = base^(-2i/n_rot) * (freq_scale * (1 - mix_i) + mix_i)
//   m = attn_factor * (1 + 0.1 ln(1 / freq_scale))            (when ext_factor != 0, as llama.cpp)
// transformers' `attention_factor`, when a config gives one, replaces the whole of m: the loader turns it
// into attn_factor = attention_factor / (1 + 0.1 ln factor).
// Linear scaling: f_i = base^(-2i/n_rot) * freq_scale, m = 1.
#pragma once

#include <algorithm>
#include <cmath>

#include "config.h"

namespace pq {

// f_i in double: theta = pos * f_i is evaluated in double on the CPU (long contexts keep their phase)
// and as a float pair on CUDA (cuda/kernels/rope.cuh).
inline double rope_pair_freq(const Config& c, int i) {
    const double f = std::pow((double)c.rope_base, -2.0 * i / (double)c.n_rot);
    if (c.rope_scaling == kRopeLinear) return f * (double)c.rope_freq_scale;
    if (c.rope_scaling != kRopeYarn) return f;
    const double kPi = 3.14159265358979323846;
    auto corr = [&](double turns) {
        return c.n_rot * std::log((double)c.yarn_orig_ctx / (turns * 2.0 * kPi)) / (2.0 * std::log((double)c.rope_base));
    };
    const double lo = std::max(0.0, std::floor(corr(c.yarn_beta_fast)));
    const double hi = std::min((double)(c.n_rot - 1), std::ceil(corr(c.yarn_beta_slow)));
    const double y = (i - lo) / std::max(hi - lo, 0.001);
    const double mix = (1.0 - std::min(1.0, std::max(0.0, y))) * (double)c.yarn_ext_factor;
    return f * ((double)c.rope_freq_scale * (1.0 - mix) + mix);
}

inline float rope_mscale(const Config& c) {
    if (c.rope_scaling != kRopeYarn || c.yarn_ext_factor == 0.0f) return 1.0f;
    return c.yarn_attn_factor * (1.0f + 0.1f * std::log(1.0f / c.rope_freq_scale));
}

}  // namespace pq
