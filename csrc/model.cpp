// model.cpp: the qwen35 forward pass on the CPU (the readable reference the fast paths are held to).
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "attention.h"
#include "quants.h"
#include "rope_scaling.h"
#include "gdn.h"
#include "gdn_chunk.h"
#include "matmul.h"
#include "ops.h"
#include "simd/dispatch.h"

namespace pq {

// ---- weights --------------------------------------------------------------------------------------

Weights bind_cpu_weights(const Config& c, const TensorMap& tensors) {
    Weights w;
    auto lookup = [&](const std::string& name) -> const TensorDesc* {
        auto it = tensors.find(name);
        return it == tensors.end() ? nullptr : &it->second;
    };
    bind_weights(c, w, lookup, type_supported, "CPU", [](const TensorSpec&, const TensorDesc& t) {
        Tensor x;
        x.type = t.type;
        x.ne0 = t.ne0;
        x.ne1 = t.ne1;
        x.data = static_cast<const uint8_t*>(t.data);
        return x;
    });
    if (!w.output.valid()) w.output = w.token_embd;  // tied LM head
    return w;
}

// ---- state ---------------------------------------------------------------------------------------

void State::reset() {
    pos = 0;
    for (auto& c : conv) std::fill(c.begin(), c.end(), 0.0f);
    for (auto& s : ssm) std::fill(s.begin(), s.end(), 0.0f);
    std::fill(mtp_h.begin(), mtp_h.end(), 0.0f);
    draft_pos = -1;
    verify.pos0 = -1;
}

size_t State::bytes() const {
    size_t b = (k.size() + mtp_k.size()) * (size_t)n_ctx * (k_row_bytes + v_row_bytes);
    for (auto& c : conv) b += c.size() * 4;
    for (auto& s : ssm) b += s.size() * 4;
    return b + mtp_h.size() * 4;
}

size_t Snapshot::bytes() const {
    size_t b = mtp_h.size() * 4;
    for (auto& c : conv) b += c.size() * 4;
    for (auto& s : ssm) b += s.size() * 4;
    for (auto& x : k) b += x.size();
    for (auto& x : v) b += x.size();
    return b;
}

Model::Model(Config cfg, Weights w, int n_threads) : cfg_(std::move(cfg)), w_(std::move(w)), pool_(n_threads) {
    validate_config(cfg_);
    if (w_.layers.size() != (size_t)(cfg_.n_layer + cfg_.n_nextn) || !w_.token_embd.valid() || !w_.output.valid())
        throw std::invalid_argument("weights do not match the config (bind them with bind_cpu_weights)");
    int na = 0, nr = 0;
    for (int il = 0; il < cfg_.n_layer; ++il) layer_slot_.push_back(cfg_.recurrent[il] ? nr++ : na++);
    for (int i = 0; i < cfg_.n_rot / 2; ++i) rope_freqs_.push_back(rope_pair_freq(cfg_, i));
    rope_mscale_ = rope_mscale(cfg_);
}

std::unique_ptr<State> Model::new_state(int64_t n_ctx, KvTypes kv_type, bool mtp) const {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
    check_kv_types(cfg_, kv_type);
    if (mtp && !has_mtp()) throw std::invalid_argument("this model has no MTP head (no nextn block in the file)");
    auto st = std::make_unique<State>();
    st->n_ctx = n_ctx;
    st->kv_type = kv_type;
    st->k_row_bytes = kv_row_bytes(cfg_, kv_type.k);
    st->v_row_bytes = kv_row_bytes(cfg_, kv_type.v);
    // The buffers the spec lists (model_spec.h PQ_STATE_BUFFERS), each per layer that has it; the MTP
    // block's only when this state drafts with it.
    for_each_state_buffer(cfg_, [&](const StateBufferSpec& b) {
        if (b.blocks == kMtp && !mtp) return;
        for (int i = 0; i < b.n_layers; ++i) {
            const std::string name = b.name;
            if (b.per_position) {
                auto& dst = name == "k" ? st->k : name == "v" ? st->v : name == "mtp_k" ? st->mtp_k : st->mtp_v;
                dst.emplace_back(new uint8_t[(size_t)n_ctx * (b.kv_part == kKeys ? st->k_row_bytes : st->v_row_bytes)]);
            } else if (name == "mtp_h") {
                st->mtp_h.assign(b.values, 0.0f);  // one hidden state: the MTP blocks chain on it
            } else {
                auto& dst = name == "conv" ? st->conv : st->ssm;
                dst.emplace_back(b.values, 0.0f);
            }
        }
    });
    return st;
}

Snapshot Model::snapshot(const State& st, bool with_kv) const {
    Snapshot s;
    s.pos = st.pos;
    s.conv = st.conv;
    s.ssm = st.ssm;
    s.mtp_h = st.mtp_h;
    s.has_kv = with_kv;
    if (with_kv) {
        const size_t nk = (size_t)st.pos * st.k_row_bytes, nv = (size_t)st.pos * st.v_row_bytes;
        for (size_t i = 0; i < st.k.size(); ++i) {
            s.k.emplace_back(st.k[i].get(), st.k[i].get() + nk);
            s.v.emplace_back(st.v[i].get(), st.v[i].get() + nv);
        }
        for (size_t i = 0; i < st.mtp_k.size(); ++i) {
            s.k.emplace_back(st.mtp_k[i].get(), st.mtp_k[i].get() + nk);
            s.v.emplace_back(st.mtp_v[i].get(), st.mtp_v[i].get() + nv);
        }
    }
    return s;
}

void Model::restore(State& st, const Snapshot& s) const {
    if (s.pos > st.n_ctx) throw std::invalid_argument("snapshot position beyond this state's context");
    if (s.conv.size() != st.conv.size() || s.ssm.size() != st.ssm.size())
        throw std::invalid_argument("snapshot belongs to a different model");
    for (size_t i = 0; i < s.conv.size(); ++i)
        if (s.conv[i].size() != st.conv[i].size() || s.ssm[i].size() != st.ssm[i].size())
            throw std::invalid_argument("snapshot belongs to a different model");
    if (s.mtp_h.size() != st.mtp_h.size())
        throw std::invalid_argument("snapshot and state differ in MTP drafting (make both with the same mtp flag)");
    if (s.has_kv) {
        const size_t nk = (size_t)s.pos * st.k_row_bytes, nv = (size_t)s.pos * st.v_row_bytes;
        if (s.k.size() != st.k.size() + st.mtp_k.size()) throw std::invalid_argument("snapshot belongs to a different model");
        for (size_t i = 0; i < s.k.size(); ++i) {
            if (s.k[i].size() != nk || s.v[i].size() != nv)
                throw std::invalid_argument("snapshot KV cache has a different layout");
            const bool main = i < st.k.size();
            uint8_t* kd = main ? st.k[i].get() : st.mtp_k[i - st.k.size()].get();
            uint8_t* vd = main ? st.v[i].get() : st.mtp_v[i - st.k.size()].get();
            std::copy(s.k[i].begin(), s.k[i].end(), kd);
            std::copy(s.v[i].begin(), s.v[i].end(), vd);
        }
    }
    st.conv = s.conv;
    st.ssm = s.ssm;
    st.mtp_h = s.mtp_h;
    st.pos = s.pos;
    st.draft_pos = -1;
    st.verify.pos0 = -1;
}

// ---- forward -------------------------------------------------------------------------------------

static const float* f32(const Tensor& t) { return (const float*)t.data; }

void Model::check_tokens(const int32_t* tokens, int64_t n) const {
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
            throw std::out_of_range("token id " + std::to_string(tokens[i]) + " outside the vocabulary");
}

void Model::forward(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int64_t n_batch,
                    bool verify) {
    if (n <= 0) throw std::invalid_argument("no tokens to process");
    if (st.pos + n > st.n_ctx)
        throw std::length_error("context overflow: " + std::to_string(st.pos) + " + " + std::to_string(n) +
                                " tokens exceed n_ctx " + std::to_string(st.n_ctx));
    if (st.conv.size() != (size_t)cfg_.n_recurrent_layers() || st.k.size() != (size_t)cfg_.n_attn_layers() ||
        (st.has_mtp() && (int)st.mtp_k.size() != cfg_.n_nextn))
        throw std::invalid_argument("state belongs to a different model");
    if (verify && n > kMaxVerifyTokens)
        throw std::invalid_argument("a verification feeds at most " + std::to_string(kMaxVerifyTokens) + " tokens");
    check_tokens(tokens, n);
    st.draft_pos = -1;
    st.verify.pos0 = -1;
    if (verify) n_batch = n;  // one batch: rollback replays within it
    if (n_batch < 1) n_batch = 1;
    for (int64_t b = 0; b < n; b += n_batch) {
        const int64_t m = std::min(n_batch, n - b);
        const bool last = b + m == n;
        float* o = nullptr;
        if (out) o = logits_all ? out + b * cfg_.n_vocab : (last ? out : nullptr);
        forward_batch(st, tokens + b, m, o, logits_all, verify);
    }
}

void Model::forward_batch(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, bool verify) {
    const int64_t E = cfg_.n_embd, pos0 = st.pos;
    std::vector<float> x(n * E), a(n * E), tmp(n * E);
    for (int64_t t = 0; t < n; ++t) tensor_row_to_float(w_.token_embd, tokens[t], x.data() + t * E);
    if (verify) {
        // The log takes the SSM states before the batch by a swap, not a copy: each DeltaNet layer then
        // copies its heads back into st.ssm right where its delta rule reads them (gdn_layer).
        VerifyLog& lg = st.verify;
        lg.conv0 = st.conv;
        if (lg.ssm0.size() != st.ssm.size()) lg.ssm0 = st.ssm;  // first verification: give it the shapes
        lg.ssm0.swap(st.ssm);
    }

    for (int il = 0; il < cfg_.n_layer; ++il) {
        const LayerWeights& L = w_.layers[il];
        const int slot = layer_slot_[il];
        for (int64_t t = 0; t < n; ++t) rms_norm(x.data() + t * E, f32(L.attn_norm), a.data() + t * E, E, cfg_.rms_eps);
        if (cfg_.recurrent[il]) gdn_layer(L, slot, st, a.data(), n, tmp.data(), verify);
        else attn_layer(L, st.k[slot].get(), st.v[slot].get(), st, pos0, a.data(), n, tmp.data());
        for (int64_t i = 0; i < n * E; ++i) x[i] += tmp[i];
        for (int64_t t = 0; t < n; ++t)
            rms_norm(x.data() + t * E, f32(L.post_attention_norm), a.data() + t * E, E, cfg_.rms_eps);
        ffn(L, a.data(), n, tmp.data());
        for (int64_t i = 0; i < n * E; ++i) x[i] += tmp[i];
    }
    st.pos += n;

    // The final norm of the rows that need it: the LM head's, and every row when the MTP reads them
    // (its input is the main model's final-norm hidden state) or a verification logs them.
    const bool all_rows = st.has_mtp() || verify;
    const int64_t first = (logits_all || all_rows) ? 0 : n - 1, rows = n - first;
    if (!out && !all_rows) return;
    for (int64_t t = 0; t < rows; ++t)
        rms_norm(x.data() + (first + t) * E, f32(w_.output_norm), a.data() + t * E, E, cfg_.rms_eps);
    if (verify) {
        st.verify.pos0 = pos0;
        st.verify.n = n;
        st.verify.hidden.assign(a.begin(), a.end());
    }
    if (st.has_mtp()) {
        // Catch the MTP cache up: row p pairs the hidden state of token p with token p + 1, so this batch
        // completes row pos0 - 1 (with the hidden state kept from the last batch) and rows pos0..pos0+n-2;
        // its last hidden state waits for the next token.
        std::vector<float> h((size_t)n * E);
        std::copy(st.mtp_h.begin(), st.mtp_h.end(), h.begin());
        std::copy(a.begin(), a.begin() + (n - 1) * E, h.begin() + E);
        const int64_t skip = pos0 == 0 ? 1 : 0;  // nothing precedes the first token of the sequence
        if (n - skip > 0)
            mtp_block(st, h.data() + skip * E, tokens + skip, n - skip, pos0 - 1 + skip, nullptr, nullptr);
        std::copy(a.begin() + (n - 1) * E, a.begin() + n * E, st.mtp_h.begin());
    }
    if (!out) return;
    const int64_t lm_first = logits_all ? 0 : n - 1 - first;
    matmul(pool_, w_.output, a.data() + lm_first * E, rows - lm_first, out);
}

// ---- speculative decoding: rollback, MTP ----------------------------------------------------------

void Model::rollback(State& st, int64_t n_keep) const {
    VerifyLog& lg = st.verify;
    if (lg.pos0 < 0 || st.pos != lg.pos0 + lg.n)
        throw std::invalid_argument("rollback needs a verify forward as the state's last step");
    if (n_keep < 1 || n_keep > lg.n)
        throw std::invalid_argument("rollback keeps 1.." + std::to_string(lg.n) + " tokens, got " + std::to_string(n_keep));
    const int64_t E = cfg_.n_embd;
    if (n_keep < lg.n) {
        const Config& c = cfg_;
        const int64_t C = c.conv_channels(), K = c.ssm_conv, nk = c.ssm_k_heads, nv = c.ssm_v_heads;
        const int64_t dk = c.ssm_k_dim, dv = c.ssm_v_dim, Dk = nk * dk;
        const float q_scale = 1.0f / std::sqrt((float)dk);
        // The SSM: back to the states before the batch (a swap with the log: one rollback per verification,
        // so the log's copy is not needed after this), then the kept tokens' updates, replayed with the
        // kernel and inputs of the batch, so the floats are those of feeding only these tokens.
        st.ssm.swap(lg.ssm0);
        for (size_t rl = 0; rl < st.ssm.size(); ++rl) {
            const float* y = lg.y[rl].data();
            const float* gb = lg.gb[rl].data();
            float* S_all = st.ssm[rl].data();
            pool_.parallel_for(nv, [&](int64_t h0, int64_t h1, int) {
                std::vector<float> o_scratch((size_t)n_keep * dv);
                for (int64_t h = h0; h < h1; ++h) {
                    const int64_t kh = h % nk;
                    simd_kernels().delta_rule(y + kh * dk, y + Dk + kh * dk, y + 2 * Dk + h * dv, C, C, C, gb + h, gb + nv + h,
                                    2 * nv, S_all + h * dv * dk, dk, dv, n_keep, q_scale, o_scratch.data(), dv);
                }
            });
            // The conv window: the last K-1 raw inputs of [window before the batch | kept tokens' inputs].
            const float* x = lg.x[rl].data();
            const float* w0 = lg.conv0[rl].data();
            float* w = st.conv[rl].data();
            for (int64_t ch = 0; ch < C; ++ch)
                for (int64_t j = 0; j < K - 1; ++j) {
                    const int64_t src = n_keep - (K - 1) + j;  // index in the kept inputs; < 0: old window
                    w[ch * (K - 1) + j] = src >= 0 ? x[src * C + ch] : w0[ch * (K - 1) + (K - 1 + src)];
                }
        }
        st.pos = lg.pos0 + n_keep;
    }
    if (st.has_mtp())
        std::copy(lg.hidden.begin() + (n_keep - 1) * E, lg.hidden.begin() + n_keep * E, st.mtp_h.begin());
    st.draft_pos = -1;
    lg.pos0 = -1;
}

// np.argmax's answer on a float32 row: the first maximum, or the first NaN if there is one (so the fused
// greedy step picks exactly the token the host path's Sampler would).
static int32_t argmax_row(const float* x, int64_t n) {
    int64_t best = 0;
    float bv = x[0];
    if (std::isnan(bv)) return 0;
    for (int64_t i = 1; i < n; ++i) {
        const float v = x[i];
        if (v > bv) {
            bv = v;
            best = i;
        } else if (std::isnan(v)) {
            return (int32_t)i;
        }
    }
    return (int32_t)best;
}

int64_t Model::verify_greedy(State& st, const int32_t* tokens, int64_t n, int32_t* next) {
    if (n <= 0) throw std::invalid_argument("no tokens to process");
    if (n > kMaxVerifyTokens)
        throw std::invalid_argument("a verification feeds at most " + std::to_string(kMaxVerifyTokens) + " tokens");
    const int64_t V = cfg_.n_vocab;
    st.spec_rows.resize((size_t)(n * V));
    forward(st, tokens, n, st.spec_rows.data(), true, n, true);
    // Row i judges draft tokens[i + 1]; the first disagreement ends the run (its argmax is the correction).
    int64_t n_acc = 0;
    int32_t best = argmax_row(st.spec_rows.data(), V);
    while (n_acc < n - 1 && best == tokens[n_acc + 1]) {
        ++n_acc;
        best = argmax_row(st.spec_rows.data() + n_acc * V, V);
    }
    *next = best;
    return n_acc;
}

// The largest softmax probability of a logits row: 1 / sum exp(x - max), in double (as
// pyqwen.speculative.policy's _top_prob computes it). NaN when the row holds one.
static double top_prob_row(const float* x, int64_t n) {
    float mx = x[0];
    for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += std::exp((double)x[i] - (double)mx);
    return 1.0 / sum;
}

int64_t Model::mtp_draft_greedy(State& st, int32_t token, int64_t k, int32_t* out, double p_first, double p_min) {
    if (k < 0 || k >= kMaxVerifyTokens)
        throw std::invalid_argument("a draft chain is 0.." + std::to_string(kMaxVerifyTokens - 1) + " tokens long");
    const int64_t V = cfg_.n_vocab;
    st.spec_rows.resize(std::max(st.spec_rows.size(), (size_t)V));
    for (int64_t i = 0; i < k; ++i) {
        mtp_draft(st, token, st.spec_rows.data());
        const double p = i == 0 ? p_first : p_min;
        if (p > 0.0 && top_prob_row(st.spec_rows.data(), V) < p) return i;  // the head is unsure: stop here
        token = out[i] = argmax_row(st.spec_rows.data(), V);
    }
    return k;
}

void Model::mtp_block(State& st, const float* h, const int32_t* tok, int64_t n, int64_t pos0, float* hidden_out,
                      float* logits) {
    const int64_t E = cfg_.n_embd;
    const LayerWeights& L = w_.layers[cfg_.n_layer];  // the first MTP block (the one llama.cpp and vLLM run)
    // u = eh_proj([enorm(embed(token)) | hnorm(h)])
    std::vector<float> eh((size_t)n * 2 * E), x((size_t)n * E), a((size_t)n * E), tmp((size_t)n * E);
    for (int64_t t = 0; t < n; ++t) {
        float* e = eh.data() + t * 2 * E;
        tensor_row_to_float(w_.token_embd, tok[t], e);
        rms_norm(e, f32(L.nextn_enorm), e, E, cfg_.rms_eps);
        rms_norm(h + t * E, f32(L.nextn_hnorm), e + E, E, cfg_.rms_eps);
    }
    matmul(pool_, L.nextn_eh_proj, eh.data(), n, x.data());
    for (int64_t t = 0; t < n; ++t) rms_norm(x.data() + t * E, f32(L.attn_norm), a.data() + t * E, E, cfg_.rms_eps);
    attn_layer(L, st.mtp_k[0].get(), st.mtp_v[0].get(), st, pos0, a.data(), n, hidden_out || logits ? tmp.data() : nullptr);
    if (!hidden_out && !logits) return;  // catching the cache up: only its K/V rows were needed
    for (int64_t i = 0; i < n * E; ++i) x[i] += tmp[i];
    for (int64_t t = 0; t < n; ++t)
        rms_norm(x.data() + t * E, f32(L.post_attention_norm), a.data() + t * E, E, cfg_.rms_eps);
    ffn(L, a.data(), n, tmp.data());
    for (int64_t i = 0; i < n * E; ++i) x[i] += tmp[i];
    float* hn = hidden_out ? hidden_out : a.data();
    for (int64_t t = 0; t < n; ++t) rms_norm(x.data() + t * E, f32(L.nextn_shared_head_norm), hn + t * E, E, cfg_.rms_eps);
    if (logits) matmul(pool_, w_.output, hn, n, logits);
}

void Model::mtp_draft(State& st, int32_t token, float* logits) {
    if (!st.has_mtp()) throw std::invalid_argument("this state does not draft with the MTP head (make it with mtp=True)");
    if (st.pos == 0) throw std::invalid_argument("MTP drafting needs at least one token fed");
    check_tokens(&token, 1);
    const int64_t E = cfg_.n_embd;
    const bool first = st.draft_pos < 0;
    const int64_t p = first ? st.pos - 1 : st.draft_pos;
    if (p >= st.n_ctx) throw std::length_error("MTP draft past the end of the context");
    std::vector<float> h(first ? st.mtp_h : st.draft_h), out((size_t)E);
    mtp_block(st, h.data(), &token, 1, p, out.data(), logits);
    st.draft_h.swap(out);
    st.draft_pos = p + 1;
}

void Model::eval_mtp(const int32_t* tokens, int64_t n, float* out) {
    if (!has_mtp()) throw std::invalid_argument("this model has no MTP head (no nextn block in the file)");
    if (n < 2) throw std::invalid_argument("eval_mtp needs at least two tokens");
    check_tokens(tokens, n);
    auto st = new_state(n, KvTypes{T_F32, T_F32}, true);
    forward_batch(*st, tokens, n, nullptr, false, true);  // verify: keeps every final-norm hidden row
    mtp_block(*st, st->verify.hidden.data(), tokens + 1, n - 1, 0, nullptr, out);
}

void Model::ffn(const LayerWeights& L, const float* f, int64_t n, float* out) {
    const int64_t F = cfg_.n_ff;
    std::vector<float> g(n * F), u(n * F);
    matmul(pool_, L.ffn_gate, f, n, g.data());
    matmul(pool_, L.ffn_up, f, n, u.data());
    simd_kernels().mul_silu(g.data(), u.data(), g.data(), n * F);
    matmul(pool_, L.ffn_down, g.data(), n, out);
}

// delta_rule_chunked at its default chunk, with the token loop's signature.
static void delta_rule_chunked_fn(const float* q, const float* k, const float* v, int64_t q_stride, int64_t k_stride,
                                  int64_t v_stride, const float* g, const float* beta, int64_t gb_stride, float* S,
                                  int64_t dk, int64_t dv, int64_t n, float q_scale, float* o, int64_t o_stride) {
    delta_rule_chunked(q, k, v, q_stride, k_stride, v_stride, g, beta, gb_stride, S, dk, dv, n, q_scale, o, o_stride);
}

// Gated DeltaNet: in-projections, causal conv + SiLU, L2-normalised q/k, the delta-rule recurrence
// per V head (V head h reads QK head h % n_k_heads: the GGUF's tiled head order), gated RMSNorm.
void Model::gdn_layer(const LayerWeights& L, int rl, State& st, const float* a, int64_t n, float* out, bool verify) {
    const Config& c = cfg_;
    const int64_t C = c.conv_channels(), K = c.ssm_conv, nk = c.ssm_k_heads, nv = c.ssm_v_heads;
    const int64_t dk = c.ssm_k_dim, dv = c.ssm_v_dim, Dk = nk * dk, Dv = nv * dv;
    std::vector<float> qkv(n * C), z(n * Dv), b(n * nv), al(n * nv), y(n * C), o(n * Dv);
    matmul(pool_, L.attn_qkv, a, n, qkv.data());
    matmul(pool_, L.attn_gate, a, n, z.data());
    matmul(pool_, L.ssm_beta, a, n, b.data());
    matmul(pool_, L.ssm_alpha, a, n, al.data());

    VerifyLog& lg = st.verify;
    if (verify) {  // rollback rebuilds the conv window from the raw inputs
        lg.x.resize(st.conv.size());
        lg.x[rl].assign(qkv.begin(), qkv.end());
    }
    // Causal depthwise conv over [state (K-1 oldest first) | new inputs]; tap K-1 is the current token.
    float* cs = st.conv[rl].data();
    pool_.parallel_for(C, [&](int64_t c0, int64_t c1, int) {
        simd_kernels().conv1d_silu(qkv.data(), f32(L.ssm_conv1d), cs, y.data(), C, K, n, c0, c1);
    });

    // q and k: L2-normalise each head once per token (they are shared by n_v/n_k V heads).
    for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < 2 * nk; ++h) l2_norm(y.data() + t * C + h * dk, dk, 1e-6f);

    // Per-token, per-head log decay g = ssm_a * softplus(alpha + dt_bias) (ssm_a = -exp(A_log)) and
    // write strength beta = sigmoid(b).
    const float* A = f32(L.ssm_a);
    const float* dt = f32(L.ssm_dt);
    for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < nv; ++h) {
            al[t * nv + h] = A[h] * softplus(al[t * nv + h] + dt[h]);
            b[t * nv + h] = sigmoid(b[t * nv + h]);
        }

    if (verify) {  // and replays the kept tokens' delta-rule updates from these
        lg.y.resize(st.conv.size());
        lg.y[rl].assign(y.begin(), y.end());
        lg.gb.resize(st.conv.size());
        lg.gb[rl].resize((size_t)n * 2 * nv);
        for (int64_t t = 0; t < n; ++t)
            for (int64_t h = 0; h < nv; ++h) {
                lg.gb[rl][(t * 2 + 0) * nv + h] = al[t * nv + h];
                lg.gb[rl][(t * 2 + 1) * nv + h] = b[t * nv + h];
            }
    }
    const float q_scale = 1.0f / std::sqrt((float)dk);
    const float* norm_w = f32(L.ssm_norm);
    float* S_all = st.ssm[rl].data();
    // Long prefill batches take the chunked form when it is on (gdn_chunk.h; off by default: batch
    // invariance); a verification never does, so its rows and its rollback replay stay bit-identical to
    // one-token steps.
    static_assert(kGdnChunkMinTokens > kMaxVerifyTokens, "verify batches must keep the token loop");
    const bool chunked = !verify && gdn_use_chunked(n);
    // A verification swapped the states before the batch into its log (forward_batch): each head starts
    // from its copy there.
    const float* S0 = verify ? lg.ssm0[rl].data() : nullptr;
    pool_.parallel_for(nv, [&](int64_t h0, int64_t h1, int) {
        for (int64_t h = h0; h < h1; ++h) {
            const int64_t kh = h % nk;  // tiled V -> QK head map of llama.cpp's GGUF
            if (S0) std::memcpy(S_all + h * dv * dk, S0 + h * dv * dk, (size_t)(dv * dk) * sizeof(float));
            (chunked ? delta_rule_chunked_fn : simd_kernels().delta_rule)(
                y.data() + kh * dk, y.data() + Dk + kh * dk, y.data() + 2 * Dk + h * dv, C, C, C, al.data() + h,
                b.data() + h, nv, S_all + h * dv * dk, dk, dv, n, q_scale, o.data() + h * dv, Dv);
            // Gated RMSNorm: normalise the head, scale by ssm_norm (no +1), gate by SiLU(z).
            for (int64_t t = 0; t < n; ++t) {
                float* oh = o.data() + t * Dv + h * dv;
                const float* zh = z.data() + t * Dv + h * dv;
                rms_norm(oh, norm_w, oh, dv, c.rms_eps);
                simd_kernels().mul_silu(oh, oh, zh, dv);
            }
        }
    });
    matmul(pool_, L.ssm_out, o.data(), n, out);
}

// One K or V row into the cache in its type (quantized types with llama.cpp's reference quantizer, so a
// cache written here holds the bytes llama.cpp's would).
static inline void kv_store(uint8_t* dst, const float* src, int64_t n, int type) {
    if (type == T_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (type == T_F16) {
        uint16_t* h = (uint16_t*)dst;
        for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(src[i]);
    } else {
        quant_traits(type)->from_float_ref(src, dst, n);
    }
}

// Gated attention: per-head [q | gate] rows, q/k RMSNorm, partial NEOX RoPE, causal GQA over the
// KV cache (query head h reads KV head h / (n_head / n_head_kv)), sigmoid gate, output projection.
// out == nullptr: only the K/V rows are written (the MTP cache catching up on tokens it drafts no more from).
void Model::attn_layer(const LayerWeights& L, uint8_t* Kc, uint8_t* Vc, const State& st, int64_t pos0, const float* a,
                       int64_t n, float* out) {
    const Config& c = cfg_;
    const int64_t H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim, group = H / Hkv;
    // A quantized cache stores rotated rows (model_spec.h kv_rotation_block): k and v here, q below, the output after.
    const int rot_k = st.kv_type.rotation_block(kKeys, (int)D), rot_v = st.kv_type.rotation_block(kValues, (int)D);
    std::vector<float> kk(n * Hkv * D), vv(n * Hkv * D);
    matmul(pool_, L.attn_k, a, n, kk.data());
    matmul(pool_, L.attn_v, a, n, vv.data());
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t g = 0; g < Hkv; ++g) {
            float* k = kk.data() + (t * Hkv + g) * D;
            rms_norm(k, f32(L.attn_k_norm), k, D, c.rms_eps);
            rope_neox(k, c.n_rot, pos0 + t, rope_freqs_.data(), rope_mscale_);
            if (rot_k) hadamard(k, D, rot_k);
            if (rot_v) hadamard(vv.data() + (t * Hkv + g) * D, D, rot_v);
        }
        kv_store(Kc + (size_t)(pos0 + t) * st.k_row_bytes, kk.data() + t * Hkv * D, Hkv * D, st.kv_type.k);
        kv_store(Vc + (size_t)(pos0 + t) * st.v_row_bytes, vv.data() + t * Hkv * D, Hkv * D, st.kv_type.v);
    }
    if (!out) return;

    std::vector<float> qg(n * H * 2 * D), o(n * H * D);
    matmul(pool_, L.attn_q, a, n, qg.data());
    for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < H; ++h) {
            float* q = qg.data() + (t * H + h) * 2 * D;
            rms_norm(q, f32(L.attn_q_norm), q, D, c.rms_eps);
            rope_neox(q, c.n_rot, pos0 + t, rope_freqs_.data(), rope_mscale_);
            if (rot_k) hadamard(q, D, rot_k);
        }

    const float scale = 1.0f / std::sqrt((float)D);
    const size_t k_head = st.k_row_bytes / Hkv, v_head = st.v_row_bytes / Hkv;
    // Work items: one KV head x a block of tokens, i.e. the M = tokens x group query rows that read the
    // same K/V rows (attention_rows reads each row once for all of them). The block keeps the score
    // scratch (M x keys floats, when the kernel keeps one) near 16 MiB however long the context; the
    // flash kernel keeps none and widens each F16 K/V tile once per item, so it takes 32 tokens (at 8K
    // keys, D 256, 6 rows per token: 2.20 against 2.41 CPU-ms per token with 16). A row's result does
    // not depend on the block (attention.h), only the work split does.
    const int64_t keys_max = pos0 + n;
    const bool scores = attention_rows_uses_scores(st.kv_type.k, st.kv_type.v, D);
    const int64_t block =
        scores ? std::max<int64_t>(1, std::min<int64_t>(16, (int64_t(4) << 20) / (group * keys_max))) : 32;
    const int64_t n_blocks = (n + block - 1) / block;
    pool_.parallel_for(Hkv * n_blocks, [&](int64_t i0, int64_t i1, int) {
        std::vector<float> qb(block * group * D), ob(block * group * D), S;
        std::vector<int64_t> n_keys(block * group);
        for (int64_t item = i0; item < i1; ++item) {
            const int64_t g = item / n_blocks, t0 = (item % n_blocks) * block, t1 = std::min(n, t0 + block);
            const int64_t M = (t1 - t0) * group;
            for (int64_t t = t0; t < t1; ++t)
                for (int64_t j = 0; j < group; ++j) {
                    const int64_t r = (t - t0) * group + j;
                    std::copy_n(qg.data() + (t * H + g * group + j) * 2 * D, D, qb.data() + r * D);
                    n_keys[r] = pos0 + t + 1;
                }
            if (scores) S.resize((size_t)M * n_keys[M - 1]);  // the flash-style kernel keeps none
            attention_rows(qb.data(), D, M, n_keys.data(), Kc + g * k_head, st.k_row_bytes, st.kv_type.k,
                           Vc + g * v_head, st.v_row_bytes, st.kv_type.v, D, scale, S.data(), ob.data(), D);
            for (int64_t t = t0; t < t1; ++t)
                for (int64_t j = 0; j < group; ++j) {
                    const int64_t h = g * group + j;
                    float* oh = o.data() + (t * H + h) * D;
                    std::copy_n(ob.data() + ((t - t0) * group + j) * D, D, oh);
                    if (rot_v) hadamard(oh, D, rot_v);  // back from the rotated V basis
                    const float* gate = qg.data() + (t * H + h) * 2 * D + D;
                    for (int64_t d = 0; d < D; ++d) oh[d] *= sigmoid(gate[d]);
                }
        }
    });
    matmul(pool_, L.attn_output, o.data(), n, out);
}

}  // namespace pq
