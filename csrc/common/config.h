// config.h: the hyper-parameters of a qwen35 model, shared by the CPU core and the CUDA backend.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pq {

enum RopeScaling : int { kRopeNone = 0, kRopeLinear = 1, kRopeYarn = 2 };

struct Config {
    int64_t n_embd = 0, n_ff = 0, n_vocab = 0;
    int n_layer = 0;                  // main layers (the MTP block is not one)
    int n_nextn = 0;                  // MTP blocks after them (blk.{n_layer}..), 0 when not loaded
    std::vector<bool> recurrent;      // per layer: true = Gated DeltaNet, false = gated attention
    // gated attention
    int n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
    float rope_base = 10000.0f;
    // RoPE scaling (llama.cpp's context parameters, transformers' rope_parameters; rope_scaling.h holds
    // the math both backends use). freq_scale = 1 / factor.
    int rope_scaling = 0;             // kRopeNone, kRopeLinear or kRopeYarn
    float rope_freq_scale = 1.0f;
    int64_t yarn_orig_ctx = 0;        // the context the model was trained at (YaRN's correction range)
    float yarn_ext_factor = 1.0f;     // weight of the YaRN ramp (1: as published; 0: plain interpolation)
    float yarn_attn_factor = 1.0f;    // multiplies YaRN's magnitude scale 1 + 0.1 ln(factor)
    float yarn_beta_fast = 32.0f, yarn_beta_slow = 1.0f;
    // Gated DeltaNet
    int ssm_conv = 4;                 // conv kernel size
    int ssm_k_heads = 0, ssm_v_heads = 0, ssm_k_dim = 0, ssm_v_dim = 0;
    float rms_eps = 1e-6f;

    int64_t conv_channels() const { return 2LL * ssm_k_heads * ssm_k_dim + (int64_t)ssm_v_heads * ssm_v_dim; }
    int64_t conv_state_floats() const { return (int64_t)(ssm_conv - 1) * conv_channels(); }
    int64_t ssm_state_floats() const { return (int64_t)ssm_v_heads * ssm_v_dim * ssm_k_dim; }
    int64_t kv_row_values() const { return (int64_t)n_head_kv * head_dim; }  // K (or V) values per position
    int n_attn_layers() const { return (int)std::count(recurrent.begin(), recurrent.end(), false); }
    int n_recurrent_layers() const { return (int)std::count(recurrent.begin(), recurrent.end(), true); }
};

}  // namespace pq
