// rope_table.h: the rotary frequencies and magnitude the attention kernels take (kernels/rope.cuh explains
// the float pairs), built on the host once per model from csrc/common/rope_scaling.h -- the formula the
// CPU core uses, YaRN and linear scaling included. Plain C++: the launchers, the model and the test
// bindings build it; the kernel receives it by value (no upload, graph-capture friendly).
#pragma once

#include <cmath>

#include "config.h"
#include "rope_scaling.h"

namespace pq::cuda {

constexpr int kRopeMaxPairs = 128;  // n_rot <= 256

// f_i ~= hi[i] + lo[i] (from the double value), i < n_rot / 2; mscale multiplies cos and sin of every
// rotated pair (1 without YaRN). n_rot < 0: not representable (the launchers refuse it).
struct RopeFreqs {
    int n_rot = 0;
    float mscale = 1.0f;
    float hi[kRopeMaxPairs];
    float lo[kRopeMaxPairs];
};

template <class FreqOf>
inline RopeFreqs rope_freqs_from(int n_rot, float mscale, FreqOf&& freq_of) {
    RopeFreqs f;
    f.n_rot = (n_rot < 0 || n_rot % 2 != 0 || n_rot / 2 > kRopeMaxPairs) ? -1 : n_rot;
    f.mscale = mscale;
    for (int i = 0; i < kRopeMaxPairs; ++i) {
        const double fr = i < f.n_rot / 2 ? freq_of(i) : 0.0;
        f.hi[i] = (float)fr;
        f.lo[i] = (float)(fr - (double)f.hi[i]);
    }
    return f;
}

// The model's table: rope_pair_freq / rope_mscale of its config (what csrc/model.cpp uses).
inline RopeFreqs rope_freqs(const Config& c) {
    return rope_freqs_from(c.n_rot, rope_mscale(c), [&](int i) { return rope_pair_freq(c, i); });
}

// Plain RoPE of base `base` (no scaling): f_i = base^(-2i/n_rot), mscale 1.
inline RopeFreqs rope_freqs_unscaled(int n_rot, float base) {
    return rope_freqs_from(n_rot, 1.0f, [&](int i) { return std::pow((double)base, -2.0 * i / (double)n_rot); });
}

}  // namespace pq::cuda
