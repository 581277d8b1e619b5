// model.h: the qwen35 model on one CUDA device -- weights uploaded once, sequence states, snapshots and
// the forward pass kept on the GPU; decode steps replayed as a CUDA graph.
//
// Plain C++ against the runtime API (host_api.h): the pybind11 module (python/bind_model.cpp, g++) uses
// it, and the implementation (model/model.cu) is compiled by nvcc for pyqwen._cuda and by g++
// -DPQ_CUDA_EMU for the emulated test module. The layer math is csrc/model.cpp's forward_batch, op for
// op, through the kernel families' launchers (ops.h, ops_matvec.h, ops_gdn.h, ops_attention.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../host_api.h"
#include "../ops_attention.h"  // DecodeBucket (a decode graph's key)
#include "../ops_sampling.h"
#include "../plan/workspace_sizes.h"
#include "../rope_table.h"
#include "model_spec.h"

namespace pq::cuda {

// The hyper-parameters: the same struct as the CPU core (csrc/common/config.h).
using ModelConfig = pq::Config;

// The weights as the Python side hands them over: name -> pointer into the mmapped GGUF (host memory).
using HostTensors = std::map<std::string, pq::TensorDesc>;

// One weight in device memory (a slice of the model's weight arena).
struct DevTensor {
    int type = -1;
    int64_t ne0 = 0, ne1 = 1;
    const void* data = nullptr;
    size_t bytes = 0;
    bool valid() const { return data != nullptr; }
    const float* f32() const { return static_cast<const float*>(data); }
};

struct ModelOptions {
    int64_t n_batch = 256;      // largest prefill chunk (activation buffers are sized for it)
    bool use_graphs = true;     // capture decode steps as CUDA graphs (ignored by the emulator build)
    size_t upload_chunk = 64u << 20;  // bytes per staged host->device copy while uploading weights
    int device = 0;             // CUDA device index; every entry point makes it current for its thread
};

// One sequence: KV cache of every attention layer ([n_ctx][n_head_kv][head_dim] per layer, rows >= pos
// never read; K and V each fp16, Q8_0 or Q4_0 -- kv_types()), conv and SSM states (fp32, the CPU layouts)
// of every DeltaNet layer. With mtp (a state that drafts with the MTP head) also the MTP block's KV rows
// (same types) at the main positions (row p
// pairs the hidden state of token p with token p + 1: rows [0, pos - 1) are final after each forward),
// mtp_h, the final-norm hidden state of token pos - 1 (in the recurrent arena: snapshots carry it), and
// the draft chain's hidden state. One device allocation.
class State {
public:
    ~State();
    State(const State&) = delete;
    State& operator=(const State&) = delete;

    int64_t n_ctx = 0;
    int64_t pos = 0;
    void reset();  // pos = 0, recurrent states zeroed (synchronous)
    size_t bytes() const { return bytes_; }
    const void* owner() const { return owner_; }
    bool has_mtp() const { return !mtp_k_.empty(); }
    KvTypes kv_types() const { return kv_types_; }

private:
    friend class Model;
    State() = default;
    KvTypes kv_types_;
    size_t k_row_bytes_ = 0, v_row_bytes_ = 0;  // one position's K (V) row of one layer
    const void* owner_ = nullptr;  // the Model that made it
    cudaStream_t stream_ = nullptr;
    void* arena_ = nullptr;
    size_t bytes_ = 0;
    std::vector<uint8_t*> k_, v_;     // per attention layer
    std::vector<float*> conv_, ssm_;  // per DeltaNet layer
    std::vector<uint8_t*> mtp_k_, mtp_v_;  // per MTP block (empty: the state does not draft)
    float* mtp_h_ = nullptr;          // [n_embd] final-norm hidden of token pos - 1 (MTP states)
    float* draft_h_ = nullptr;        // [n_embd] the draft chain's last output hidden (MTP states)
    int64_t draft_pos_ = -1;          // the next draft step's position; -1: the chain starts from mtp_h_
    float* recurrent_ = nullptr;      // conv_, ssm_ (and mtp_h_) of all layers, contiguous
    size_t recurrent_bytes_ = 0;
    uint64_t id_ = 0;                 // unique per state (graph cache key)
    uint64_t step_ = 0;               // bumps with every change of the sequence (a verification's log
                                      // is valid while it has the value the verification left)
};

// A checkpoint in pinned host memory: recurrent states (+ KV rows [0, pos) when has_kv). Taken and
// restored by asynchronous copies on the model's stream (model.cu explains the ordering), so the device
// keeps no checkpoint and their number is bounded only by host memory (the session cache's budget).
class Snapshot {
public:
    ~Snapshot();
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;
    int64_t pos = 0;
    bool has_kv = false;
    size_t bytes() const { return bytes_; }
    // The K and V rows [0, pos) of layer i (attention layers, then MTP blocks) in host memory, has_kv
    // only; they hold the state's bytes once the model's stream ran the copy (Model::synchronize).
    size_t kv_layers() const { return has_kv ? kv_layers_ : 0; }
    std::pair<const uint8_t*, size_t> k_rows(size_t i) const;
    std::pair<const uint8_t*, size_t> v_rows(size_t i) const;

private:
    friend class Model;
    Snapshot() = default;
    const void* owner_ = nullptr;
    void* arena_ = nullptr;
    size_t bytes_ = 0;
    size_t recurrent_bytes_ = 0;
    size_t k_layer_bytes_ = 0;   // bytes of K per attention layer = pos * K row bytes (0: no KV rows)
    size_t v_layer_bytes_ = 0;   // of V
    KvTypes kv_types_;           // of the state it was taken from
    size_t kv_layers_ = 0;       // K/V pairs held: the attention layers', then the MTP blocks'
    bool mtp_ = false;           // taken from a state with an MTP cache
};

using ProgressFn = std::function<void(size_t done, size_t total)>;

// Test hook: false makes every model run chunks of <= kMultiPassMaxTok tokens op by op (one quantization
// per matmul, separate residual adds and norms) instead of the decode path's fused launches, so the tests
// can show the two give the same bits.
void set_decode_fusion(bool on);

// Test hook, the planted bug of tests/cuda/test_decode_graph_emu.py: true makes recorded decode bodies
// pass the capture-time position by value to the attention (instead of reading the device-resident one),
// so every replay at another position of the bucket attends with a stale position.
void set_decode_graph_stale_position(bool on);

class Model {
public:
    // Uploads every weight (chunked, through pinned staging buffers); progress(done, total) after each chunk.
    // The tensors are bound and checked by the spec (model_spec.h) before anything is allocated.
    Model(ModelConfig cfg, const HostTensors& tensors, ModelOptions opt,
          const ProgressFn& progress = nullptr);
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const ModelConfig& config() const { return cfg_; }
    const ModelOptions& options() const { return opt_; }
    size_t weight_bytes() const { return weight_bytes_; }
    WorkspacePlan workspace() const { return plan_; }  // as plan_workspace (workspace_sizes.h) sized it

    bool has_mtp() const { return cfg_.n_nextn > 0; }

    // mtp: the state also keeps the MTP head's cache (the model must have one), for mtp_draft. kv: the
    // cache's K and V types (f16, q8_0 or q4_0 each; f32 is the CPU backend's).
    std::unique_ptr<State> new_state(int64_t n_ctx, KvTypes kv = KvTypes{}, bool mtp = false);

    // As pq::Model::forward: n tokens at st.pos; out (host) gets logits of every token (logits_all) or
    // of the last one; out == nullptr skips the LM head. Chunks of at most n_batch tokens.
    // verify: one batch of at most kMaxVerifyTokens, each token through the decode step's arithmetic
    // (its rows equal one-token steps bit for bit), logged so that rollback() can keep a prefix of it.
    void forward(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int64_t n_batch,
                 bool verify = false);

    // A verification (forward with verify) whose rows stay on the device: argmax (host, [n]) gets the
    // greedy choice of each row (ties: the smallest id), 4 bytes per row instead of n_vocab floats.
    void verify_argmax(State& st, const int32_t* tokens, int64_t n, int32_t* argmax);

    // After a verify forward of n tokens: the state as if only its first n_keep (1..n) had been fed one
    // token at a time (bit-identical: the kept tokens' DeltaNet updates are replayed by the decode kernel
    // from the log). One verification is logged per model: the state's last step must be it.
    void rollback(State& st, int64_t n_keep);

    // One MTP draft step: logits [n_vocab] (host) for the token after `token` (pq::Model::mtp_draft);
    // or, with logits == nullptr, only their argmax into *argmax (chosen on the device).
    void mtp_draft(State& st, int32_t token, float* logits, int32_t* argmax = nullptr);

    // Draft logits of a fresh sequence: row t = the MTP's logits for tokens[t + 2] (n - 1 rows, host).
    void eval_mtp(const int32_t* tokens, int64_t n, float* out);

    // One decode step on the device: feeds `token` (or, when token < 0, the token the previous
    // decode step of this model chose, still in device memory) at st.pos, picks the next token on the
    // GPU (argmax, or the sampler with p) and returns it -- 4 bytes cross to the host.
    int32_t decode(State& st, int32_t token, const SampleParams& p);

    std::unique_ptr<Snapshot> snapshot(const State& st, bool with_kv);
    void restore(State& st, const Snapshot& s);

    // Graph statistics (tests and benchmarks): captures (one per state and bucket of positions, not per
    // token), whole instantiations, in-place updates, replays.
    // body_nodes: kernels + copies of the last decode body (the graph's node count: cudaGraphGetNodes on a
    // GPU, the emulator's node ledger there) -- what issue 10's launches-per-token figure counts.
    struct GraphStats {
        int64_t captures = 0, instantiations = 0, updates = 0, launches = 0, direct = 0, body_nodes = 0;
        int64_t pos_sets = 0;  // launches that set a graph slot's device-resident position from the host
    };
    GraphStats graph_stats() const { return gstats_; }
    bool graphs_enabled() const;
    void synchronize();

private:
    using Layer = LayerT<DevTensor>;
    struct Buffers;
    struct GraphCache;
    struct VerifyLog;

    void upload(const HostTensors& tensors, const ProgressFn& progress);
    void ensure_workspace(int64_t n_ctx);
    void check_state(const State& st) const;
    void use_device() const;  // cudaSetDevice(opt_.device) for the calling host thread
    // The forward body for n tokens whose ids are already in d_tokens_ (no host sync); leaves the
    // final-normed hidden rows [first, n) in the norm buffer when lm_rows > 0 and the LM head of those
    // rows in d_logits_.
    // With a log (a verification), the DeltaNet and attention layers run token by token through the
    // decode kernels and keep what rollback needs.
    void run_layers(State& st, int64_t n, VerifyLog* log = nullptr);
    void run_lm_head(int64_t first_row, int64_t rows);
    // The decode path (model.cu): chunks of <= kMultiPassMaxTok tokens with shared Q8_1 activations.
    bool decode_path(int64_t n) const;
    void run_layers_decode(State& st, int64_t n, VerifyLog* log, bool defer_last_add);
    void run_lm_head_decode();
    bool any_q8(std::initializer_list<const DevTensor*> ws) const;
    void matmuls(const float* x, int64_t K, int64_t n, std::initializer_list<std::pair<const DevTensor*, float*>> ws,
                 const void* q8 = nullptr, const struct MatmulPart* conv_first = nullptr,
                 const struct NormTail* tail = nullptr);
    // The decode path's layer entry of layer il (its attn_norm; il == n_layer: the final norm): the norm's
    // weight and whether the matmuls after it read Q8_1.
    std::pair<const float*, bool> entry_norm(int il) const;
    void quantize_for(const float* x, int64_t K, int64_t n, std::initializer_list<const DevTensor*> ws);
    void begin_forward(State& st, const int32_t* tokens, int64_t n, bool verify);  // checks, then invalidations
    void forward_verify(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int32_t* argmax);
    // argmax of `rows` rows of the logits buffer into `ids` (host); a row without a finite logit is an error.
    void argmax_rows(int64_t rows, int32_t* ids, const char* what);
    // LM head of rows already final-normed (a [rows][n_embd] device array), rows <= kLogitRows.
    void run_lm_head_normed(const float* a, int64_t rows);
    // After the main layers ran a chunk of m tokens at pos0 (ids in the token buffer), on an MTP state:
    // the final-norm hidden rows into `hidden` (or the buffer's), the MTP cache caught up on rows
    // pos0-1 .. pos0+m-2, mtp_h = the last hidden row. logits_out (host; eval_mtp): the full MTP block
    // over those rows and its logits, one row per caught-up row.
    void mtp_after_chunk(State& st, int64_t pos0, int64_t m, float* hidden, float* logits_out);
    // The MTP block over m rows at positions pos0..: inputs token ids (device) and hidden rows h_first
    // (row 0) and h_rest (rows 1..m-1). full == false: only its K/V rows are written; else its
    // shared_head_norm output goes to out_h [m][n_embd].
    void run_mtp_block(State& st, const int32_t* tok, const float* h_first, const float* h_rest, int64_t m,
                       int64_t pos0, bool full, float* out_h);
    void ensure_verify_log();
    void drop_verify_log(const State& st);  // forget a pending verification of st
    void run_decode_body(State& st);  // run_layers(st, 1) + LM head of that row
    void launch_decode_body(State& st);
    // What a recorded decode body depends on besides the device-resident position.
    struct GraphKey {
        uint64_t state_id = 0, generation = 0;  // the state's buffers, the model's (ws_generation_)
        DecodeBucket bucket;                    // the attention grid (decode_bucket of pos + 1)
        bool fused = false;                     // decode_path(1): the fused launches or the op-by-op ones
        bool stale = false;                     // the planted-bug hook (set_decode_graph_stale_position)
        bool operator==(const GraphKey& o) const {
            return state_id == o.state_id && generation == o.generation && bucket == o.bucket && fused == o.fused &&
                   stale == o.stale;
        }
    };
    GraphKey graph_key(const State& st) const;
    void record_slot(int slot, State& st, const GraphKey& key);
    void prepare_next(State& st);
    // the attention of a one-token step (graph_pos_: in a recording, at the device-resident position)
    cudaError_t attention_one(State& st, int slot, const Layer& L, int8_t* out_qs, float* out_ds, bool fused_combine);

    ModelConfig cfg_;
    ModelOptions opt_;
    RopeFreqs rope_;  // the rotary table of cfg_ (rope_scaling.h), built once
    cudaStream_t stream_ = nullptr;          // all work
    cudaStream_t capture_stream_ = nullptr;  // graph recording only (never executes anything)
    cudaStream_t cur_ = nullptr;             // where run_* enqueue: stream_, or capture_stream_ while recording
    bool device_token_valid_ = false;        // buf tokens[0] holds the last decode step's choice...
    uint64_t device_token_state_ = 0;        // ...for this state
    void* weight_arena_ = nullptr;
    size_t weight_bytes_ = 0;
    WeightsT<DevTensor> w_;  // slices of weight_arena_, one per tensor of the spec
    std::vector<int> slot_;  // per layer: index among attention or DeltaNet layers
    std::vector<WeightShape> weight_shapes_;  // what the workspace plan sizes the matmul scratch for

    WorkspacePlan plan_;
    int64_t ws_ctx_ = 0;            // n_ctx the scratch is sized for
    bool ws_all_tiles_ = false;     // ... and with the fp16 tile pair for every shape (MMQ off: test hook)
    std::unique_ptr<Buffers> buf_;
    uint64_t ws_generation_ = 0;    // bumps when buffers move (captured graphs become stale)
    uint64_t next_state_id_ = 1;

    std::unique_ptr<VerifyLog> vlog_;  // the last verification (one per model), allocated on first use

    std::unique_ptr<GraphCache> graph_;
    int32_t* graph_pos_ = nullptr;  // while recording a decode body: the slot's device-resident position
    GraphStats gstats_;
};

}  // namespace pq::cuda
