// model.cu: the qwen35 forward pass on one CUDA device (see model.h).
//
// Orchestration only: every kernel is launched through the families' host launchers (ops.h,
// ops_matvec.h, ops_gdn.h, ops_attention.h, sampling in sampling.cu), so this file compiles unchanged
// with nvcc and with g++ -DPQ_CUDA_EMU. All work goes to the model's own non-blocking stream; the host
// waits only where a result crosses back (logits, a token id) or a call must be synchronous (state
// reset, restore).
//
// Decode steps (one token) are captured as a CUDA graph: the body (embedding .. LM head) is recorded by
// stream capture and replayed with cudaGraphLaunch. Only the position changes between steps (the
// attention launcher takes pos0 as a value), so each step re-records the body (host work only) and
// patches the instantiated graph in place with cudaGraphExecUpdate -- no re-instantiation. That
// re-recording for position p+1 is done right after step p is launched, while the GPU runs it, and two
// executable graphs alternate so the one being patched is never the one in flight. The emulator has no
// graphs: there (and with use_graphs = false) the same launches run directly.
#include "../compat.cuh"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../check.h"
#include "../ops.h"
#include "../ops_attention.h"
#include "../ops_gdn.h"
#include "../ops_matvec.h"
#include "model.h"

#if defined(PQ_CUDA_EMU)
#define PQ_MODEL_GRAPHS 0
#else
#define PQ_MODEL_GRAPHS 1
#endif

namespace pq::cuda {


namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t x, size_t a = kAlign) { return (x + a - 1) / a * a; }

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Matmul / embedding weight types (the matvec family's launchers take any GGUF weight type).
bool weight_type_ok(int type) {
    switch (type) {
        case T_F32: case T_F16: case T_BF16: case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0:
        case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_NL: case T_IQ4_XS:
            return true;
        default:
            return false;
    }
}

size_t tensor_bytes(int type, int64_t ne0, int64_t ne1) {
    const int bs = type_block_size(type);
    if (bs <= 0) return 0;
    return (size_t)(ne0 / bs) * (size_t)type_block_bytes(type) * (size_t)ne1;
}

// A bump allocator over one device allocation (offsets first, then one cudaMalloc).
struct Carver {
    size_t size = 0;
    size_t take(size_t bytes) {
        const size_t off = size;
        size = align_up(size + bytes);
        return off;
    }
};

}  // namespace

// ---- weights ---------------------------------------------------------------------------------------

struct Model::Layer {
    DevTensor attn_norm, post_attention_norm, ffn_gate, ffn_up, ffn_down;
    DevTensor attn_qkv, attn_gate, ssm_conv1d, ssm_dt, ssm_a, ssm_beta, ssm_alpha, ssm_norm, ssm_out;
    DevTensor attn_q, attn_k, attn_v, attn_q_norm, attn_k_norm, attn_output;
};

// Activation buffers + op scratch: one allocation, carved per the plan.
struct Model::Buffers {
    void* arena = nullptr;
    int32_t* tokens = nullptr;  // [n_batch] token ids of the current chunk (decode: [0] is the input)
    int32_t* next = nullptr;    // [1] token chosen by the last decode step
    float *x = nullptr, *a = nullptr, *t = nullptr;  // [n_batch][E]: residual, normed, layer output
    // DeltaNet
    float *qkv = nullptr, *z = nullptr, *beta = nullptr, *alpha = nullptr, *y = nullptr, *o = nullptr;
    // attention (aliases the DeltaNet buffers: a layer is one or the other)
    float *qg = nullptr, *k = nullptr, *v = nullptr, *ao = nullptr;
    float* h = nullptr;  // [n_batch][F] FFN hidden (aliases the mixer buffers: the FFN runs after them)
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
#if PQ_MODEL_GRAPHS
    struct Slot {
        cudaGraphExec_t exec = nullptr;
        uint64_t state_id = 0, generation = 0;
        int64_t pos = -1;
    };
    Slot slot[2];
    int last = 1;  // slot launched most recently
    ~GraphCache() {
        for (auto& s : slot)
            if (s.exec) cudaGraphExecDestroy(s.exec);
    }
#endif
    bool warm = false;  // a decode body already ran uncaptured (every kernel module is loaded: lazy loading)
};

namespace {

// The activation layout for n_batch tokens; the same arithmetic as memory_plan.py's activation_bytes().
struct ActLayout {
    size_t tokens, next, x, a, t, qkv, z, beta, alpha, y, o, qg, k, v, ao, h, logits, total;
};

ActLayout act_layout(const ModelConfig& c, int64_t nb) {
    ActLayout L{};
    Carver cv;
    const int64_t E = c.n_embd, C = c.conv_channels(), Dv = (int64_t)c.ssm_v_heads * c.ssm_v_dim;
    const int64_t nv = c.ssm_v_heads, HD = (int64_t)c.n_head * c.head_dim, KV = c.kv_row_values();
    L.tokens = cv.take(4 * nb);
    L.next = cv.take(4);
    L.x = cv.take(4 * nb * E);
    L.a = cv.take(4 * nb * E);
    L.t = cv.take(4 * nb * E);
    // The mixer/FFN region: DeltaNet, attention and FFN buffers overlap.
    const size_t region = cv.size;
    Carver g;  // DeltaNet
    L.qkv = region + g.take(4 * nb * C);
    L.z = region + g.take(4 * nb * Dv);
    L.beta = region + g.take(4 * nb * nv);
    L.alpha = region + g.take(4 * nb * nv);
    L.y = region + g.take(4 * nb * C);
    L.o = region + g.take(4 * nb * Dv);
    Carver at;  // attention
    L.qg = region + at.take(4 * nb * 2 * HD);
    L.k = region + at.take(4 * nb * KV);
    L.v = region + at.take(4 * nb * KV);
    L.ao = region + at.take(4 * nb * HD);
    Carver f;  // FFN
    L.h = region + f.take(4 * nb * c.n_ff);
    size_t mix = 0;
    if (c.n_recurrent_layers() > 0) mix = std::max(mix, g.size);
    if (c.n_attn_layers() > 0) mix = std::max(mix, at.size);
    mix = std::max(mix, f.size);
    cv.size = region + mix;
    L.logits = cv.take(4 * std::min(nb, kLogitRows) * c.n_vocab);
    L.total = cv.size;
    return L;
}

}  // namespace

WorkspacePlan Model::plan_workspace(const ModelConfig& c, const std::vector<DevTensor>& weights, int64_t nb,
                                    int64_t n_ctx) {
    WorkspacePlan p;
    const ActLayout L = act_layout(c, nb);
    p.logits = L.total - L.logits;
    p.activations = L.logits;
    // Scratch: the largest any op asks for at any batch size it will see (1..n_batch tokens, LM head
    // 1..kLogitRows). Distinct weight shapes are few, so this loops over each n directly.
    size_t s = 0;
    struct Shape {
        int type;
        int64_t K, N;
        bool lm;
    };
    std::vector<Shape> shapes;
    for (const DevTensor& w : weights) {
        if (w.ne1 <= 1) continue;  // vectors are not matmul operands
        const bool lm = w.ne1 == c.n_vocab && w.ne0 == c.n_embd;  // token_embd / output (LM head rows)
        bool seen = false;
        for (const Shape& sh : shapes) seen |= sh.type == w.type && sh.K == w.ne0 && sh.N == w.ne1 && sh.lm == lm;
        if (!seen) shapes.push_back({w.type, w.ne0, w.ne1, lm});
    }
    for (const Shape& sh : shapes) {
        const int64_t nmax = sh.lm ? std::min(nb, kLogitRows) : nb;
        for (int64_t n = 1; n <= nmax; ++n) s = std::max(s, matmul_scratch_bytes(sh.type, sh.K, sh.N, n));
    }
    for (int64_t n = 1; n <= nb; ++n) {
        if (c.n_recurrent_layers() > 0)
            s = std::max(s, gdn_scratch_bytes(c.ssm_k_heads, c.ssm_v_heads, c.ssm_k_dim, c.ssm_v_dim, n));
        if (c.n_attn_layers() > 0 && n_ctx > 0)
            s = std::max(s, attention_scratch_bytes(c.n_head, c.n_head_kv, c.head_dim, n, n_ctx));
    }
    p.scratch = align_up(s);
    p.misc = align_up(std::max(sample_workspace_bytes(c.n_vocab), argmax_workspace_bytes(c.n_vocab, 1)));
    return p;
}

// ---- construction / upload -----------------------------------------------------------------------------

Model::Model(ModelConfig cfg, const std::map<std::string, HostTensor>& tensors, ModelOptions opt,
             const ProgressFn& progress)
    : cfg_(std::move(cfg)), opt_(opt), graph_(std::make_unique<GraphCache>()) {
    const ModelConfig& c = cfg_;
    if (c.n_embd <= 0 || c.n_ff <= 0 || c.n_vocab <= 0 || c.n_layer <= 0) fail("model sizes must be positive");
    if ((int)c.recurrent.size() != c.n_layer) fail("recurrent[] length != n_layer");
    if (c.n_attn_layers() > 0) {
        if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
            fail("attention head counts invalid (n_head must be a multiple of n_head_kv)");
        if (c.head_dim <= 0 || c.n_rot < 0 || c.n_rot > c.head_dim || c.n_rot % 2 != 0) fail("rope/head dims invalid");
        if (c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256)
            fail("head_dim " + std::to_string(c.head_dim) + " is not supported by the CUDA attention kernels "
                 "(32, 64, 128 or 256)");
    }
    if (c.n_recurrent_layers() > 0) {
        if (c.ssm_k_heads <= 0 || c.ssm_v_heads <= 0 || c.ssm_v_heads % c.ssm_k_heads != 0)
            fail("DeltaNet head counts invalid (V heads must be a multiple of QK heads)");
        if (c.ssm_k_dim <= 0 || c.ssm_v_dim <= 0 || c.ssm_conv < 1 || c.ssm_conv > 16) fail("DeltaNet dims invalid");
        if (c.ssm_conv > 8 || c.ssm_k_dim > 256)
            fail("DeltaNet conv kernel > 8 or key head dim > 256 is not supported by the CUDA kernels");
    }
    if (!(c.rms_eps > 0.0f) || !(c.rope_base > 0.0f)) fail("rms eps / rope base must be positive");
    if (opt_.n_batch < 1) opt_.n_batch = 1;
    if (opt_.upload_chunk < (1u << 20)) opt_.upload_chunk = 1u << 20;
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cur_ = stream_;
#if PQ_MODEL_GRAPHS
    if (opt_.use_graphs) check(cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
#endif
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
    if (stream_) cudaStreamSynchronize(stream_);
    graph_.reset();
    buf_.reset();
    if (weight_arena_) cudaFree(weight_arena_);
    if (stream_) cudaStreamDestroy(stream_);
    if (capture_stream_) cudaStreamDestroy(capture_stream_);
}

void Model::upload(const std::map<std::string, HostTensor>& tensors, const ProgressFn& progress) {
    const ModelConfig& c = cfg_;
    // 1. Which tensors, with which shapes (the checks of pq::validate_model), and where in the arena.
    struct Item {
        DevTensor* dst;
        const HostTensor* src;
        size_t offset;
    };
    std::vector<Item> items;
    Carver cv;
    auto want = [&](DevTensor& dst, const std::string& name, int64_t ne0, int64_t ne1, bool f32_only,
                    bool optional = false) {
        auto it = tensors.find(name);
        if (it == tensors.end() || !it->second.data) {
            if (optional) return;
            fail("missing tensor " + name);
        }
        const HostTensor& t = it->second;
        if (f32_only ? t.type != T_F32 : !weight_type_ok(t.type))
            fail("tensor " + name + ": unsupported type " + std::to_string(t.type) + " for the CUDA backend");
        if (t.ne0 != ne0 || t.ne1 != ne1)
            fail("tensor " + name + ": shape [" + std::to_string(t.ne0) + ", " + std::to_string(t.ne1) + "], expected [" +
                 std::to_string(ne0) + ", " + std::to_string(ne1) + "]");
        const int bs = type_block_size(t.type);
        if (bs <= 0 || t.ne0 % bs != 0) fail("tensor " + name + ": row size not a multiple of its block size");
        dst.type = t.type;
        dst.ne0 = t.ne0;
        dst.ne1 = t.ne1;
        dst.bytes = tensor_bytes(t.type, t.ne0, t.ne1);
        items.push_back({&dst, &t, cv.take(dst.bytes)});
    };
    const int64_t E = c.n_embd, F = c.n_ff, V = c.n_vocab;
    want(token_embd_, "token_embd.weight", E, V, false);
    want(output_norm_, "output_norm.weight", E, 1, true);
    want(output_, "output.weight", E, V, false, /*optional=*/true);  // absent: tied to token_embd
    layers_.resize(c.n_layer);
    int na = 0, nr = 0;
    for (int il = 0; il < c.n_layer; ++il) {
        Layer& L = layers_[il];
        slot_.push_back(c.recurrent[il] ? nr++ : na++);
        const std::string p = "blk." + std::to_string(il) + ".";
        want(L.attn_norm, p + "attn_norm.weight", E, 1, true);
        want(L.post_attention_norm, p + "post_attention_norm.weight", E, 1, true);
        want(L.ffn_gate, p + "ffn_gate.weight", E, F, false);
        want(L.ffn_up, p + "ffn_up.weight", E, F, false);
        want(L.ffn_down, p + "ffn_down.weight", F, E, false);
        if (c.recurrent[il]) {
            const int64_t C = c.conv_channels(), Dv = (int64_t)c.ssm_v_heads * c.ssm_v_dim, nv = c.ssm_v_heads;
            want(L.attn_qkv, p + "attn_qkv.weight", E, C, false);
            want(L.attn_gate, p + "attn_gate.weight", E, Dv, false);
            want(L.ssm_conv1d, p + "ssm_conv1d.weight", c.ssm_conv, C, true);
            want(L.ssm_dt, p + "ssm_dt.bias", nv, 1, true);
            want(L.ssm_a, p + "ssm_a", nv, 1, true);
            want(L.ssm_beta, p + "ssm_beta.weight", E, nv, false);
            want(L.ssm_alpha, p + "ssm_alpha.weight", E, nv, false);
            want(L.ssm_norm, p + "ssm_norm.weight", c.ssm_v_dim, 1, true);
            want(L.ssm_out, p + "ssm_out.weight", Dv, E, false);
        } else {
            const int64_t D = c.head_dim, H = c.n_head, Hkv = c.n_head_kv;
            want(L.attn_q, p + "attn_q.weight", E, 2 * H * D, false);
            want(L.attn_k, p + "attn_k.weight", E, Hkv * D, false);
            want(L.attn_v, p + "attn_v.weight", E, Hkv * D, false);
            want(L.attn_q_norm, p + "attn_q_norm.weight", D, 1, true);
            want(L.attn_k_norm, p + "attn_k_norm.weight", D, 1, true);
            want(L.attn_output, p + "attn_output.weight", H * D, E, false);
        }
    }
    weight_bytes_ = cv.size;

    // 2. One device allocation; items sorted by offset (they are, by construction).
    check(cudaMalloc(&weight_arena_, std::max<size_t>(weight_bytes_, 1)), "cudaMalloc (weights)");
    for (Item& it : items) it.dst->data = static_cast<const uint8_t*>(weight_arena_) + it.offset;
    if (!output_.valid()) output_ = token_embd_;
    for (const Item& it : items) all_weights_.push_back(*it.dst);

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
                    std::memcpy(buf + (t0 - base), static_cast<const uint8_t*>(items[i].src->data) + (t0 - items[i].offset),
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
    if (buf_ && n_ctx <= ws_ctx_) return;
    const int64_t ctx = std::max(n_ctx, ws_ctx_);
    check(cudaStreamSynchronize(stream_), "ensure_workspace");
    const WorkspacePlan p = plan_workspace(cfg_, all_weights_, opt_.n_batch, ctx);
    const ActLayout L = act_layout(cfg_, opt_.n_batch);
    auto b = std::make_unique<Buffers>();
    const size_t total = L.total + p.scratch + p.misc;
    check(cudaMalloc(&b->arena, total), "cudaMalloc (activations and scratch)");
    char* base = static_cast<char*>(b->arena);
    b->tokens = reinterpret_cast<int32_t*>(base + L.tokens);
    b->next = reinterpret_cast<int32_t*>(base + L.next);
    auto f = [&](size_t off) { return reinterpret_cast<float*>(base + off); };
    b->x = f(L.x), b->a = f(L.a), b->t = f(L.t);
    b->qkv = f(L.qkv), b->z = f(L.z), b->beta = f(L.beta), b->alpha = f(L.alpha), b->y = f(L.y), b->o = f(L.o);
    b->qg = f(L.qg), b->k = f(L.k), b->v = f(L.v), b->ao = f(L.ao);
    b->h = f(L.h);
    b->logits = f(L.logits);
    b->scratch = p.scratch ? base + L.total : nullptr;
    b->scratch_bytes = p.scratch;
    b->sample_ws = base + L.total + p.scratch;
    b->sample_ws_bytes = p.misc;
    check(cudaMallocHost(reinterpret_cast<void**>(&b->host_io), 2 * sizeof(int32_t)), "cudaMallocHost");
    buf_ = std::move(b);
    plan_ = p;
    ws_ctx_ = ctx;
    ++ws_generation_;             // captured graphs point at the old buffers
    device_token_valid_ = false;  // and the previous decode choice was in the old token buffer
}

bool Model::graphs_enabled() const { return PQ_MODEL_GRAPHS && opt_.use_graphs; }

void Model::synchronize() { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

// ---- states and snapshots --------------------------------------------------------------------------

State::~State() {
    if (stream_) cudaStreamSynchronize(stream_);
    if (arena_) cudaFree(arena_);
}

void State::reset() {
    pos = 0;
    if (recurrent_bytes_) {
        check(cudaMemsetAsync(recurrent_, 0, recurrent_bytes_, stream_), "State.reset");
        check(cudaStreamSynchronize(stream_), "State.reset");
    }
}

std::unique_ptr<State> Model::new_state(int64_t n_ctx) {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
    ensure_workspace(n_ctx);
    const ModelConfig& c = cfg_;
    std::unique_ptr<State> st(new State());
    st->owner_ = this;
    st->stream_ = stream_;
    st->n_ctx = n_ctx;
    st->id_ = next_state_id_++;
    Carver cv;
    const size_t conv_b = 4 * (size_t)c.conv_state_floats(), ssm_b = 4 * (size_t)c.ssm_state_floats();
    // Recurrent states first and contiguous (one memset resets them, one copy snapshots them).
    std::vector<size_t> conv_off, ssm_off, k_off, v_off;
    for (int i = 0; i < c.n_recurrent_layers(); ++i) {
        conv_off.push_back(cv.size);
        cv.size += conv_b;
        ssm_off.push_back(cv.size);
        cv.size += ssm_b;
    }
    st->recurrent_bytes_ = cv.size;
    cv.size = align_up(cv.size);
    const size_t kv_b = 2 * (size_t)n_ctx * (size_t)c.kv_row_values();
    for (int i = 0; i < c.n_attn_layers(); ++i) {
        k_off.push_back(cv.take(kv_b));
        v_off.push_back(cv.take(kv_b));
    }
    st->bytes_ = std::max<size_t>(cv.size, 1);
    check(cudaMalloc(&st->arena_, st->bytes_), "cudaMalloc (sequence state)");
    char* base = static_cast<char*>(st->arena_);
    st->recurrent_ = reinterpret_cast<float*>(base);
    for (size_t o : conv_off) st->conv_.push_back(reinterpret_cast<float*>(base + o));
    for (size_t o : ssm_off) st->ssm_.push_back(reinterpret_cast<float*>(base + o));
    for (size_t o : k_off) st->k_.push_back(reinterpret_cast<uint16_t*>(base + o));
    for (size_t o : v_off) st->v_.push_back(reinterpret_cast<uint16_t*>(base + o));
    st->reset();
    return st;
}

void Model::check_state(const State& st) const {
    if (st.owner_ != this) throw std::invalid_argument("state belongs to a different model");
}

std::unique_ptr<Snapshot> Model::snapshot(const State& st, bool with_kv) {
    check_state(st);
    const ModelConfig& c = cfg_;
    std::unique_ptr<Snapshot> s(new Snapshot());
    s->owner_ = this;
    s->pos = st.pos;
    s->has_kv = with_kv;
    s->recurrent_bytes_ = st.recurrent_bytes_;
    s->kv_layer_bytes_ = with_kv ? (size_t)st.pos * 2 * (size_t)c.kv_row_values() : 0;
    const size_t rec = align_up(s->recurrent_bytes_);
    const size_t kvl = align_up(s->kv_layer_bytes_);
    s->bytes_ = rec + 2 * (size_t)c.n_attn_layers() * kvl;
    check(cudaMalloc(&s->arena_, std::max<size_t>(s->bytes_, 1)), "cudaMalloc (snapshot)");
    char* base = static_cast<char*>(s->arena_);
    if (s->recurrent_bytes_)
        check(cudaMemcpyAsync(base, st.recurrent_, s->recurrent_bytes_, cudaMemcpyDeviceToDevice, stream_), "snapshot");
    if (s->kv_layer_bytes_) {
        for (int i = 0; i < c.n_attn_layers(); ++i) {
            check(cudaMemcpyAsync(base + rec + (2 * i) * kvl, st.k_[i], s->kv_layer_bytes_, cudaMemcpyDeviceToDevice,
                                  stream_),
                  "snapshot");
            check(cudaMemcpyAsync(base + rec + (2 * i + 1) * kvl, st.v_[i], s->kv_layer_bytes_,
                                  cudaMemcpyDeviceToDevice, stream_),
                  "snapshot");
        }
    }
    check(cudaStreamSynchronize(stream_), "snapshot");
    return s;
}

void Model::restore(State& st, const Snapshot& s) {
    check_state(st);
    if (s.owner_ != this) throw std::invalid_argument("snapshot belongs to a different model");
    if (s.pos > st.n_ctx) throw std::invalid_argument("snapshot position beyond this state's context");
    if (s.recurrent_bytes_ != st.recurrent_bytes_) throw std::invalid_argument("snapshot belongs to a different model");
    const ModelConfig& c = cfg_;
    const char* base = static_cast<const char*>(s.arena_);
    const size_t rec = align_up(s.recurrent_bytes_), kvl = align_up(s.kv_layer_bytes_);
    if (s.recurrent_bytes_)
        check(cudaMemcpyAsync(st.recurrent_, base, s.recurrent_bytes_, cudaMemcpyDeviceToDevice, stream_), "restore");
    if (s.kv_layer_bytes_) {
        for (int i = 0; i < c.n_attn_layers(); ++i) {
            check(cudaMemcpyAsync(st.k_[i], base + rec + (2 * i) * kvl, s.kv_layer_bytes_, cudaMemcpyDeviceToDevice,
                                  stream_),
                  "restore");
            check(cudaMemcpyAsync(st.v_[i], base + rec + (2 * i + 1) * kvl, s.kv_layer_bytes_,
                                  cudaMemcpyDeviceToDevice, stream_),
                  "restore");
        }
    }
    check(cudaStreamSynchronize(stream_), "restore");
    st.pos = s.pos;
}

Snapshot::~Snapshot() {
    if (arena_) cudaFree(arena_);
}

// ---- forward ---------------------------------------------------------------------------------------

#define PQ_OP(call) check((call), #call)


void Model::run_layers(State& st, int64_t n) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    cudaStream_t s = cur_;
    const int64_t E = c.n_embd, F = c.n_ff;
    const float eps = c.rms_eps;
    PQ_OP(get_rows(token_embd_.type, token_embd_.data, E, b.tokens, n, b.x, s));
    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = layers_[il];
        const int slot = slot_[il];
        PQ_OP(rms_norm_f32(b.x, L.attn_norm.f32(), b.a, (int)E, (int)n, E, E, eps, s));
        if (c.recurrent[il]) {
            // Gated DeltaNet: in-projections, causal conv + SiLU, then l2norm / gating / delta rule /
            // gated RMSNorm in the gdn launcher, out-projection.
            const int64_t C = c.conv_channels(), nv = c.ssm_v_heads, Dv = nv * c.ssm_v_dim;
            PQ_OP(matmul(L.attn_qkv.type, L.attn_qkv.data, E, C, b.a, n, b.qkv, b.scratch, s));
            PQ_OP(matmul(L.attn_gate.type, L.attn_gate.data, E, Dv, b.a, n, b.z, b.scratch, s));
            PQ_OP(matmul(L.ssm_beta.type, L.ssm_beta.data, E, nv, b.a, n, b.beta, b.scratch, s));
            PQ_OP(matmul(L.ssm_alpha.type, L.ssm_alpha.data, E, nv, b.a, n, b.alpha, b.scratch, s));
            PQ_OP(conv1d_silu(b.qkv, L.ssm_conv1d.f32(), st.conv_[slot], b.y, C, c.ssm_conv, n, s));
            PQ_OP(gdn(b.y, b.alpha, b.beta, L.ssm_a.f32(), L.ssm_dt.f32(), st.ssm_[slot], b.z, L.ssm_norm.f32(), b.o,
                      c.ssm_k_heads, nv, c.ssm_k_dim, c.ssm_v_dim, n, eps, b.scratch, s));
            PQ_OP(matmul(L.ssm_out.type, L.ssm_out.data, Dv, E, b.o, n, b.t, b.scratch, s));
        } else {
            // Gated attention: projections, then q/k norm + RoPE + fp16 KV append + causal GQA + sigmoid
            // gate in the attention launcher, output projection.
            const int64_t H = c.n_head, Hkv = c.n_head_kv, D = c.head_dim;
            PQ_OP(matmul(L.attn_q.type, L.attn_q.data, E, 2 * H * D, b.a, n, b.qg, b.scratch, s));
            PQ_OP(matmul(L.attn_k.type, L.attn_k.data, E, Hkv * D, b.a, n, b.k, b.scratch, s));
            PQ_OP(matmul(L.attn_v.type, L.attn_v.data, E, Hkv * D, b.a, n, b.v, b.scratch, s));
            PQ_OP(attention(b.qg, b.k, b.v, L.attn_q_norm.f32(), L.attn_k_norm.f32(), st.k_[slot], st.v_[slot],
                            st.n_ctx, st.pos, n, (int)H, (int)Hkv, (int)D, c.n_rot, c.rope_base, eps, b.ao,
                            b.scratch, s));
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

// Final norm of hidden rows [first, first + rows) of x into a, LM head into logits (rows <= kLogitRows).
void Model::run_lm_head(int64_t first, int64_t rows) {
    const ModelConfig& c = cfg_;
    Buffers& b = *buf_;
    const int64_t E = c.n_embd;
    PQ_OP(rms_norm_f32(b.x + first * E, output_norm_.f32(), b.a, (int)E, (int)rows, E, E, c.rms_eps, cur_));
    PQ_OP(matmul(output_.type, output_.data, E, c.n_vocab, b.a, rows, b.logits, b.scratch, cur_));
}

void Model::run_decode_body(State& st) {
    run_layers(st, 1);
    run_lm_head(0, 1);
}

// Records the one-token body at st.pos into graph slot `i` (capture on the side stream: recording does
// not execute anything, so it may overlap with the main stream's work), patching the slot's executable
// graph in place when it has one (same topology: only kernel parameters such as the position differ).
void Model::record_slot(int i, State& st) {
#if PQ_MODEL_GRAPHS
    GraphCache::Slot& sl = graph_->slot[i];
    cudaGraph_t g = nullptr;
    cur_ = capture_stream_;
    check(cudaStreamBeginCapture(cur_, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
    try {
        run_decode_body(st);
    } catch (...) {
        cudaStreamEndCapture(cur_, &g);
        if (g) cudaGraphDestroy(g);
        cudaGetLastError();
        cur_ = stream_;
        throw;
    }
    cur_ = stream_;
    check(cudaStreamEndCapture(capture_stream_, &g), "cudaStreamEndCapture");
    ++gstats_.captures;
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
            sl.state_id = 0;
            fail_cuda(e, "cudaGraphInstantiate");
        }
        ++gstats_.instantiations;
    }
    cudaGraphDestroy(g);
    sl.state_id = st.id_;
    sl.pos = st.pos;
    sl.generation = ws_generation_;
#else
    (void)i;
    (void)st;
#endif
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
#if PQ_MODEL_GRAPHS
    int use = -1;
    for (int i = 0; i < 2; ++i) {
        const GraphCache::Slot& sl = gc.slot[i];
        if (sl.exec && sl.state_id == st.id_ && sl.pos == st.pos && sl.generation == ws_generation_) use = i;
    }
    if (use < 0) {
        use = 1 - gc.last;  // never patch the executable graph that may still be running
        record_slot(use, st);
    }
    check(cudaGraphLaunch(gc.slot[use].exec, stream_), "cudaGraphLaunch");
    gc.last = use;
    ++gstats_.launches;
#endif
}

// After a one-token step was enqueued and st.pos advanced: record the step at the new position into the
// idle slot while the GPU works, so the next step only launches.
void Model::prepare_next(State& st) {
#if PQ_MODEL_GRAPHS
    GraphCache& gc = *graph_;
    if (!graphs_enabled() || !gc.warm || st.pos >= st.n_ctx) return;
    const int idle = 1 - gc.last;
    const GraphCache::Slot& sl = gc.slot[idle];
    if (sl.exec && sl.state_id == st.id_ && sl.pos == st.pos && sl.generation == ws_generation_) return;
    try {
        record_slot(idle, st);
    } catch (...) {
        cudaStreamSynchronize(stream_);
        throw;
    }
#else
    (void)st;
#endif
}

void Model::forward(State& st, const int32_t* tokens, int64_t n, float* out, bool logits_all, int64_t n_batch) {
    check_state(st);
    if (n <= 0) throw std::invalid_argument("no tokens to process");
    if (st.pos + n > st.n_ctx)
        throw std::length_error("context overflow: " + std::to_string(st.pos) + " + " + std::to_string(n) +
                                " tokens exceed n_ctx " + std::to_string(st.n_ctx));
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
            throw std::out_of_range("token id " + std::to_string(tokens[i]) + " outside the vocabulary");
    ensure_workspace(st.n_ctx);
    Buffers& b = *buf_;
    device_token_valid_ = false;
    const int64_t V = cfg_.n_vocab;
    n_batch = std::max<int64_t>(1, std::min(n_batch, opt_.n_batch));
    bool one_token_step = false;
    for (int64_t c0 = 0; c0 < n; c0 += n_batch) {
        const int64_t m = std::min(n_batch, n - c0);
        const bool last = c0 + m == n;
        one_token_step = m == 1 && n == 1;
        if (m == 1) {
            // One token: the decode body (a graph replay when graphs are on), LM head included.
            b.host_io[0] = tokens[c0];
            check(cudaMemcpyAsync(b.tokens, b.host_io, sizeof(int32_t), cudaMemcpyHostToDevice, stream_), "tokens");
            launch_decode_body(st);
        } else {
            check(cudaMemcpyAsync(b.tokens, tokens + c0, sizeof(int32_t) * m, cudaMemcpyHostToDevice, stream_),
                  "tokens");
            run_layers(st, m);
            if (out && !logits_all && last) run_lm_head(m - 1, 1);
        }
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
    launch_decode_body(st);
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
    device_token_valid_ = true;
    device_token_state_ = st.id_;
    return b.host_io[1];
}

}  // namespace pq::cuda
