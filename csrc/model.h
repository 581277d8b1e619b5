// model.h: the qwen35 (Qwen3.5/3.6 dense hybrid) model on the CPU: weights, sequence state, forward.
//
// Layer math and tensor layouts follow llama.cpp's GGUF conventions (V heads tiled, ssm_a = -exp(A_log),
// RMSNorm weights stored as 1+w, attn_q rows interleaved [q|gate] per head). The forward of a batch of
// tokens runs here entirely; Python only hands in token ids and gets logits back.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model_spec.h"
#include "tensor.h"
#include "threadpool.h"

namespace pq {

// The weights in place in the mmapped GGUF, one field per tensor of the spec (model_spec.h).
using LayerWeights = LayerT<Tensor>;
using Weights = WeightsT<Tensor>;

// A tensor table as the Python side hands it over: name -> (type, ne0, ne1, address in the mmap).
using TensorMap = std::map<std::string, TensorDesc>;

// Binds every tensor of the spec from the table and validates it (shape, type the CPU kernels read);
// output.weight absent = tied to token_embd. Throws std::invalid_argument naming the problem.
Weights bind_cpu_weights(const Config& cfg, const TensorMap& tensors);

enum class KvType { F32, F16 };
inline int kv_ggml_type(KvType t) { return t == KvType::F16 ? T_F16 : T_F32; }

// The per-sequence state: KV cache of the attention layers, conv and SSM states of the DeltaNet layers.
struct State {
    int64_t n_ctx = 0;
    int64_t pos = 0;                         // tokens processed so far
    KvType kv_type = KvType::F16;
    // per attention layer: [n_ctx][n_head_kv][head_dim]; left uninitialised (only rows < pos are read),
    // so a long context costs no page faults until it is used.
    std::vector<std::unique_ptr<uint8_t[]>> k, v;
    size_t kv_row_bytes = 0;                 // bytes of one position of one layer's K (or V)
    std::vector<std::vector<float>> conv;    // per DeltaNet layer: [channel][ssm_conv - 1], oldest first
    std::vector<std::vector<float>> ssm;     // per DeltaNet layer: [v_head][v_dim j][k_dim i] (S^T rows)

    void reset();                            // back to an empty sequence (states zeroed)
    size_t bytes() const;
};

// A checkpoint of the recurrent part (and optionally the KV cache up to pos).
struct Snapshot {
    int64_t pos = 0;
    bool has_kv = false;
    std::vector<std::vector<float>> conv, ssm;
    std::vector<std::vector<uint8_t>> k, v;  // only rows [0, pos) when has_kv
    size_t bytes() const;
};

class Model {
public:
    Model(Config cfg, Weights w, int n_threads);  // w from bind_cpu_weights (validated)

    const Config& config() const { return cfg_; }
    int n_threads() const { return pool_.size(); }

    std::unique_ptr<State> new_state(int64_t n_ctx, KvType kv_type) const;

    // Runs n tokens through the model at positions state.pos.., advancing the state. Logits are
    // written for every token (logits_all) or only for the last one, into out ([n or 1][n_vocab]);
    // out may be null to skip the LM head. Batches larger than n_batch are split internally.
    void forward(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int64_t n_batch = 256);

    Snapshot snapshot(const State& st, bool with_kv) const;
    void restore(State& st, const Snapshot& snap) const;

private:
    void forward_batch(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all);
    void gdn_layer(const LayerWeights& L, int rl, State& st, const float* a, int64_t n, float* out);
    void attn_layer(const LayerWeights& L, int al, State& st, const float* a, int64_t n, float* out);
    void ffn(const LayerWeights& L, const float* f, int64_t n, float* out);

    Config cfg_;
    Weights w_;
    std::vector<int> layer_slot_;  // per layer: its index among attention or among recurrent layers
    mutable ThreadPool pool_;
};

}  // namespace pq
