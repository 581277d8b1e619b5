// model.cu: the qwen35 forward pass on one CUDA device (see model.h).
//
// Orchestration only: every kernel is launched through the families' host launchers (ops.h,
// ops_matvec.h, ops_gdn.h, ops_attention.h, sampling in sampling.cu), so this file compiles unchanged
// with nvcc and with g++ -DPQ_CUDA_EMU. All work goes to the model's own non-blocking stream; the host
// waits only where a result crosses back (logits, a token id) or a call must be synchronous (state
// reset, restore).
//
// Decode steps (one token) are replayed from CUDA graphs, recorded once per (state, bucket) and launched
// with a single cudaGraphLaunch per token. A graph keeps its kernels' arguments as they were at the
// capture, so nothing in the decode body takes the position by value: the attention layers read it from
// a device-resident int that belongs to the graph's slot (ops_attention.h attention_decode_graph), and the
// body's last node advances it by one, so the next replay runs at the next position with no host write
// per token. The host sets that int with a launch of its own (decode_position_set: its value is the
// argument at the call, never a pinned word the host later overwrites -- issue 10's bug 1) only when the
// state's position is not what the slot's int holds: the first replay of a new recording (each slot has
// its own int), after a prefill, a verification, a rollback, a restore, a reset, or when the slot served
// another state. The split-K decode grid depends on the number of keys, so a graph is valid for a bucket
// of positions (decode_bucket: a power-of-two number of splits of 128 keys; splits past the live keys
// write neutral partials): a new recording when the position passes 129, 257, 513, ... keys, made for
// the next step right after the step that reached the boundary was launched, while the GPU runs it.
// kGraphSlots executable graphs are kept (least recently used replaced, never the one launched last), so
// a few states taking turns do not re-record. The
// logits are bit-identical with the direct launches (tests/cuda/test_decode_graph_emu.py, where the
// emulator's graphs replay the recorded arguments by value as CUDA does). The first decode step of a
// model runs directly (it loads every kernel module before anything is captured), as does every step
// with use_graphs = false.
//
// Chunks of <= 16 tokens (decode steps, verifications) take the decode path (run_layers_decode): each
// distinct matmul input quantized once, residual adds folded into the next norm, projections of one
// weight type in one launch (the DeltaNet conv as the qkv matmul's epilogue), the DeltaNet / attention /
// FFN kernels quantizing their own outputs -- the 27B's decode body is 515 nodes instead of 1,268, with
// the same bits.
#include "../compat.cuh"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

#include "../check.h"
#include "../ops.h"
#include "../ops_attention.h"
#include "../ops_gdn.h"
#include "../ops_matvec.h"
#include "../kernels/matvec_internal.cuh"  // prefill_mmq_disabled (the plan's test hook)
#include "../plan/device_plan.h"  // verify_log_layout
#include "model.h"

#if defined(PQ_CUDA_EMU)
#include "../emu/emu_control.h"  // node ledger: body_nodes
#endif

namespace pq::cuda {

static_assert(kVerifyRows == pq::kMaxVerifyTokens, "activation buffers hold one whole verification");

namespace {


[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Matmul / embedding weight types (the matvec family's launchers take any of these).
bool weight_type_ok(int type) { return matmul_k_granularity(type) != 0; }

// The CUDA kernels' limits on top of the spec's config checks.
void check_cuda_limits(const ModelConfig& c) {
    if ((c.n_attn_layers() > 0 || c.n_nextn > 0) && !attention_head_dim_ok(c.head_dim))
        fail("head_dim " + std::to_string(c.head_dim) + " is not supported by the CUDA attention kernels "
             "(32, 64, 128 or 256)");
    if ((c.n_attn_layers() > 0 || c.n_nextn > 0) && c.n_rot / 2 > kRopeMaxPairs)
        fail("n_rot " + std::to_string(c.n_rot) + " is not supported by the CUDA RoPE (at most 256)");
    if (c.n_recurrent_layers() > 0 && (c.ssm_conv > 8 || c.ssm_k_dim > 256))
        fail("DeltaNet conv kernel > 8 or key head dim > 256 is not supported by the CUDA kernels");
}

// One layer's cache in the state's K/V types, as the attention launchers take it, with the state's
// Hadamard rotation of quantized rows (model_spec.h kv_rotation_block: the CPU's csrc/model.cpp attn_layer).
KvCache kv_cache(const ModelConfig& c, const State& st, uint8_t* k, uint8_t* v) {
    KvCache kv;
    kv.k = k;
    kv.v = v;
    kv.k_type = st.kv_types().k;
    kv.v_type = st.kv_types().v;
    kv.k_rot = st.kv_types().rotation_block(kKeys, (int)c.head_dim);
    kv.v_rot = st.kv_types().rotation_block(kValues, (int)c.head_dim);
    return kv;
}

}  // namespace

// ---- weights ---------------------------------------------------------------------------------------

// Activation buffers + op scratch: one allocation, carved per the plan.
struct Model::Buffers {
    void* arena = nullptr;
    int32_t* tokens = nullptr;  // [n_batch] token ids of the current chunk (decode: [0] is the input)
    int32_t* next = nullptr;    // [1] token chosen by the last decode step
    float *x = nullptr, *a = nullptr, *t = nullptr;  // [n_batch][E]: residual, normed, layer output
    // MTP (models with a head): main final-norm hidden rows, [enorm(embd) | hnorm(h)] rows, MTP residual
    float *hid = nullptr, *eh = nullptr, *mx = nullptr;
    // DeltaNet
    float *qkv = nullptr, *z = nullptr, *beta = nullptr, *alpha = nullptr, *y = nullptr, *o = nullptr;
    // attention (aliases the DeltaNet buffers: a layer is one or the other)
    float *qg = nullptr, *k = nullptr, *v = nullptr, *ao = nullptr;
    float* h = nullptr;  // [n_batch][F] FFN hidden (aliases the mixer buffers: the FFN runs after them)
    void* q8 = nullptr;        // Q8_1 of the decode path's current matmul input (act_layout)
    void* q8b = nullptr;       // the FFN hidden row's Q8_1 (written while q8 is read)
    unsigned* q8cnt = nullptr; // the gate/up matmul's group counters (zero between launches)
    float* logits = nullptr;   // [kLogitRows][V]
    void* scratch = nullptr;   // shared by every op (one stream: ops never overlap)
    size_t scratch_bytes = 0;
    void* sample_ws = nullptr;
    size_t sample_ws_bytes = 0;
    int32_t* host_io = nullptr;  // pinned: [0] token in, [1] token out
    ~Buffers() {
        if (arena) cudaFree(arena);
        if (host_io) cudaFreeHost(host_io);
    }
};

struct Model::GraphCache {
    using Key = GraphKey;
    struct Slot {
        cudaGraphExec_t exec = nullptr;
        Key key;
        int32_t* pos = nullptr;  // device: the position the graph's next replay runs at
        int64_t pos_value = -1;  // what *pos holds once the queued work ran (-1: unknown)
        uint64_t used = 0;       // last launch (least recently used is replaced)
    };
    static constexpr int kGraphSlots = 4;
    Slot slot[kGraphSlots];
    int last = -1;  // slot launched most recently (never re-recorded: it may still run)
    uint64_t tick = 0;
    int32_t* pos_arena = nullptr;  // the slots' positions, one allocation (made at the first replay)
    ~GraphCache() {
        for (auto& s : slot)
            if (s.exec) cudaGraphExecDestroy(s.exec);
        if (pos_arena) cudaFree(pos_arena);
    }
    int find(const Key& k) const {
        for (int i = 0; i < kGraphSlots; ++i)
            if (slot[i].exec && slot[i].key == k) return i;
        return -1;
    }
    int victim() const {
        int v = -1;
        for (int i = 0; i < kGraphSlots; ++i) {
            if (i == last) continue;
            if (!slot[i].exec) return i;
            if (v < 0 || slot[i].used < slot[v].used) v = i;
        }
        return v;
    }
    bool warm = false;  // a decode body already ran uncaptured (every kernel module is loaded: lazy loading)
};

// The last verification (device_plan.h verify_log_layout): which state and step it belongs to, where.
struct Model::VerifyLog {
    void* arena = nullptr;
    VerifyLogLayout layout;
    uint64_t state_id = 0, step = 0;  // valid while the state is at this step
    int64_t pos0 = -1, n = 0;
    size_t rec_bytes = 0;             // bytes of the state's recurrent arena saved in rec0
    char* at(size_t off) const { return static_cast<char*>(arena) + off; }
    float* f(size_t off) const { return reinterpret_cast<float*>(at(off)); }

    // Where a DeltaNet layer's in-projections and conv output land: during a verification (log != null)
    // straight in the log, from which rollback replays the delta rule; otherwise in the step's buffers.
    struct GdnInputs {
        float *qkv, *y, *alpha, *beta;
    };
    static GdnInputs gdn_inputs(const VerifyLog* log, int slot, const Buffers& b) {
        if (!log) return {b.qkv, b.y, b.alpha, b.beta};
        const VerifyLogLayout& l = log->layout;
        return {log->f(l.x[slot]), log->f(l.y[slot]), log->f(l.alpha[slot]), log->f(l.beta[slot])};
    }
    ~VerifyLog() {
        if (arena) cudaFree(arena);
    }
};

// ---- construction / upload -----------------------------------------------------------------------------

Model::Model(ModelConfig cfg, const HostTensors& tensors, ModelOptions opt, const ProgressFn& progress)
    : cfg_(std::move(cfg)), opt_(opt), graph_(std::make_unique<GraphCache>()) {
    validate_config(cfg_);
    check_cuda_limits(cfg_);
    rope_ = rope_freqs(cfg_);
    if (opt_.device < 0) throw std::invalid_argument("CUDA device index must be >= 0");
    use_device();
    if (opt_.n_batch < 1) opt_.n_batch = 1;
    if (opt_.upload_chunk < (1u << 20)) opt_.upload_chunk = 1u << 20;
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cur_ = stream_;
    if (opt_.use_graphs) check(cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    try {
        upload(tensors, progress);
    } catch (...) {
        if (weight_arena_) cudaFree(weight_arena_);
        cudaStreamDestroy(stream_);
        if (capture_stream_) cudaStreamDestroy(capture_stream_);
        throw;
    }
}

Model::~Model() {
    cudaSetDevice(opt_.device);
    if (stream_) cudaStreamSynchronize(stream_);
    graph_.reset();
    buf_.reset();
    if (weight_arena_) cudaFree(weight_arena_);
    if (stream_) cudaStreamDestroy(stream_);
    if (capture_stream_) cudaStreamDestroy(capture_stream_);
}

void Model::upload(const HostTensors& tensors, const ProgressFn& progress) {
    const ModelConfig& c = cfg_;
    // 1. Which tensors (the spec's, checked there: presence, shapes, types) and where in the arena.
    struct Item {
        DevTensor* dst;
        const void* src;
        size_t offset;
    };
    std::vector<Item> items;
    Carver cv;
    auto lookup = [&](const std::string& name) -> const TensorDesc* {
        auto it = tensors.find(name);
        return it == tensors.end() ? nullptr : &it->second;
    };
    bind_weights(c, w_, lookup, weight_type_ok, "CUDA", [&](const TensorSpec&, const TensorDesc& t) {
        DevTensor d;
        d.type = t.type;
        d.ne0 = t.ne0;
        d.ne1 = t.ne1;
        d.bytes = tensor_bytes(t.type, t.ne0, t.ne1);
        d.data = t.data;  // the host source until the arena exists (replaced below)
        return d;
    });
    // Slots are final now (w_.layers no longer resizes): record their arena offsets.
    for_each_weight(c, w_, [&](const TensorSpec&, const std::string&, int64_t, int64_t, DevTensor& d) {
        if (d.valid()) items.push_back({&d, d.data, cv.take(d.bytes)});
    });
    int na = 0, nr = 0;
    for (int il = 0; il < c.n_layer; ++il) slot_.push_back(c.recurrent[il] ? nr++ : na++);
    weight_bytes_ = cv.size;

    // 2. One device allocation; items sorted by offset (they are, by construction).
    check(cudaMalloc(&weight_arena_, std::max<size_t>(weight_bytes_, 1)), "cudaMalloc (weights)");
    for (Item& it : items) it.dst->data = static_cast<const uint8_t*>(weight_arena_) + it.offset;
    for (const Item& it : items) weight_shapes_.push_back({it.dst->type, it.dst->ne0, it.dst->ne1});
    if (!w_.output.valid()) w_.output = w_.token_embd;  // tied LM head: one copy

    // 3. Copy. The arena is filled as one byte range in chunks: each chunk is assembled in a pinned
    // staging buffer from the tensors it overlaps (alignment gaps stay garbage; nothing reads them) and
    // sent with one async copy, while the next chunk is assembled in the other staging buffer.
    const size_t chunk = opt_.upload_chunk;
    void* stage[2] = {nullptr, nullptr};
    bool pinned = cudaMallocHost(&stage[0], chunk) == cudaSuccess && cudaMallocHost(&stage[1], chunk) == cudaSuccess;
    std::vector<uint8_t> pageable;
    if (!pinned) {  // no pinned memory: plain synchronous copies from one pageable buffer
        cudaGetLastError();
        if (stage[0]) cudaFreeHost(stage[0]);
        stage[0] = stage[1] = nullptr;
        pageable.resize(chunk);
    }
    size_t first_item = 0, done = 0;
    if (progress) progress(0, weight_bytes_);
    try {
        for (size_t base = 0, ci = 0; base < weight_bytes_; base += chunk, ++ci) {
            const size_t len = std::min(chunk, weight_bytes_ - base);
            uint8_t* buf = pinned ? static_cast<uint8_t*>(stage[ci & 1]) : pageable.data();
            while (first_item < items.size() && items[first_item].offset + items[first_item].dst->bytes <= base)
                ++first_item;
            for (size_t i = first_item; i < items.size() && items[i].offset < base + len; ++i) {
                const size_t t0 = std::max(items[i].offset, base);
                const size_t t1 = std::min(items[i].offset + items[i].dst->bytes, base + len);
                if (t0 < t1)
                    std::memcpy(buf + (t0 - base), static_cast<const uint8_t*>(items[i].src) + (t0 - items[i].offset),
                                t1 - t0);
            }
            uint8_t* dst = static_cast<uint8_t*>(weight_arena_) + base;
            if (pinned) {
                // The previous chunk's copy (from the other buffer) must finish before that buffer is
                // refilled next iteration; this one overlaps with assembling the next chunk.
                check(cudaStreamSynchronize(stream_), "upload");
                check(cudaMemcpyAsync(dst, buf, len, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (weights)");
            } else {
                check(cudaMemcpyAsync(dst, buf, len, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (weights)");
                check(cudaStreamSynchronize(stream_), "upload");
            }
            done += len;
            if (progress) progress(done, weight_bytes_);
        }
        check(cudaStreamSynchronize(stream_), "upload");
    } catch (...) {
        cudaStreamSynchronize(stream_);
        if (stage[0]) cudaFreeHost(stage[0]);
        if (stage[1]) cudaFreeHost(stage[1]);
        throw;
    }
    if (stage[0]) cudaFreeHost(stage[0]);
    if (stage[1]) cudaFreeHost(stage[1]);
}

// ---- workspace -------------------------------------------------------------------------------------

void Model::ensure_workspace(int64_t n_ctx) {
    // The plan reserves the prefill's fp16 tile pair only for weights that take that route; the test hook
    // that switches MMQ off sends every weight there, so it re-plans with the pair for every shape.
    const bool all_tiles = detail::prefill_mmq_disabled();
    if (buf_ && n_ctx <= ws_ctx_ && all_tiles == ws_all_tiles_) return;
    const int64_t ctx = std::max(n_ctx, ws_ctx_);
    check(cudaStreamSynchronize(stream_), "ensure_workspace");
    const WorkspacePlan p = plan_workspace(cfg_, weight_shapes_, opt_.n_batch, ctx, all_tiles);
    const ActLayout L = act_layout(cfg_, opt_.n_batch);
    auto b = std::make_unique<Buffers>();
    const size_t total = L.total + p.scratch + p.misc;
    check(cudaMalloc(&b->arena, total), "cudaMalloc (activations and scratch)");
    char* base = static_cast<char*>(b->arena);
    b->tokens = reinterpret_cast<int32_t*>(base + L.tokens);
    b->next = reinterpret_cast<int32_t*>(base + L.next);
    auto f = [&](size_t off) { return reinterpret_cast<float*>(base + off); };
    b->x = f(L.x), b->a = f(L.a), b->t = f(L.t);
    if (cfg_.n_nextn > 0) b->hid = f(L.hid), b->eh = f(L.eh), b->mx = f(L.mx);
    b->qkv = f(L.qkv), b->z = f(L.z), b->beta = f(L.beta), b->alpha = f(L.alpha), b->y = f(L.y), b->o = f(L.o);
    b->qg = f(L.qg), b->k = f(L.k), b->v = f(L.v), b->ao = f(L.ao);
    b->h = f(L.h);
    b->q8 = base + L.q8;
    b->q8b = base + L.q8b;
    b->q8cnt = reinterpret_cast<unsigned*>(base + L.q8cnt);
    check(cudaMemsetAsync(b->q8cnt, 0, L.logits - L.q8cnt, stream_), "cudaMemsetAsync (matmul counters)");
    b->logits = f(L.logits);
    b->scratch = p.scratch ? base + L.total : nullptr;
    b->scratch_bytes = p.scratch;
    b->sample_ws = base + L.total + p.scratch;
    b->sample_ws_bytes = p.misc;
    check(cudaMallocHost(reinterpret_cast<void**>(&b->host_io), 2 * sizeof(int32_t)), "cudaMallocHost");
    buf_ = std::move(b);
    plan_ = p;
    ws_ctx_ = ctx;
    ws_all_tiles_ = all_tiles;
    ++ws_generation_;             // captured graphs point at the old buffers
    device_token_valid_ = false;  // and the previous decode choice was in the old token buffer
}

bool Model::graphs_enabled() const { return opt_.use_graphs; }

void Model::synchronize() {
    use_device();
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

// ---- states and snapshots --------------------------------------------------------------------------

void Model::ensure_verify_log() {
    if (vlog_) return;
    auto lg = std::make_unique<VerifyLog>();
    lg->layout = verify_log_layout(cfg_, kMaxVerifyTokens);
    check(cudaMalloc(&lg->arena, lg->layout.total), "cudaMalloc (verification log)");
    vlog_ = std::move(lg);
}

void Model::drop_verify_log(const State& st) {
    if (vlog_ && vlog_->state_id == st.id_) vlog_->pos0 = -1;
}

State::~State() {
    if (stream_) cudaStreamSynchronize(stream_);
    if (arena_) cudaFree(arena_);
}

void State::reset() {
    pos = 0;
    draft_pos_ = -1;
    ++step_;
    if (recurrent_bytes_) {
        check(cudaMemsetAsync(recurrent_, 0, recurrent_bytes_, stream_), "State.reset");
        check(cudaStreamSynchronize(stream_), "State.reset");
    }
}

std::unique_ptr<State> Model::new_state(int64_t n_ctx, KvTypes kv_types, bool mtp) {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
    if (!kv_cache_type_ok(kv_types.k) || !kv_cache_type_ok(kv_types.v))
        throw std::invalid_argument("the CUDA backend's KV cache is f16, q8_0 or q4_0 for K and V (got " +
                                    kv_types_name(kv_types) + "; f32 runs on the CPU backend)");
    check_kv_types(cfg_, kv_types);
    // kv_types.rotate (default on): quantized rows stored Hadamard-rotated as on the CPU (kv_cache below).
    if (mtp && !has_mtp()) throw std::invalid_argument("this model has no MTP head (no nextn block in the file)");
    use_device();
    ensure_workspace(n_ctx);
    const ModelConfig& c = cfg_;
    std::unique_ptr<State> st(new State());
    st->owner_ = this;
    st->stream_ = stream_;
    st->n_ctx = n_ctx;
    st->id_ = next_state_id_++;
    st->kv_types_ = kv_types;
    st->k_row_bytes_ = kv_row_bytes(c, kv_types.k);
    st->v_row_bytes_ = kv_row_bytes(c, kv_types.v);
    // The spec's buffers (model_spec.h PQ_STATE_BUFFERS; the MTP block's only when this state drafts).
    // Fixed-size ones first and contiguous, layer by layer and kind by kind (one memset resets them, one
    // copy snapshots them); then the KV rows (K, V in their types), layer by layer; then the draft chain's
    // hidden state.
    std::vector<StateBufferSpec> rec, kv;
    for_each_state_buffer(c, [&](const StateBufferSpec& b) {
        if (b.blocks == kMtp && !mtp) return;
        (b.per_position ? kv : rec).push_back(b);
    });
    std::map<std::string, std::vector<size_t>> off;
    Carver cv;
    for (uint8_t kind : {(uint8_t)kRecurrent, (uint8_t)kMtp})
        for (int i = 0; i < state_buffer_layers(c, kind); ++i)
            for (const StateBufferSpec& b : rec) {
                if (b.blocks != kind) continue;
                off[b.name].push_back(cv.size);
                cv.size += sizeof(float) * (size_t)b.values;
            }
    st->recurrent_bytes_ = cv.size;
    cv.size = align_up(cv.size);
    for (uint8_t kind : {(uint8_t)kAttention, (uint8_t)kMtp})
        for (int i = 0; i < state_buffer_layers(c, kind); ++i)
            for (const StateBufferSpec& b : kv)
                if (b.blocks == kind)
                    off[b.name].push_back(cv.take((size_t)n_ctx * (b.kv_part == kKeys ? st->k_row_bytes_ : st->v_row_bytes_)));
    const size_t draft_off = mtp ? cv.take(sizeof(float) * (size_t)c.n_embd) : 0;
    st->bytes_ = std::max<size_t>(cv.size, 1);
    check(cudaMalloc(&st->arena_, st->bytes_), "cudaMalloc (sequence state)");
    char* base = static_cast<char*>(st->arena_);
    st->recurrent_ = reinterpret_cast<float*>(base);
    for (size_t o : off["conv"]) st->conv_.push_back(reinterpret_cast<float*>(base + o));
    for (size_t o : off["ssm"]) st->ssm_.push_back(reinterpret_cast<float*>(base + o));
    for (size_t o : off["k"]) st->k_.push_back(reinterpret_cast<uint8_t*>(base + o));
    for (size_t o : off["v"]) st->v_.push_back(reinterpret_cast<uint8_t*>(base + o));
    for (size_t o : off["mtp_k"]) st->mtp_k_.push_back(reinterpret_cast<uint8_t*>(base + o));
    for (size_t o : off["mtp_v"]) st->mtp_v_.push_back(reinterpret_cast<uint8_t*>(base + o));
    if (mtp) {
        if (off["mtp_h"].empty() || st->mtp_k_.empty()) throw std::logic_error("MTP state buffers missing from the spec");
        st->mtp_h_ = reinterpret_cast<float*>(base + off["mtp_h"][0]);  // the blocks chain on one hidden state
        st->draft_h_ = reinterpret_cast<float*>(base + draft_off);
    }
    st->reset();
    return st;
}

void Model::check_state(const State& st) const {
    if (st.owner_ != this) throw std::invalid_argument("state belongs to a different model");
    use_device();
}

// The current device is per host thread (the server calls from its own threads): every entry point sets it.
void Model::use_device() const {
    const cudaError_t e = cudaSetDevice(opt_.device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error("CUDA device " + std::to_string(opt_.device) + " cannot be used: " +
                                 cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
    }
}

// Checkpoints live in pinned host memory and move by cudaMemcpyAsync on the model's stream, where all of
// the model's work runs in order:
//   - snapshot queues the device -> host copies and returns: any later step of any state is queued behind
//     them, so the source rows are read before anything overwrites them, and nothing reads the pinned
//     copy but a later restore (queued behind it too);
//   - restore queues the host -> device copies and returns: the next forward runs after them;
//   - ~Snapshot frees with cudaFreeHost, which waits for the device, so a copy in flight never reads or
//     writes freed memory.
// The emulator runs queued copies when the host waits and reads/writes pinned memory then, so a copy that
// were not ordered before the next step would see that step's bytes (tests/cuda/test_server_emu.py).
namespace {

struct KvPair {
    uint8_t* k;
    uint8_t* v;
};

std::vector<KvPair> kv_pairs(const std::vector<uint8_t*>& k, const std::vector<uint8_t*>& v,
                             const std::vector<uint8_t*>& mk, const std::vector<uint8_t*>& mv) {
    std::vector<KvPair> p;  // the attention layers', then the MTP blocks' (the same positions)
    for (size_t i = 0; i < k.size(); ++i) p.push_back({k[i], v[i]});
    for (size_t i = 0; i < mk.size(); ++i) p.push_back({mk[i], mv[i]});
    return p;
}

}  // namespace

std::unique_ptr<Snapshot> Model::snapshot(const State& st, bool with_kv) {
    check_state(st);
    std::unique_ptr<Snapshot> s(new Snapshot());
    s->owner_ = this;
    s->pos = st.pos;
    s->has_kv = with_kv;
    s->recurrent_bytes_ = st.recurrent_bytes_;
    s->kv_types_ = st.kv_types_;
    s->k_layer_bytes_ = with_kv ? (size_t)st.pos * st.k_row_bytes_ : 0;
    s->v_layer_bytes_ = with_kv ? (size_t)st.pos * st.v_row_bytes_ : 0;
    s->mtp_ = st.has_mtp();
    const std::vector<KvPair> kvp = kv_pairs(st.k_, st.v_, st.mtp_k_, st.mtp_v_);
    s->kv_layers_ = kvp.size();
    const size_t rec = align_up(s->recurrent_bytes_);
    const size_t kl = align_up(s->k_layer_bytes_), vl = align_up(s->v_layer_bytes_);
    s->bytes_ = rec + kvp.size() * (kl + vl);
    check(cudaMallocHost(&s->arena_, std::max<size_t>(s->bytes_, 1)), "cudaMallocHost (snapshot)");
    char* base = static_cast<char*>(s->arena_);
    if (s->recurrent_bytes_)
        check(cudaMemcpyAsync(base, st.recurrent_, s->recurrent_bytes_, cudaMemcpyDeviceToHost, stream_), "snapshot");
    if (with_kv && st.pos > 0) {
        for (size_t i = 0; i < kvp.size(); ++i) {
            char* at = base + rec + i * (kl + vl);
            check(cudaMemcpyAsync(at, kvp[i].k, s->k_layer_bytes_, cudaMemcpyDeviceToHost, stream_), "snapshot");
            check(cudaMemcpyAsync(at + kl, kvp[i].v, s->v_layer_bytes_, cudaMemcpyDeviceToHost, stream_), "snapshot");
        }
    }
    return s;
}

void Model::restore(State& st, const Snapshot& s) {
    check_state(st);
    if (s.owner_ != this) throw std::invalid_argument("snapshot belongs to a different model");
    if (s.pos > st.n_ctx) throw std::invalid_argument("snapshot position beyond this state's context");
    if (s.mtp_ != st.has_mtp())
        throw std::invalid_argument("snapshot and state differ in MTP drafting (make both with the same mtp flag)");
    if (s.recurrent_bytes_ != st.recurrent_bytes_) throw std::invalid_argument("snapshot belongs to a different model");
    const std::vector<KvPair> kvp = kv_pairs(st.k_, st.v_, st.mtp_k_, st.mtp_v_);
    if (s.has_kv && s.kv_layers_ != kvp.size()) throw std::invalid_argument("snapshot belongs to a different model");
    if (s.has_kv && !(s.kv_types_ == st.kv_types_))
        throw std::invalid_argument("snapshot KV cache has a different layout (KV types " + kv_types_name(s.kv_types_) +
                                    ", state " + kv_types_name(st.kv_types_) + ")");
    const char* base = static_cast<const char*>(s.arena_);
    const size_t rec = align_up(s.recurrent_bytes_);
    const size_t kl = align_up(s.k_layer_bytes_), vl = align_up(s.v_layer_bytes_);
    if (s.recurrent_bytes_)
        check(cudaMemcpyAsync(st.recurrent_, base, s.recurrent_bytes_, cudaMemcpyHostToDevice, stream_), "restore");
    if (s.has_kv && s.pos > 0) {
        for (size_t i = 0; i < kvp.size(); ++i) {
            const char* at = base + rec + i * (kl + vl);
            check(cudaMemcpyAsync(kvp[i].k, at, s.k_layer_bytes_, cudaMemcpyHostToDevice, stream_), "restore");
            check(cudaMemcpyAsync(kvp[i].v, at + kl, s.v_layer_bytes_, cudaMemcpyHostToDevice, stream_), "restore");
        }
    }
    st.pos = s.pos;
    st.draft_pos_ = -1;
    ++st.step_;
}

std::pair<const uint8_t*, size_t> Snapshot::k_rows(size_t i) const {
    if (i >= kv_layers()) throw std::out_of_range("snapshot KV layer index");
    const size_t kl = align_up(k_layer_bytes_), vl = align_up(v_layer_bytes_);
    return {static_cast<const uint8_t*>(arena_) + align_up(recurrent_bytes_) + i * (kl + vl), k_layer_bytes_};
}

std::pair<const uint8_t*, size_t> Snapshot::v_rows(size_t i) const {
    const auto k = k_rows(i);
    return {k.first + align_up(k_layer_bytes_), v_layer_bytes_};
}

Snapshot::~Snapshot() {
    if (arena_) cudaFreeHost(arena_);  // waits for the device: no copy of this snapshot is in flight after it
}

// ---- forward ---------------------------------------------------------------------------------------

#define PQ_OP(call) check((call), #call)


void Model::run_layers(State& st, int64_t n, VerifyLog* log) {
    if (decode_path(n)) {
        run_layers_decode(st, n, log, false);
        return;
    }
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    cudaStream_t s = cur_;
    const int64_t E = c.n_embd, F = c.n_ff;
    const float eps = c.rms_eps;
    PQ_OP(get_rows(w_.token_embd.type, w_.token_embd.data, E, w_.token_embd.ne1, b.tokens, n, b.x, s));
    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = w_.layers[il];
        const int slot = slot_[il];
        PQ_OP(rms_norm_f32(b.x, L.attn_norm.f32(), b.a, (int)E, (int)n, E, E, eps, s));
        if (c.recurrent[il]) {
            // Gated DeltaNet: in-projections, causal conv + SiLU, then l2norm / gating / delta rule /
            // gated RMSNorm in the gdn launcher, out-projection.
            const int64_t C = c.conv_channels(), nv = c.ssm_v_heads, Dv = nv * c.ssm_v_dim;
            // A verification writes the conv inputs/outputs and alpha/beta straight into its log.
            const auto [qkv, y, alpha, beta] = VerifyLog::gdn_inputs(log, slot, b);
            PQ_OP(matmul(L.attn_qkv.type, L.attn_qkv.data, E, C, b.a, n, qkv, b.scratch, s));
            PQ_OP(matmul(L.attn_gate.type, L.attn_gate.data, E, Dv, b.a, n, b.z, b.scratch, s));
            PQ_OP(matmul(L.ssm_beta.type, L.ssm_beta.data, E, nv, b.a, n, beta, b.scratch, s));
            PQ_OP(matmul(L.ssm_alpha.type, L.ssm_alpha.data, E, nv, b.a, n, alpha, b.scratch, s));
            PQ_OP(conv1d_silu(qkv, L.ssm_conv1d.f32(), st.conv_[slot], y, C, c.ssm_conv, n, s));
            if (log) {
                // Token by token through the decode step's kernel: the state and the outputs are those
                // of feeding the tokens one at a time (the chunked prefill sums in another order).
                for (int64_t t = 0; t < n; ++t)
                    PQ_OP(gdn(y + t * C, alpha + t * nv, beta + t * nv, L.ssm_a.f32(), L.ssm_dt.f32(), st.ssm_[slot],
                              b.z + t * Dv, L.ssm_norm.f32(), b.o + t * Dv, c.ssm_k_heads, nv, c.ssm_k_dim,
                              c.ssm_v_dim, 1, eps, b.scratch, s));
            } else {
                PQ_OP(gdn(y, alpha, beta, L.ssm_a.f32(), L.ssm_dt.f32(), st.ssm_[slot], b.z, L.ssm_norm.f32(), b.o,
                          c.ssm_k_heads, nv, c.ssm_k_dim, c.ssm_v_dim, n, eps, b.scratch, s));
            }
            PQ_OP(matmul(L.ssm_out.type, L.ssm_out.data, Dv, E, b.o, n, b.t, b.scratch, s));
        } else {
            // Gated attention: projections, then q/k norm + RoPE + fp16 KV append + causal GQA + sigmoid
            // gate in the attention launcher, output projection.
            const int64_t H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim;
            PQ_OP(matmul(L.attn_q.type, L.attn_q.data, E, 2 * H * D, b.a, n, b.qg, b.scratch, s));
            PQ_OP(matmul(L.attn_k.type, L.attn_k.data, E, Hkv * D, b.a, n, b.k, b.scratch, s));
            PQ_OP(matmul(L.attn_v.type, L.attn_v.data, E, Hkv * D, b.a, n, b.v, b.scratch, s));
            // A verification: one query at a time through the decode kernel (each sees the rows before it).
            const int64_t steps = log ? n : 1, per = log ? 1 : n;
            if (n == 1 && !log) PQ_OP(attention_one(st, slot, L, nullptr, nullptr, false));  // a decode step
            else for (int64_t t = 0; t < steps; ++t)
                PQ_OP(attention(b.qg + t * 2 * H * D, b.k + t * Hkv * D, b.v + t * Hkv * D, L.attn_q_norm.f32(),
                                L.attn_k_norm.f32(), kv_cache(cfg_, st, st.k_[slot], st.v_[slot]), st.n_ctx, st.pos + t,
                                per, (int)H, (int)Hkv, (int)D, rope_, eps, b.ao + t * H * D, b.scratch, s));
            PQ_OP(matmul(L.attn_output.type, L.attn_output.data, H * D, E, b.ao, n, b.t, b.scratch, s));
        }
        PQ_OP(add_f32(b.x, b.t, b.x, n * E, s));
        PQ_OP(rms_norm_f32(b.x, L.post_attention_norm.f32(), b.a, (int)E, (int)n, E, E, eps, s));
        PQ_OP(matmul_swiglu(L.ffn_gate.type, L.ffn_gate.data, L.ffn_up.type, L.ffn_up.data, E, F, b.a, n, b.h,
                            b.scratch, s));
        PQ_OP(matmul(L.ffn_down.type, L.ffn_down.data, F, E, b.h, n, b.t, b.scratch, s));
        PQ_OP(add_f32(b.x, b.t, b.x, n * E, s));
    }
}

// ---- the decode path: shared activations, fused residual adds, grouped projections -------------------
//
// Chunks of <= kMultiPassMaxTok tokens (decode steps, verifications, short prefill chunks) run every matmul
// through the mmv kernel on Q8_1 activations. Here each distinct matmul input is quantized once (the
// layer's normed row by the norm kernel itself, which also adds the previous residual: add_rms_norm_q8),
// and the projections of one input that share a weight type run as one launch (matmul_prepared). Per
// token the arithmetic is the op-by-op path's (bit-identical), so a verification's rows still equal
// decode steps. The 27B's decode body: 1,268 graph nodes before (20 per DeltaNet layer, 19 per attention
// layer), 515 now; the emulator's node ledger counts them (tests/cuda/test_decode_nodes_emu.py).

namespace {
bool g_decode_fusion = true;  // test hook (set_decode_fusion): off runs the op-by-op path for every chunk
}  // namespace

void set_decode_fusion(bool on) { g_decode_fusion = on; }

bool Model::decode_path(int64_t n) const {
    const ModelConfig& c = cfg_;
    if (n > kMultiPassMaxTok || !g_decode_fusion) return false;
    // every quantized input whole Q8_1 blocks (true for every real config; tiny test configs too)
    for (int64_t K : {(int64_t)c.n_embd, (int64_t)c.ssm_v_heads * c.ssm_v_dim, (int64_t)c.n_head * c.head_dim,
                      (int64_t)c.n_ff})
        if (K % 32 != 0) return false;
    return true;
}

bool Model::any_q8(std::initializer_list<const DevTensor*> ws) const {
    for (const DevTensor* w : ws)
        if (matmul_reads_q8(w->type)) return true;
    return false;
}

// The matmuls of one prepared input (x, its Q8_1 in q8, default buf q8): consecutive weights of one type
// share a launch.
// tail: the next layer entry as the epilogue of the (single) matmul.
void Model::matmuls(const float* x, int64_t K, int64_t n, std::initializer_list<std::pair<const DevTensor*, float*>> ws,
                    const void* q8, const MatmulPart* conv_first, const NormTail* tail) {
    if (!q8) q8 = buf_->q8;
    if (tail && ws.size() != 1) throw std::logic_error("matmuls: a norm epilogue needs exactly one weight");
    MatmulPart parts[kMatmulMaxParts];
    int np = 0, type = -1;
    auto flush = [&] {
        if (np) PQ_OP(matmul_prepared(type, parts, np, K, x, q8, n, cur_, tail));
        np = 0;
    };
    bool first = true;
    for (const auto& [w, y] : ws) {
        if (np == kMatmulMaxParts || (np && w->type != type)) flush();
        type = w->type;
        parts[np] = MatmulPart{w->data, w->ne1, y};
        if (first && conv_first) {
            parts[np].conv_w = conv_first->conv_w;
            parts[np].conv_state = conv_first->conv_state;
            parts[np].conv_y = conv_first->conv_y;
            parts[np].conv_k = conv_first->conv_k;
        }
        ++np;
        first = false;
    }
    flush();
}

// x's Q8_1 into buf q8 when one of the weights that read it wants it.
void Model::quantize_for(const float* x, int64_t K, int64_t n, std::initializer_list<const DevTensor*> ws) {
    if (any_q8(ws)) PQ_OP(quantize_act_q8(x, K, n, buf_->q8, cur_));
}

std::pair<const float*, bool> Model::entry_norm(int il) const {
    if (il == cfg_.n_layer) return {w_.output_norm.f32(), any_q8({&w_.output})};
    const Layer& L = w_.layers[il];
    if (cfg_.recurrent[il]) return {L.attn_norm.f32(), any_q8({&L.attn_qkv, &L.attn_gate, &L.ssm_beta, &L.ssm_alpha})};
    return {L.attn_norm.f32(), any_q8({&L.attn_q, &L.attn_k, &L.attn_v})};
}

// run_layers for n <= kMultiPassMaxTok. defer_last_add: the last layer's FFN output is added and the final
// norm (and its Q8_1) computed into a by the down projection's epilogue (the LM head reads them:
// run_lm_head_decode); otherwise x is complete on return.
//
// Every layer entry but layer 0's (residual add + RMSNorm + Q8_1) is the epilogue of the matmul before it
// (NormTail, ops_matvec.h: the matmul kernel's last CTA runs add_rms_norm_q8's arithmetic): the post-mixer
// norm the out projection's, the next layer's attn_norm (or the final norm) the down projection's.
void Model::run_layers_decode(State& st, int64_t n, VerifyLog* log, bool defer_last_add) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    cudaStream_t s = cur_;
    const int64_t E = c.n_embd, F = c.n_ff;
    const float eps = c.rms_eps;
    void* q8 = b.q8;
    auto entry_tail = [&](const float* w, bool quant) {
        // b.q8cnt[0]: no other counter user runs in the same launch; every launch leaves it zero
        return NormTail{b.x, w, b.a, quant ? q8 : nullptr, b.q8cnt, eps};
    };
    PQ_OP(get_rows(w_.token_embd.type, w_.token_embd.data, E, w_.token_embd.ne1, b.tokens, n, b.x, s));
    {
        const auto [w0, q0] = entry_norm(0);
        PQ_OP(add_rms_norm_q8(b.x, nullptr, w0, b.a, q0 ? q8 : nullptr, E, n, eps, s));
    }
    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = w_.layers[il];
        const int slot = slot_[il];
        const bool qf = any_q8({&L.ffn_gate, &L.ffn_up});
        const NormTail post = entry_tail(L.post_attention_norm.f32(), qf);
        if (c.recurrent[il]) {
            const int64_t C = c.conv_channels(), nv = c.ssm_v_heads, Dv = nv * c.ssm_v_dim;
            const auto [qkv, y, alpha, beta] = VerifyLog::gdn_inputs(log, slot, b);
            // the causal conv + SiLU as the qkv matmul's epilogue (each channel one warp's row)
            MatmulPart conv{};
            conv.conv_w = L.ssm_conv1d.f32();
            conv.conv_state = st.conv_[slot];
            conv.conv_y = y;
            conv.conv_k = c.ssm_conv;
            matmuls(b.a, E, n, {{&L.attn_qkv, qkv}, {&L.attn_gate, b.z}, {&L.ssm_beta, beta}, {&L.ssm_alpha, alpha}},
                    nullptr, &conv);
            if (log || n == 1) {
                // token by token through the decode step's kernel (a verification: see run_layers), which
                // also quantizes its output for the out-projection
                const bool qo = any_q8({&L.ssm_out}) && c.ssm_v_dim % 32 == 0;
                auto* qs = static_cast<int8_t*>(q8);
                auto* ds = reinterpret_cast<float*>(static_cast<char*>(q8) + q8_values_bytes(Dv, n));
                for (int64_t t = 0; t < n; ++t)
                    PQ_OP(gdn_decode_q8(y + t * C, alpha + t * nv, beta + t * nv, L.ssm_a.f32(), L.ssm_dt.f32(),
                                        st.ssm_[slot], b.z + t * Dv, L.ssm_norm.f32(), b.o + t * Dv, c.ssm_k_heads,
                                        (int)nv, c.ssm_k_dim, c.ssm_v_dim, eps, qo ? qs + t * Dv : nullptr,
                                        qo ? ds + t * (Dv / 32) * 2 : nullptr, b.q8cnt, s));
                if (!qo) quantize_for(b.o, Dv, n, {&L.ssm_out});
            } else {
                PQ_OP(gdn(y, alpha, beta, L.ssm_a.f32(), L.ssm_dt.f32(), st.ssm_[slot], b.z, L.ssm_norm.f32(), b.o,
                          c.ssm_k_heads, nv, c.ssm_k_dim, c.ssm_v_dim, n, eps, b.scratch, s));
                quantize_for(b.o, Dv, n, {&L.ssm_out});
            }
            matmuls(b.o, Dv, n, {{&L.ssm_out, b.t}}, nullptr, nullptr, &post);
        } else {
            const int64_t H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim;
            matmuls(b.a, E, n, {{&L.attn_q, b.qg}, {&L.attn_k, b.k}, {&L.attn_v, b.v}});
            const int64_t HD = H * D;
            if (log || n == 1) {
                // one query at a time through the decode kernels (a verification: each sees the rows before
                // it), whose combine step also quantizes the output for the output projection
                const bool qo = any_q8({&L.attn_output});
                auto* qs = static_cast<int8_t*>(q8);
                auto* ds = reinterpret_cast<float*>(static_cast<char*>(q8) + q8_values_bytes(HD, n));
                if (n == 1 && !log) {
                    PQ_OP(attention_one(st, slot, L, qo ? qs : nullptr, qo ? ds : nullptr, true));  // a decode step
                } else {
                    for (int64_t t = 0; t < n; ++t)
                        PQ_OP(attention_decode_q8(b.qg + t * 2 * HD, b.k + t * Hkv * D, b.v + t * Hkv * D,
                                                  L.attn_q_norm.f32(), L.attn_k_norm.f32(),
                                                  kv_cache(cfg_, st, st.k_[slot], st.v_[slot]), st.n_ctx, st.pos + t,
                                                  (int)H, (int)Hkv, (int)D, rope_, eps, b.ao + t * HD,
                                                  qo ? qs + t * HD : nullptr, qo ? ds + t * (HD / 32) * 2 : nullptr,
                                                  b.scratch, s, b.q8cnt));
                }
            } else {
                PQ_OP(attention(b.qg, b.k, b.v, L.attn_q_norm.f32(), L.attn_k_norm.f32(),
                                kv_cache(cfg_, st, st.k_[slot], st.v_[slot]), st.n_ctx, st.pos, n, (int)H, (int)Hkv, (int)D,
                                rope_, eps, b.ao, b.scratch, s));
                quantize_for(b.ao, HD, n, {&L.attn_output});
            }
            matmuls(b.ao, HD, n, {{&L.attn_output, b.t}}, nullptr, nullptr, &post);
        }
        // the gate/up matmul also quantizes h for the down projection (into q8b: it reads q8)
        const bool qh = any_q8({&L.ffn_down});
        PQ_OP(matmul_swiglu_prepared(L.ffn_gate.type, L.ffn_gate.data, L.ffn_up.type, L.ffn_up.data, E, F, b.a, q8, n,
                                     b.h, b.scratch, s, qh ? b.q8b : nullptr, b.q8cnt));
        if (il + 1 < c.n_layer || defer_last_add) {
            const auto [wn, qn] = entry_norm(il + 1);  // the next layer's entry, or the final norm
            const NormTail next = entry_tail(wn, qn);
            matmuls(b.h, F, n, {{&L.ffn_down, b.t}}, b.q8b, nullptr, &next);
        } else {
            matmuls(b.h, F, n, {{&L.ffn_down, b.t}}, b.q8b);
        }
    }
    if (!defer_last_add) PQ_OP(add_f32(b.x, b.t, b.x, n * E, s));
}

// The decode body's LM head on the final norm's output and Q8_1, which the last down projection's epilogue
// wrote (run_layers_decode with defer_last_add; run_lm_head's arithmetic).
void Model::run_lm_head_decode() {
    Buffers& b = *buf_;
    matmuls(b.a, cfg_.n_embd, 1, {{&w_.output, b.logits}});
}

// Final norm of hidden rows [first, first + rows) of x into a, LM head into logits (rows <= kLogitRows).
void Model::run_lm_head(int64_t first, int64_t rows) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    const int64_t E = c.n_embd;
    PQ_OP(rms_norm_f32(b.x + first * E, w_.output_norm.f32(), b.a, (int)E, (int)rows, E, E, c.rms_eps, cur_));
    PQ_OP(matmul(w_.output.type, w_.output.data, E, c.n_vocab, b.a, rows, b.logits, b.scratch, cur_));
}

void Model::run_lm_head_normed(const float* a, int64_t rows) {
    PQ_OP(matmul(w_.output.type, w_.output.data, cfg_.n_embd, cfg_.n_vocab, a, rows, buf_->logits, buf_->scratch, cur_));
}

// ---- the MTP head ----------------------------------------------------------------------------------------

void Model::run_mtp_block(State& st, const int32_t* tok, const float* h_first, const float* h_rest, int64_t m,
                          int64_t pos0, bool full, float* out_h) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    cudaStream_t s = cur_;
    const Layer& L = w_.layers[c.n_layer];  // the first MTP block (the one llama.cpp and vLLM run)
    const int64_t E = c.n_embd, F = c.n_ff, H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim;
    const float eps = c.rms_eps;
    // eh = [enorm(embed(token)) | hnorm(h)] per row, then u = eh_proj(eh): the block's residual stream
    PQ_OP(get_rows(w_.token_embd.type, w_.token_embd.data, E, w_.token_embd.ne1, tok, m, b.a, s));
    PQ_OP(rms_norm_f32(b.a, L.nextn_enorm.f32(), b.eh, (int)E, (int)m, E, 2 * E, eps, s));
    PQ_OP(rms_norm_f32(h_first, L.nextn_hnorm.f32(), b.eh + E, (int)E, 1, E, 2 * E, eps, s));
    if (m > 1) PQ_OP(rms_norm_f32(h_rest, L.nextn_hnorm.f32(), b.eh + 3 * E, (int)E, (int)(m - 1), E, 2 * E, eps, s));
    PQ_OP(matmul(L.nextn_eh_proj.type, L.nextn_eh_proj.data, 2 * E, E, b.eh, m, b.mx, b.scratch, s));
    PQ_OP(rms_norm_f32(b.mx, L.attn_norm.f32(), b.a, (int)E, (int)m, E, E, eps, s));
    PQ_OP(matmul(L.attn_k.type, L.attn_k.data, E, Hkv * D, b.a, m, b.k, b.scratch, s));
    PQ_OP(matmul(L.attn_v.type, L.attn_v.data, E, Hkv * D, b.a, m, b.v, b.scratch, s));
    if (!full) {  // catching the cache up: only the K/V rows (k normed and roped, as the full block stores them)
        PQ_OP(attention_prepare(nullptr, b.k, b.v, nullptr, L.attn_k_norm.f32(), kv_cache(cfg_, st, st.mtp_k_[0], st.mtp_v_[0]),
                                pos0, m, (int)H, (int)Hkv, (int)D, rope_, eps, s));
        return;
    }
    PQ_OP(matmul(L.attn_q.type, L.attn_q.data, E, 2 * H * D, b.a, m, b.qg, b.scratch, s));
    PQ_OP(attention(b.qg, b.k, b.v, L.attn_q_norm.f32(), L.attn_k_norm.f32(), kv_cache(cfg_, st, st.mtp_k_[0], st.mtp_v_[0]),
                    st.n_ctx, pos0, m, (int)H, (int)Hkv, (int)D, rope_, eps, b.ao, b.scratch, s));
    PQ_OP(matmul(L.attn_output.type, L.attn_output.data, H * D, E, b.ao, m, b.t, b.scratch, s));
    PQ_OP(add_f32(b.mx, b.t, b.mx, m * E, s));
    PQ_OP(rms_norm_f32(b.mx, L.post_attention_norm.f32(), b.a, (int)E, (int)m, E, E, eps, s));
    PQ_OP(matmul_swiglu(L.ffn_gate.type, L.ffn_gate.data, L.ffn_up.type, L.ffn_up.data, E, F, b.a, m, b.h, b.scratch, s));
    PQ_OP(matmul(L.ffn_down.type, L.ffn_down.data, F, E, b.h, m, b.t, b.scratch, s));
    PQ_OP(add_f32(b.mx, b.t, b.mx, m * E, s));
    PQ_OP(rms_norm_f32(b.mx, L.nextn_shared_head_norm.f32(), out_h, (int)E, (int)m, E, E, eps, s));
}

void Model::mtp_after_chunk(State& st, int64_t pos0, int64_t m, float* hidden, float* logits_out) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    const int64_t E = c.n_embd;
    if (!hidden) hidden = b.hid;
    // The final norm of every row (the LM head's input, recomputed for the rows it needs).
    PQ_OP(rms_norm_f32(b.x, w_.output_norm.f32(), hidden, (int)E, (int)m, E, E, c.rms_eps, cur_));
    // Row p pairs the hidden state of token p with token p + 1: this chunk completes row pos0 - 1 (with
    // mtp_h, kept from the last chunk) and rows pos0..pos0+m-2; its last hidden state waits for the next token.
    const int64_t skip = pos0 == 0 ? 1 : 0;  // nothing precedes the first token of the sequence
    const int64_t rows = m - skip;
    if (rows > 0) {
        const float* h_first = skip ? hidden : st.mtp_h_;
        const float* h_rest = skip ? hidden + E : hidden;
        if (!logits_out) {
            run_mtp_block(st, b.tokens + skip, h_first, h_rest, rows, pos0 - 1 + skip, false, nullptr);
        } else {
            // eval_mtp: the whole block over the rows; its output (shared_head_norm) in b.a, then the LM head
            run_mtp_block(st, b.tokens + skip, h_first, h_rest, rows, pos0 - 1 + skip, true, b.a);
            const int64_t V = c.n_vocab;
            for (int64_t r0 = 0; r0 < rows; r0 += kLogitRows) {
                const int64_t r = std::min(kLogitRows, rows - r0);
                run_lm_head_normed(b.a + r0 * E, r);
                check(cudaMemcpyAsync(logits_out + r0 * V, b.logits, sizeof(float) * r * V, cudaMemcpyDeviceToHost,
                                      stream_),
                      "MTP logits");
                check(cudaStreamSynchronize(stream_), "eval_mtp");  // the logits buffer is reused
            }
        }
    }
    check(cudaMemcpyAsync(st.mtp_h_, hidden + (m - 1) * E, sizeof(float) * E, cudaMemcpyDeviceToDevice, cur_), "mtp_h");
}

void Model::mtp_draft(State& st, int32_t token, float* logits, int32_t* argmax) {
    check_state(st);
    if (!st.has_mtp()) throw std::invalid_argument("this state does not draft with the MTP head (make it with mtp=True)");
    if (st.pos == 0) throw std::invalid_argument("MTP drafting needs at least one token fed");
    if (token < 0 || token >= cfg_.n_vocab)
        throw std::out_of_range("token id " + std::to_string(token) + " outside the vocabulary");
    const bool first = st.draft_pos_ < 0;
    const int64_t p = first ? st.pos - 1 : st.draft_pos_;
    if (p >= st.n_ctx) throw std::length_error("MTP draft past the end of the context");
    ensure_workspace(st.n_ctx);
    Buffers& b = *buf_;
    device_token_valid_ = false;  // the token buffer is reused here
    check(cudaMemcpyAsync(b.tokens, &token, sizeof(int32_t), cudaMemcpyHostToDevice, stream_), "token");
    // The block's output hidden state goes to b.a (the LM head's input), then becomes the chain's input.
    run_mtp_block(st, b.tokens, first ? st.mtp_h_ : st.draft_h_, nullptr, 1, p, true, b.a);
    run_lm_head_normed(b.a, 1);
    check(cudaMemcpyAsync(st.draft_h_, b.a, sizeof(float) * cfg_.n_embd, cudaMemcpyDeviceToDevice, stream_), "draft_h");
    st.draft_pos_ = p + 1;  // the block ran (its K/V row is written) whatever the host does with the logits
    if (!logits) {
        argmax_rows(1, argmax, "mtp_draft");
        return;
    }
    check(cudaMemcpyAsync(logits, b.logits, sizeof(float) * cfg_.n_vocab, cudaMemcpyDeviceToHost, stream_), "logits");
    check(cudaStreamSynchronize(stream_), "mtp_draft");
}

void Model::eval_mtp(const int32_t* tokens, int64_t n, float* out) {
    if (!has_mtp()) throw std::invalid_argument("this model has no MTP head (no nextn block in the file)");
    if (n < 2) throw std::invalid_argument("eval_mtp needs at least two tokens");
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
            throw std::out_of_range("token id " + std::to_string(tokens[i]) + " outside the vocabulary");
    auto st = new_state(n, KvTypes{}, true);
    // Chunk by chunk: the MTP rows each chunk completes, through the whole block, straight into out
    // (chunk at pos0 completes rows pos0 - 1 .. pos0 + m - 2; the first chunk starts at row 0).
    ensure_workspace(n);
    Buffers& b = *buf_;
    device_token_valid_ = false;
    const int64_t V = cfg_.n_vocab;
    for (int64_t c0 = 0; c0 < n; c0 += opt_.n_batch) {
        const int64_t m = std::min<int64_t>(opt_.n_batch, n - c0);
        check(cudaMemcpyAsync(b.tokens, tokens + c0, sizeof(int32_t) * m, cudaMemcpyHostToDevice, stream_), "tokens");
        run_layers(*st, m);
        mtp_after_chunk(*st, c0, m, nullptr, out + (c0 == 0 ? 0 : (c0 - 1) * V));
        st->pos += m;
    }
    check(cudaStreamSynchronize(stream_), "eval_mtp");
}

// ---- speculative verification: rollback ----------------------------------------------------------------

void Model::rollback(State& st, int64_t n_keep) {
    check_state(st);
    VerifyLog* lg = vlog_.get();
    if (!lg || lg->pos0 < 0 || lg->state_id != st.id_ || lg->step != st.step_ || st.pos != lg->pos0 + lg->n)
        throw std::invalid_argument("rollback needs a verify forward as the state's last step");
    if (n_keep < 1 || n_keep > lg->n)
        throw std::invalid_argument("rollback keeps 1.." + std::to_string(lg->n) + " tokens, got " +
                                    std::to_string(n_keep));
    const ModelConfig& c = cfg_;
    const VerifyLogLayout& vl = lg->layout;
    const int64_t E = c.n_embd, C = c.conv_channels(), nv = c.ssm_v_heads;
    cudaStream_t s = stream_;
    if (n_keep < lg->n) {
        ensure_workspace(st.n_ctx);
        Buffers& b = *buf_;
        // Back to the recurrent state before the batch (conv windows, SSM states, mtp_h), then the kept
        // tokens again: the delta rule through the decode kernel from the logged conv outputs and raw
        // alpha/beta (the arithmetic of the verification, and of feeding them one at a time; the
        // outputs are not needed), the conv windows through the conv kernel from the logged inputs.
        check(cudaMemcpyAsync(st.recurrent_, lg->at(vl.rec0), lg->rec_bytes, cudaMemcpyDeviceToDevice, s), "rollback");
        int li = 0;
        for (int il = 0; il < c.n_layer; ++il) {
            if (!c.recurrent[il]) continue;
            const Layer& L = w_.layers[il];
            const int slot = slot_[il];
            const float* y = lg->f(vl.y[li]);
            const float* al = lg->f(vl.alpha[li]);
            const float* be = lg->f(vl.beta[li]);
            for (int64_t t = 0; t < n_keep; ++t)
                PQ_OP(gdn(y + t * C, al + t * nv, be + t * nv, L.ssm_a.f32(), L.ssm_dt.f32(), st.ssm_[slot], nullptr,
                          L.ssm_norm.f32(), nullptr, c.ssm_k_heads, (int)nv, c.ssm_k_dim, c.ssm_v_dim, 1, c.rms_eps,
                          b.scratch, s));
            PQ_OP(conv1d_silu(lg->f(vl.x[li]), L.ssm_conv1d.f32(), st.conv_[slot], b.y, C, c.ssm_conv, n_keep, s));
            ++li;
        }
        st.pos = lg->pos0 + n_keep;
    }
    if (st.has_mtp())
        check(cudaMemcpyAsync(st.mtp_h_, lg->f(vl.hidden) + (n_keep - 1) * E, sizeof(float) * E,
                              cudaMemcpyDeviceToDevice, s),
              "rollback");
    check(cudaStreamSynchronize(s), "rollback");
    st.draft_pos_ = -1;
    ++st.step_;
    lg->pos0 = -1;
    device_token_valid_ = false;
}

void Model::run_decode_body(State& st) {
#if defined(PQ_CUDA_EMU)
    const uint64_t nodes0 = pq_emu::nodes_enqueued();
#endif
    if (decode_path(1)) {
        run_layers_decode(st, 1, nullptr, true);
        run_lm_head_decode();
    } else {
        run_layers(st, 1);
        run_lm_head(0, 1);
    }
    // a recorded body: its last node moves the slot's position to the next token (after every reader)
    if (graph_pos_) PQ_OP(decode_position_advance(graph_pos_, cur_));
#if defined(PQ_CUDA_EMU)
    gstats_.body_nodes = (int64_t)(pq_emu::nodes_enqueued() - nodes0);  // 0 while capturing (record_slot counts)
#endif
}

namespace {
bool g_stale_graph_position = false;  // test hook: the planted bug (set_decode_graph_stale_position)
}  // namespace

void set_decode_graph_stale_position(bool on) { g_stale_graph_position = on; }

// The single-token attention of the decode body: in a recorded body at the slot's device-resident
// position (the bucket's grid), else at st.pos by value.
// fused_combine: the decode kernel combines its splits (the decode path); false: attn_combine_kernel (the
// op-by-op path keeps its launches).
cudaError_t Model::attention_one(State& st, int slot, const Layer& L, int8_t* out_qs, float* out_ds,
                                 bool fused_combine) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    const KvCache kv = kv_cache(cfg_, st, st.k_[slot], st.v_[slot]);
    const int H = (int)c.n_head, Hkv = (int)c.n_head_kv, D = (int)c.head_dim;
    if (graph_pos_)
        return attention_decode_graph(b.qg, b.k, b.v, L.attn_q_norm.f32(), L.attn_k_norm.f32(), kv, st.n_ctx, st.pos,
                                      g_stale_graph_position ? nullptr : graph_pos_, H, Hkv, D, rope_, c.rms_eps, b.ao,
                                      out_qs, out_ds, b.scratch, cur_, fused_combine ? b.q8cnt : nullptr);
    // out_qs may be null (a float attn_output reads ao itself): the same launches either way
    return attention_decode_q8(b.qg, b.k, b.v, L.attn_q_norm.f32(), L.attn_k_norm.f32(), kv, st.n_ctx, st.pos, H, Hkv,
                               D, rope_, c.rms_eps, b.ao, out_qs, out_ds, b.scratch, cur_,
                               fused_combine ? b.q8cnt : nullptr);
}

Model::GraphKey Model::graph_key(const State& st) const {
    GraphKey k;
    k.state_id = st.id_;
    k.generation = ws_generation_;
    k.bucket = decode_bucket(st.pos + 1, st.n_ctx);
    k.fused = decode_path(1);
    k.stale = g_stale_graph_position;
    return k;
}

// Records the one-token body of st (for its position's bucket) into graph slot `i` (capture on the side
// stream: recording does not execute anything, so it may overlap with the main stream's work), patching
// the slot's executable graph in place when the topology allows (cudaGraphExecUpdate), else
// instantiating anew.
void Model::record_slot(int i, State& st, const GraphKey& key) {
    GraphCache& gc = *graph_;
    if (!gc.pos_arena) {
        check(cudaMalloc(&gc.pos_arena, sizeof(int32_t) * GraphCache::kGraphSlots), "cudaMalloc (graph positions)");
        for (int j = 0; j < GraphCache::kGraphSlots; ++j) gc.slot[j].pos = gc.pos_arena + j;
    }
    GraphCache::Slot& sl = gc.slot[i];
    cudaGraph_t g = nullptr;
    cur_ = capture_stream_;
    graph_pos_ = sl.pos;
    check(cudaStreamBeginCapture(cur_, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
    try {
        run_decode_body(st);
    } catch (...) {
        cudaStreamEndCapture(cur_, &g);
        if (g) cudaGraphDestroy(g);
        cudaGetLastError();
        cur_ = stream_;
        graph_pos_ = nullptr;
        throw;
    }
    cur_ = stream_;
    graph_pos_ = nullptr;
    check(cudaStreamEndCapture(capture_stream_, &g), "cudaStreamEndCapture");
    ++gstats_.captures;
    size_t n_nodes = 0;
    if (cudaGraphGetNodes(g, nullptr, &n_nodes) == cudaSuccess) gstats_.body_nodes = (int64_t)n_nodes;
    else cudaGetLastError();
    bool updated = false;
    if (sl.exec) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(sl.exec, g, &info) == cudaSuccess) {
            updated = true;
            ++gstats_.updates;
        } else {
            cudaGetLastError();
            cudaGraphExecDestroy(sl.exec);
            sl.exec = nullptr;
        }
    }
    if (!updated) {
        const cudaError_t e = cudaGraphInstantiate(&sl.exec, g, 0);
        if (e != cudaSuccess) {
            cudaGraphDestroy(g);
            sl.exec = nullptr;
            sl.key = GraphKey{};
            fail_cuda(e, "cudaGraphInstantiate");
        }
        ++gstats_.instantiations;
    }
    cudaGraphDestroy(g);
    sl.key = key;
}

// Runs the one-token body at st.pos (token id already in buf_->tokens[0]) -- replayed from a graph when
// graphs are on. Does not advance st.pos.
void Model::launch_decode_body(State& st) {
    GraphCache& gc = *graph_;
    if (!graphs_enabled() || !gc.warm) {
        // Graphs off, or the very first step: run directly (this also loads every kernel module before
        // anything is captured).
        run_decode_body(st);
        gc.warm = true;
        ++gstats_.direct;
        return;
    }
    const GraphKey key = graph_key(st);
    int use = gc.find(key);
    if (use < 0) {
        use = gc.victim();
        record_slot(use, st, key);
    }
    GraphCache::Slot& sl = gc.slot[use];
    const bool pos_known = sl.pos_value == st.pos;
    sl.pos_value = -1;  // unknown until the launch below is queued (a throw on the way leaves it so)
    if (!pos_known) {
        // the slot's position is not this state's (a prefill, verification, rollback, restore or another
        // state came between): set it, by value at this call
        PQ_OP(decode_position_set(sl.pos, st.pos, stream_));
        ++gstats_.pos_sets;
    }
    check(cudaGraphLaunch(sl.exec, stream_), "cudaGraphLaunch");
    sl.pos_value = st.pos + 1;  // the body's last node advanced it
    sl.used = ++gc.tick;
    gc.last = use;
    ++gstats_.launches;
}

// After a one-token step was enqueued and st.pos advanced: when the next step needs a graph that no slot
// holds (its position crossed into a new bucket), record it now while the GPU works, so that step only
// launches.
void Model::prepare_next(State& st) {
    GraphCache& gc = *graph_;
    if (!graphs_enabled() || !gc.warm || st.pos >= st.n_ctx) return;
    const GraphKey key = graph_key(st);
    if (gc.find(key) >= 0) return;
    try {
        record_slot(gc.victim(), st, key);
    } catch (...) {
        cudaStreamSynchronize(stream_);
        throw;
    }
}

void Model::begin_forward(State& st, const int32_t* tokens, int64_t n, bool verify) {
    check_state(st);
    if (n <= 0) throw std::invalid_argument("no tokens to process");
    if (st.pos + n > st.n_ctx)
        throw std::length_error("context overflow: " + std::to_string(st.pos) + " + " + std::to_string(n) +
                                " tokens exceed n_ctx " + std::to_string(st.n_ctx));
    if (verify && n > kMaxVerifyTokens)
        throw std::invalid_argument("a verification feeds at most " + std::to_string(kMaxVerifyTokens) + " tokens");
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
            throw std::out_of_range("token id " + std::to_string(tokens[i]) + " outside the vocabulary");
    ensure_workspace(st.n_ctx);
    device_token_valid_ = false;
    drop_verify_log(st);
    st.draft_pos_ = -1;
    ++st.step_;
}

void Model::verify_argmax(State& st, const int32_t* tokens, int64_t n, int32_t* argmax) {
    begin_forward(st, tokens, n, true);
    forward_verify(st, tokens, n, nullptr, true, argmax);
}

void Model::forward(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int64_t n_batch,
                    bool verify) {
    begin_forward(st, tokens, n, verify);
    if (verify) {
        forward_verify(st, tokens, n, out, logits_all, nullptr);
        return;
    }
    Buffers& b = *buf_;
    const int64_t V = cfg_.n_vocab;
    n_batch = std::max<int64_t>(1, std::min(n_batch, opt_.n_batch));
    bool one_token_step = false;
    for (int64_t c0 = 0; c0 < n; c0 += n_batch) {
        const int64_t m = std::min(n_batch, n - c0);
        const bool last = c0 + m == n;
        one_token_step = m == 1 && n == 1;
        // The ids come straight from the caller's (pageable) array: the runtime stages a pageable source
        // before the call returns. Not through the pinned host_io word: with n_batch = 1 the next chunk
        // would overwrite it while this chunk's copy still waits in the stream (issue 10, bug 1).
        check(cudaMemcpyAsync(b.tokens, tokens + c0, sizeof(int32_t) * m, cudaMemcpyHostToDevice, stream_), "tokens");
        if (m == 1) {
            // One token: the decode body (a graph replay when graphs are on), LM head included.
            launch_decode_body(st);
        } else {
            run_layers(st, m);
            if (out && !logits_all && last) run_lm_head(m - 1, 1);
        }
        if (st.has_mtp()) mtp_after_chunk(st, st.pos, m, nullptr, nullptr);  // the LM head's rows stay in x
        st.pos += m;
        if (!out) {
            // pageable token copies must not outlive the caller's array: wait at the end (below)
            continue;
        }
        if (logits_all) {
            for (int64_t r0 = 0; r0 < m; r0 += kLogitRows) {
                const int64_t rows = std::min(kLogitRows, m - r0);
                if (m > 1) run_lm_head(r0, rows);  // m == 1: the decode body computed it
                check(cudaMemcpyAsync(out + (c0 + r0) * V, b.logits, sizeof(float) * rows * V, cudaMemcpyDeviceToHost,
                                      stream_),
                      "logits");
                check(cudaStreamSynchronize(stream_), "forward");  // the logits buffer is reused
            }
        } else if (last) {
            check(cudaMemcpyAsync(out, b.logits, sizeof(float) * V, cudaMemcpyDeviceToHost, stream_), "logits");
        }
    }
    if (one_token_step) prepare_next(st);
    check(cudaStreamSynchronize(stream_), "forward");
}

void Model::argmax_rows(int64_t rows, int32_t* ids, const char* what) {
    Buffers& b = *buf_;
    // into the token buffer (a verification's and a draft's inputs are consumed by now)
    PQ_OP(argmax_f32(b.logits, cfg_.n_vocab, (int)rows, cfg_.n_vocab, b.tokens, b.sample_ws, stream_));
    check(cudaMemcpyAsync(ids, b.tokens, sizeof(int32_t) * rows, cudaMemcpyDeviceToHost, stream_), what);
    check(cudaStreamSynchronize(stream_), what);
    for (int64_t r = 0; r < rows; ++r)
        if (ids[r] < 0 || ids[r] >= cfg_.n_vocab)
            throw std::runtime_error(std::string(what) + ": every logit of a row is NaN (a numerical blow-up in the "
                                     "forward pass); no token was chosen");
}

// A verification: one batch, every DeltaNet and attention layer token by token through the decode kernels
// (run_layers with the log), the matmuls through the multi-token matvec (each weight byte read once for
// all the tokens; per token the arithmetic of a one-token step), the final-norm rows kept in the log.
void Model::forward_verify(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all,
                           int32_t* argmax) {
    Buffers& b = *buf_;
    const int64_t E = cfg_.n_embd, V = cfg_.n_vocab, pos0 = st.pos;
    ensure_verify_log();
    VerifyLog& lg = *vlog_;
    lg.pos0 = -1;
    lg.rec_bytes = st.recurrent_bytes_;
    check(cudaMemcpyAsync(lg.at(lg.layout.rec0), st.recurrent_, st.recurrent_bytes_, cudaMemcpyDeviceToDevice, stream_),
          "verify");
    check(cudaMemcpyAsync(b.tokens, tokens, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_), "tokens");
    run_layers(st, n, &lg);
    float* hidden = lg.f(lg.layout.hidden);
    if (st.has_mtp()) mtp_after_chunk(st, pos0, n, hidden, nullptr);
    else PQ_OP(rms_norm_f32(b.x, w_.output_norm.f32(), hidden, (int)E, (int)n, E, E, cfg_.rms_eps, stream_));
    st.pos += n;
    lg.state_id = st.id_;
    lg.step = st.step_;
    lg.pos0 = pos0;
    lg.n = n;
    if (argmax) {
        for (int64_t r0 = 0; r0 < n; r0 += kLogitRows) {
            const int64_t rows = std::min(kLogitRows, n - r0);
            run_lm_head_normed(hidden + r0 * E, rows);
            argmax_rows(rows, argmax + r0, "verify");
        }
    } else if (out) {
        const int64_t first = logits_all ? 0 : n - 1;
        for (int64_t r0 = first; r0 < n; r0 += kLogitRows) {
            const int64_t rows = std::min(kLogitRows, n - r0);
            run_lm_head_normed(hidden + r0 * E, rows);
            check(cudaMemcpyAsync(out + (r0 - first) * V, b.logits, sizeof(float) * rows * V, cudaMemcpyDeviceToHost,
                                  stream_),
                  "logits");
            check(cudaStreamSynchronize(stream_), "verify");  // the logits buffer is reused
        }
    }
    check(cudaStreamSynchronize(stream_), "verify");
}

int32_t Model::decode(State& st, int32_t token, const SampleParams& p) {
    check_state(st);
    if (st.pos + 1 > st.n_ctx)
        throw std::length_error("context overflow: " + std::to_string(st.pos) + " + 1 tokens exceed n_ctx " +
                                std::to_string(st.n_ctx));
    if (token >= cfg_.n_vocab) throw std::out_of_range("token id " + std::to_string(token) + " outside the vocabulary");
    if (token < 0 && !(device_token_valid_ && device_token_state_ == st.id_))
        throw std::invalid_argument("token -1 (the previous choice) needs a preceding decode step on this state");
    ensure_workspace(st.n_ctx);
    Buffers& b = *buf_;
    if (token >= 0) {
        b.host_io[0] = token;
        check(cudaMemcpyAsync(b.tokens, b.host_io, sizeof(int32_t), cudaMemcpyHostToDevice, stream_), "token");
    }
    // else: tokens[0] already holds the previous step's choice (written there by the sampler below).
    drop_verify_log(st);
    st.draft_pos_ = -1;
    ++st.step_;
    launch_decode_body(st);
    if (st.has_mtp()) mtp_after_chunk(st, st.pos, 1, nullptr, nullptr);  // reads tokens[0] before the choice
    // The body has consumed tokens[0]: the choice goes there (next step's input, never leaving the
    // device) and 4 bytes of it to the host.
    if (p.temperature < 1e-5f) {
        PQ_OP(argmax_f32(b.logits, cfg_.n_vocab, 1, cfg_.n_vocab, b.tokens, b.sample_ws, stream_));
    } else {
        PQ_OP(sample_token(b.logits, cfg_.n_vocab, p, b.tokens, b.sample_ws, b.sample_ws_bytes, stream_));
    }
    check(cudaMemcpyAsync(b.host_io + 1, b.tokens, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_), "token");
    st.pos += 1;
    prepare_next(st);
    check(cudaStreamSynchronize(stream_), "decode");
    const int32_t chosen = b.host_io[1];
    if (chosen < 0 || chosen >= cfg_.n_vocab) {
        // argmax / the sampler found no finite logit (they mark that with -1): a numerical blow-up. The
        // marker stays out of the next step (decode(-1) is refused until a token is fed) and the caller
        // gets an error instead of a token.
        device_token_valid_ = false;
        throw std::runtime_error("decode at position " + std::to_string(st.pos - 1) +
                                 ": every logit is NaN (a numerical blow-up in the forward pass); no token was "
                                 "chosen");
    }
    device_token_valid_ = true;
    device_token_state_ = st.id_;
    return chosen;
}

}  // namespace pq::cuda
