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


// What Model::rollback needs after a verification forward (model_spec.h verify_rollback_bytes).
struct VerifyLog {
    int64_t pos0 = -1, n = 0;                // the batch: positions [pos0, pos0 + n); pos0 < 0: none
    std::vector<std::vector<float>> conv0, ssm0;  // per DeltaNet layer: the state before the batch
    std::vector<std::vector<float>> x, y, gb;     // per DeltaNet layer: conv inputs [n][C], outputs
                                                  // (q, k L2-normalised) [n][C], [n][g | beta][n_v]
    std::vector<float> hidden;               // [n][n_embd]: final-norm hidden of each token (MTP input)
};

// The per-sequence state: KV cache of the attention layers, conv and SSM states of the DeltaNet layers,
// and, when the state drafts with the MTP head, the MTP block's own KV cache and the hidden state of
// the last token fed (the next token pairs with it).
struct State {
    int64_t n_ctx = 0;
    int64_t pos = 0;                         // tokens processed so far
    KvTypes kv_type;                         // K and V storage (model_spec.h)
    // per attention layer: [n_ctx][n_head_kv][head_dim]; left uninitialised (only rows < pos are read),
    // so a long context costs no page faults until it is used.
    std::vector<std::unique_ptr<uint8_t[]>> k, v;
    size_t k_row_bytes = 0, v_row_bytes = 0; // bytes of one position of one layer's K / V
    std::vector<std::vector<float>> conv;    // per DeltaNet layer: [channel][ssm_conv - 1], oldest first
    std::vector<std::vector<float>> ssm;     // per DeltaNet layer: [v_head][v_dim j][k_dim i] (S^T rows)

    // MTP (empty unless the state was made with mtp): KV rows at the main positions; row p holds the MTP
    // input (hidden of token p, token p + 1), so rows [0, pos - 1) are final after each forward.
    std::vector<std::unique_ptr<uint8_t[]>> mtp_k, mtp_v;
    std::vector<float> mtp_h;                // final-norm hidden of token pos - 1 (valid when pos > 0)
    // Draft chain (Model::mtp_draft): the next draft step's position and input hidden state; reset by
    // every forward, rollback and restore.
    int64_t draft_pos = -1;
    std::vector<float> draft_h;
    std::vector<float> spec_rows;            // verify_greedy / mtp_draft_greedy: their logits rows (reused)

    VerifyLog verify;                        // the last forward with verify=true, until rollback or forward

    bool has_mtp() const { return !mtp_k.empty(); }
    void reset();                            // back to an empty sequence (states zeroed)
    size_t bytes() const;
};

// A checkpoint of the recurrent part (and optionally the KV cache up to pos).
struct Snapshot {
    int64_t pos = 0;
    bool has_kv = false;
    std::vector<std::vector<float>> conv, ssm;
    std::vector<float> mtp_h;
    std::vector<std::vector<uint8_t>> k, v;  // only rows [0, pos) when has_kv (MTP rows after the main ones)
    size_t bytes() const;
};

class Model {
public:
    Model(Config cfg, Weights w, int n_threads);  // w from bind_cpu_weights (validated)

    const Config& config() const { return cfg_; }
    int n_threads() const { return pool_.size(); }

    bool has_mtp() const { return cfg_.n_nextn > 0; }

    // mtp: the state also keeps the MTP block's cache (the model must have one), for mtp_draft.
    std::unique_ptr<State> new_state(int64_t n_ctx, KvTypes kv_type, bool mtp = false) const;

    // Runs n tokens through the model at positions state.pos.., advancing the state. Logits are
    // written for every token (logits_all) or only for the last one, into out ([n or 1][n_vocab]);
    // out may be null to skip the LM head. Batches larger than n_batch are split internally.
    // verify: one batch of at most kMaxVerifyTokens, logged so that rollback() can keep a prefix of it.
    void forward(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int64_t n_batch = 256,
                 bool verify = false);

    // After a verify forward of n tokens: the state as if only its first n_keep (1..n) had been fed,
    // bit-identical to feeding them (the DeltaNet updates of the kept tokens are replayed from the log).
    void rollback(State& st, int64_t n_keep) const;

    // The greedy speculative verification in one call (no penalties: the logits' own argmax decides):
    // verify tokens (the last sampled token, then n - 1 drafts) as one batch and accept the longest prefix
    // of drafts that each equal the main model's argmax after the tokens before them; no logits leave.
    // Returns n_acc; *next = the argmax after tokens[0..n_acc] (the correction at the first disagreement,
    // or the bonus token). rollback(st, n_keep) follows, as after verify (the caller may keep fewer than
    // n_acc + 1: a stop string or an end-of-generation token inside the accepted run).
    int64_t verify_greedy(State& st, const int32_t* tokens, int64_t n, int32_t* next);

    // Up to k chained greedy MTP draft steps after `token` (mtp_draft + argmax each); their ids into out.
    // Adaptive depth: the chain stops before a draft whose top softmax probability is below p_first (the
    // first draft) or p_min (the others); 0 = never. Returns how many were drafted.
    int64_t mtp_draft_greedy(State& st, int32_t token, int64_t k, int32_t* out, double p_first = 0.0,
                             double p_min = 0.0);

    // One MTP draft step: the draft logits [n_vocab] for the token after `token`. The first call after a
    // forward pairs `token` (the one sampled from the forward's last logits, not fed yet) with the hidden
    // state of the last token fed; each further call continues the chain with the MTP's own output
    // hidden state and the token drafted last (as vLLM and llama.cpp chain it).
    void mtp_draft(State& st, int32_t token, float* logits);

    // Draft logits of a fresh sequence: row t [n_vocab] = the MTP's logits for tokens[t + 2] given
    // tokens[0..t+1] (n - 1 rows); the reference check of the head.
    void eval_mtp(const int32_t* tokens, int64_t n, float* out);

    Snapshot snapshot(const State& st, bool with_kv) const;
    void restore(State& st, const Snapshot& snap) const;

private:
    void forward_batch(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, bool verify);
    void gdn_layer(const LayerWeights& L, int rl, State& st, const float* a, int64_t n, float* out, bool verify);
    // Gated attention over one KV cache (a main layer's or the MTP block's) at positions pos0..pos0+n-1.
    void attn_layer(const LayerWeights& L, uint8_t* Kc, uint8_t* Vc, const State& st, int64_t pos0, const float* a,
                    int64_t n, float* out);
    void ffn(const LayerWeights& L, const float* f, int64_t n, float* out);
    // The MTP block over n positions from pos0: inputs (h[i], tok[i]); writes its KV rows; hidden_out
    // [n][n_embd] its final-norm output, logits [n][n_vocab] (either may be null).
    void mtp_block(State& st, const float* h, const int32_t* tok, int64_t n, int64_t pos0, float* hidden_out,
                   float* logits);
    void check_tokens(const int32_t* tokens, int64_t n) const;

    Config cfg_;
    Weights w_;
    std::vector<int> layer_slot_;  // per layer: its index among attention or among recurrent layers
    std::vector<double> rope_freqs_;  // per rotated pair: radians per position (rope_scaling.h)
    float rope_mscale_ = 1.0f;
    mutable ThreadPool pool_;
};

}  // namespace pq
