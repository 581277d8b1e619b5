// model_spec.h: every weight tensor and every per-sequence state buffer of a qwen35 model, written once.
//
// Who walks these tables: the CPU core (binding the mmapped weights, validation, state allocation),
// the CUDA backend (weight upload, device state), the GGUF loader (pyqwen/gguf_file.py, through
// _core.expected_tensors) and the memory planner (cuda/plan/device_plan.h, pyqwen info). Adding a tensor
// is one line in PQ_GLOBAL_TENSORS or PQ_LAYER_TENSORS: every one of them picks it up.
//
// Header-only and free of CUDA: the _cuda module and the emulated one do not link csrc/*.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "formats.h"

namespace pq {

// ---- dimensions ------------------------------------------------------------------------------------

// The sizes a tensor dimension takes, each a function of the config (dim_size).
#define PQ_DIMS(X)                                                                   \
    X(One, 1)                                                                        \
    X(Embd, c.n_embd)                                                                \
    X(Embd2, 2 * c.n_embd)                    /* MTP: [embedding | hidden] input */  \
    X(Ff, c.n_ff)                                                                    \
    X(Vocab, c.n_vocab)                                                              \
    X(ConvKernel, c.ssm_conv)                                                        \
    X(ConvChannels, c.conv_channels())        /* q, k and v of the DeltaNet */       \
    X(SsmVHeads, c.ssm_v_heads)                                                      \
    X(SsmVDim, c.ssm_v_dim)                                                          \
    X(SsmInner, (int64_t)c.ssm_v_heads * c.ssm_v_dim)                                \
    X(AttnQGate, 2 * (int64_t)c.n_head * c.head_dim) /* per head: [q | gate] rows */ \
    X(AttnKv, c.kv_row_values())                                                     \
    X(AttnOut, (int64_t)c.n_head * c.head_dim)                                       \
    X(HeadDim, c.head_dim)

enum class Dim : uint8_t {
#define PQ_DIM_ENUM(name, expr) name,
    PQ_DIMS(PQ_DIM_ENUM)
#undef PQ_DIM_ENUM
};

inline int64_t dim_size(Dim d, const Config& c) {
    switch (d) {
#define PQ_DIM_CASE(name, expr) \
    case Dim::name: return (expr);
        PQ_DIMS(PQ_DIM_CASE)
#undef PQ_DIM_CASE
    }
    return 0;
}

inline const char* dim_name(Dim d) {
    switch (d) {
#define PQ_DIM_NAME(name, expr) \
    case Dim::name: return #name;
        PQ_DIMS(PQ_DIM_NAME)
#undef PQ_DIM_NAME
    }
    return "?";
}

// ---- tensors ---------------------------------------------------------------------------------------

// Which blocks a layer tensor belongs to (a bit mask): DeltaNet layers, attention layers, and the MTP
// block (blk.{n_layer}..: one gated-attention decoder layer plus the nextn.* tensors).
enum BlockKind : uint8_t { kRecurrent = 1, kAttention = 2, kMtp = 4, kEveryBlock = 7 };

// Weight: a matmul operand or embedding table, in any type the backend reads, used in place.
// Float: a small vector or array the kernels read as F32 (the loader widens F16/BF16 copies of those).
enum class Storage : uint8_t { Weight, Float };

struct TensorSpec {
    const char* name;  // a global tensor's GGUF name; a layer tensor's name after "blk.N."
    uint8_t blocks;    // 0: global; else the BlockKinds that have it
    Dim ne0, ne1;      // ggml order: ne0 is the contiguous dimension (a matmul's input size)
    Storage storage;
    bool optional;     // may be absent: output.weight (then the LM head is token_embd, tied)
};

//  field         GGUF name             ne0   ne1    storage  optional
#define PQ_GLOBAL_TENSORS(X)                                   \
    X(token_embd, "token_embd.weight", Embd, Vocab, Weight, false) \
    X(output_norm, "output_norm.weight", Embd, One, Float, false)  \
    X(output, "output.weight", Embd, Vocab, Weight, true)

//  field                  name after "blk.N."             blocks                ne0   ne1   storage
#define PQ_LAYER_TENSORS(X)                                                                           \
    X(attn_norm, "attn_norm.weight", kEveryBlock, Embd, One, Float)                                   \
    X(post_attention_norm, "post_attention_norm.weight", kEveryBlock, Embd, One, Float)               \
    X(ffn_gate, "ffn_gate.weight", kEveryBlock, Embd, Ff, Weight)                                     \
    X(ffn_up, "ffn_up.weight", kEveryBlock, Embd, Ff, Weight)                                         \
    X(ffn_down, "ffn_down.weight", kEveryBlock, Ff, Embd, Weight)                                     \
    /* Gated DeltaNet (llama.cpp layout: V heads tiled, ssm_a = -exp(A_log), conv taps oldest first) */ \
    X(attn_qkv, "attn_qkv.weight", kRecurrent, Embd, ConvChannels, Weight)                            \
    X(attn_gate, "attn_gate.weight", kRecurrent, Embd, SsmInner, Weight)                              \
    X(ssm_conv1d, "ssm_conv1d.weight", kRecurrent, ConvKernel, ConvChannels, Float)                   \
    X(ssm_dt, "ssm_dt.bias", kRecurrent, SsmVHeads, One, Float)                                       \
    X(ssm_a, "ssm_a", kRecurrent, SsmVHeads, One, Float)                                              \
    X(ssm_beta, "ssm_beta.weight", kRecurrent, Embd, SsmVHeads, Weight)                               \
    X(ssm_alpha, "ssm_alpha.weight", kRecurrent, Embd, SsmVHeads, Weight)                             \
    X(ssm_norm, "ssm_norm.weight", kRecurrent, SsmVDim, One, Float)                                   \
    X(ssm_out, "ssm_out.weight", kRecurrent, SsmInner, Embd, Weight)                                  \
    /* gated attention (the MTP block's decoder layer too) */                                         \
    X(attn_q, "attn_q.weight", kAttention | kMtp, Embd, AttnQGate, Weight)                            \
    X(attn_k, "attn_k.weight", kAttention | kMtp, Embd, AttnKv, Weight)                               \
    X(attn_v, "attn_v.weight", kAttention | kMtp, Embd, AttnKv, Weight)                               \
    X(attn_q_norm, "attn_q_norm.weight", kAttention | kMtp, HeadDim, One, Float)                      \
    X(attn_k_norm, "attn_k_norm.weight", kAttention | kMtp, HeadDim, One, Float)                      \
    X(attn_output, "attn_output.weight", kAttention | kMtp, AttnOut, Embd, Weight)                    \
    /* MTP head (token embedding and LM head shared with the main model) */                           \
    X(nextn_eh_proj, "nextn.eh_proj.weight", kMtp, Embd2, Embd, Weight)                               \
    X(nextn_enorm, "nextn.enorm.weight", kMtp, Embd, One, Float)                                      \
    X(nextn_hnorm, "nextn.hnorm.weight", kMtp, Embd, One, Float)                                      \
    X(nextn_shared_head_norm, "nextn.shared_head_norm.weight", kMtp, Embd, One, Float)

// One layer's weights and the whole model's, for any tensor handle T (the CPU's mmap view, the CUDA
// backend's device slice). Fields are named as in the tables above.
template <class T>
struct LayerT {
#define PQ_LAYER_FIELD(field, name, blocks, d0, d1, st) T field;
    PQ_LAYER_TENSORS(PQ_LAYER_FIELD)
#undef PQ_LAYER_FIELD
};

template <class T>
struct WeightsT {
#define PQ_GLOBAL_FIELD(field, name, d0, d1, st, opt) T field;
    PQ_GLOBAL_TENSORS(PQ_GLOBAL_FIELD)
#undef PQ_GLOBAL_FIELD
    std::vector<LayerT<T>> layers;  // n_layer main layers, then n_nextn MTP blocks
};

// The kind of block il (0 <= il < n_layer + n_nextn).
inline uint8_t block_kind(const Config& c, int il) {
    if (il >= c.n_layer) return kMtp;
    return c.recurrent[il] ? kRecurrent : kAttention;
}

inline std::string tensor_name(const TensorSpec& s, int il) {
    return s.blocks == 0 ? std::string(s.name) : "blk." + std::to_string(il) + "." + s.name;
}

// Calls fn(spec, name, ne0, ne1, slot) for every tensor the config has, in file order (globals, then
// layer by layer), with slot the matching field of w (w.layers is resized to n_layer + n_nextn).
template <class T, class Fn>
void for_each_weight(const Config& c, WeightsT<T>& w, Fn&& fn) {
#define PQ_GLOBAL_VISIT(field, gname, d0, d1, st, opt)                                      \
    {                                                                                        \
        const TensorSpec s{gname, 0, Dim::d0, Dim::d1, Storage::st, opt};                    \
        fn(s, std::string(gname), dim_size(Dim::d0, c), dim_size(Dim::d1, c), w.field);      \
    }
    PQ_GLOBAL_TENSORS(PQ_GLOBAL_VISIT)
#undef PQ_GLOBAL_VISIT
    w.layers.resize((size_t)c.n_layer + (size_t)c.n_nextn);
    for (int il = 0; il < c.n_layer + c.n_nextn; ++il) {
        const uint8_t kind = block_kind(c, il);
        LayerT<T>& L = w.layers[il];
#define PQ_LAYER_VISIT(field, lname, blk, d0, d1, st)                                      \
    if ((blk) & kind) {                                                                     \
        const TensorSpec s{lname, (uint8_t)(blk), Dim::d0, Dim::d1, Storage::st, false};    \
        fn(s, tensor_name(s, il), dim_size(Dim::d0, c), dim_size(Dim::d1, c), L.field);     \
    }
        PQ_LAYER_TENSORS(PQ_LAYER_VISIT)
#undef PQ_LAYER_VISIT
    }
}

// The same walk without weights: fn(spec, name, ne0, ne1).
template <class Fn>
void for_each_tensor(const Config& c, Fn&& fn) {
    struct None {};
    WeightsT<None> w;
    for_each_weight(c, w, [&](const TensorSpec& s, const std::string& name, int64_t ne0, int64_t ne1, None&) {
        fn(s, name, ne0, ne1);
    });
}

// ggml types the runtime reads as weights (matmul operands, embeddings): every backend implements all
// of them (the CPU's type_supported and the CUDA matmul family are tested against this list).
inline bool spec_weight_type(int type) {
    switch (type) {
        case T_F32: case T_F16: case T_BF16: case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0:
        case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_NL: case T_IQ4_XS:
            return true;
        default:
            return false;
    }
}

// ---- validation --------------------------------------------------------------------------------------

[[noreturn]] inline void spec_fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Hyper-parameters every backend needs (each backend adds its own kernel limits on top).
inline void validate_config(const Config& c) {
    if (c.n_embd <= 0 || c.n_ff <= 0 || c.n_vocab <= 0 || c.n_layer <= 0) spec_fail("model sizes must be positive");
    if (c.n_layer > 4096 || c.n_nextn < 0 || c.n_nextn > 16) spec_fail("layer counts out of range");
    if ((int)c.recurrent.size() != c.n_layer) spec_fail("recurrent[] length != n_layer");
    if (c.n_attn_layers() > 0 || c.n_nextn > 0) {
        if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
            spec_fail("attention head counts invalid (n_head must be a multiple of n_head_kv)");
        if (c.head_dim <= 0 || c.n_rot < 0 || c.n_rot > c.head_dim || c.n_rot % 2 != 0) spec_fail("rope/head dims invalid");
    }
    if (c.n_recurrent_layers() > 0) {
        if (c.ssm_k_heads <= 0 || c.ssm_v_heads <= 0 || c.ssm_v_heads % c.ssm_k_heads != 0)
            spec_fail("DeltaNet head counts invalid (V heads must be a multiple of QK heads)");
        if (c.ssm_k_dim <= 0 || c.ssm_v_dim <= 0 || c.ssm_conv < 1 || c.ssm_conv > 16) spec_fail("DeltaNet dims invalid");
    }
    if (!(c.rms_eps > 0.0f) || !(c.rope_base > 0.0f)) spec_fail("rms eps / rope base must be positive");
    if (c.rope_scaling < kRopeNone || c.rope_scaling > kRopeYarn) spec_fail("unknown RoPE scaling type");
    if (c.rope_scaling != kRopeNone && !(c.rope_freq_scale > 0.0f && c.rope_freq_scale <= 1.0f))
        spec_fail("RoPE scaling factor must be >= 1 (freq_scale in (0, 1])");
    if (c.rope_scaling == kRopeYarn &&
        (c.yarn_orig_ctx <= 0 || !(c.yarn_beta_fast > 0.0f) || !(c.yarn_beta_slow > 0.0f) ||
         !(c.yarn_attn_factor > 0.0f) || !(c.yarn_ext_factor >= 0.0f && c.yarn_ext_factor <= 1.0f)))
        spec_fail("YaRN parameters invalid (original context > 0, beta fast/slow > 0, attn factor > 0, ext factor in [0, 1])");
}

// One tensor as a backend receives it (a host pointer into the mmapped GGUF, or a device slice).
struct TensorDesc {
    int type = -1;  // GgmlType
    int64_t ne0 = 0, ne1 = 1;
    const void* data = nullptr;
};

inline size_t tensor_bytes(int type, int64_t ne0, int64_t ne1) {
    const int bs = type_block_size(type);
    if (bs <= 0) return 0;
    return (size_t)(ne0 / bs) * (size_t)type_block_bytes(type) * (size_t)ne1;
}

// Checks t against its spec: present, shape, type (weight_type_ok for Weight storage, F32 for Float:
// the loader widens), whole blocks per row. Throws std::invalid_argument naming the tensor.
template <class TypeOk>
void check_tensor(const TensorSpec& s, const std::string& name, int64_t ne0, int64_t ne1, const TensorDesc& t,
                  TypeOk&& weight_type_ok, const char* backend) {
    if (!t.data) spec_fail("missing tensor " + name);
    if (s.storage == Storage::Float ? t.type != T_F32 : !weight_type_ok(t.type))
        spec_fail("tensor " + name + ": unsupported type " + std::to_string(t.type) + " for the " + backend + " backend");
    if (t.ne0 != ne0 || t.ne1 != ne1)
        spec_fail("tensor " + name + ": shape [" + std::to_string(t.ne0) + ", " + std::to_string(t.ne1) +
                  "], expected [" + std::to_string(ne0) + ", " + std::to_string(ne1) + "]");
    const int bs = type_block_size(t.type);
    if (bs <= 0 || t.ne0 % bs != 0) spec_fail("tensor " + name + ": row size not a multiple of its block size");
}

// Walks the spec over w, taking each tensor from lookup(name) (a const TensorDesc*, nullptr when absent),
// checking it and storing make(spec, desc) in its slot. An absent optional tensor leaves the slot as
// constructed; the caller decides what it means (output.weight: tied).
template <class T, class Lookup, class TypeOk, class Make>
void bind_weights(const Config& c, WeightsT<T>& w, Lookup&& lookup, TypeOk&& weight_type_ok, const char* backend,
                  Make&& make) {
    validate_config(c);
    for_each_weight(c, w, [&](const TensorSpec& s, const std::string& name, int64_t ne0, int64_t ne1, T& slot) {
        const TensorDesc* t = lookup(name);
        if (!t || !t->data) {
            if (s.optional) return;
            spec_fail("missing tensor " + name);
        }
        check_tensor(s, name, ne0, ne1, *t, weight_type_ok, backend);
        slot = make(s, *t);
    });
}

// ---- per-sequence state ------------------------------------------------------------------------------

// Every buffer of one sequence's state: per DeltaNet layer the conv window and the SSM matrix (F32),
// per attention layer K and V rows, one row per position (in the state's KV type), and per MTP block
// (when the model has one and the state drafts with it) its own K and V rows at the main positions
// plus the main model's last hidden state, which the next token pairs with as the MTP's input.
//  name    blocks      KV part  values per layer (or per position)
#define PQ_STATE_BUFFERS(X)                                  \
    X(conv, kRecurrent, kNotKv, c.conv_state_floats())       \
    X(ssm, kRecurrent, kNotKv, c.ssm_state_floats())         \
    X(k, kAttention, kKeys, c.kv_row_values())               \
    X(v, kAttention, kValues, c.kv_row_values())             \
    X(mtp_k, kMtp, kKeys, c.kv_row_values())                 \
    X(mtp_v, kMtp, kValues, c.kv_row_values())               \
    X(mtp_h, kMtp, kNotKv, c.n_embd)

enum KvPart : uint8_t { kNotKv = 0, kKeys = 1, kValues = 2 };

// The KV cache's storage: K and V types chosen independently (llama.cpp's -ctk / -ctv), ggml type ids.
// Quantized rows (q8_0: 34 bytes per 32 values, q4_0: 18) are whole blocks per head: head_dim % 32 == 0.
struct KvTypes {
    int k = T_F16, v = T_F16;
    bool rotate = true;  // quantized rows stored rotated (kv_rotation_block), llama.cpp's default
    int of(uint8_t part) const { return part == kValues ? v : k; }
    bool operator==(const KvTypes& o) const { return k == o.k && v == o.v && rotate == o.rotate; }
    // The Hadamard block that part's rows are rotated by (0: not rotated).
    int rotation_block(uint8_t part, int head_dim) const;
};

inline bool kv_type_supported(int t) { return t == T_F32 || t == T_F16 || t == T_Q8_0 || t == T_Q4_0; }

inline const char* kv_type_name(int t) {
    switch (t) {
        case T_F32: return "f32";
        case T_F16: return "f16";
        case T_Q8_0: return "q8_0";
        case T_Q4_0: return "q4_0";
        default: return "?";
    }
}

// "f16" (K and V alike) or "q8_0,f16" (K, V): the one spelling the Python side passes down.
inline KvTypes kv_types_from_name(const std::string& name) {
    auto one = [&](const std::string& s) {
        for (int t : {T_F32, T_F16, T_Q8_0, T_Q4_0})
            if (s == kv_type_name(t)) return t;
        throw std::invalid_argument("KV cache type must be f16, f32, q8_0 or q4_0 (or 'K,V' for two), got '" + name + "'");
    };
    const size_t comma = name.find(',');
    if (comma == std::string::npos) return KvTypes{one(name), one(name)};
    return KvTypes{one(name.substr(0, comma)), one(name.substr(comma + 1))};
}

inline std::string kv_types_name(const KvTypes& t) {
    return t.k == t.v ? std::string(kv_type_name(t.k)) : std::string(kv_type_name(t.k)) + "," + kv_type_name(t.v);
}

// A quantized K (or V) cache holds its rows rotated, as llama.cpp does since its #21038 (on by default
// there): each head's D values are multiplied by an orthonormal Sylvester Hadamard matrix (H[i][j] =
// (-1)^popcount(i & j) / sqrt(n)), when D % 64 == 0. K: one block of n = the largest power of two
// dividing D (the whole head for the 27B's 256); V: 64-value blocks (llama.cpp found the smaller blocks
// better for V). q is rotated with k (scores are unchanged: H is orthonormal); v is rotated before it is
// stored and the attention output rotated back (H H = I). The rotation spreads a few large channels
// over the block, so the block scale stops being set by outliers (llama.cpp measured q4_0's perplexity
// cost on Qwen3.5-4B fall to +0.22%). F16/F32 rows are never rotated.
inline int kv_rotation_block(int type, int head_dim, uint8_t part) {
    if (type_block_size(type) <= 1 || head_dim <= 0 || head_dim % 64 != 0) return 0;  // not rotated
    if (part == kValues) return 64;
    return head_dim & -head_dim;
}

inline int KvTypes::rotation_block(uint8_t part, int head_dim) const {
    return rotate ? kv_rotation_block(of(part), head_dim, part) : 0;
}

// A quantized cache stores each head's slice as whole blocks (a kernel reads one head at a time).
inline void check_kv_types(const Config& c, const KvTypes& t) {
    for (int x : {t.k, t.v}) {
        if (!kv_type_supported(x)) spec_fail("unsupported KV cache type");
        const int bs = type_block_size(x);
        if (bs > 1 && c.head_dim % bs != 0)
            spec_fail(std::string("KV cache type ") + kv_type_name(x) + " needs head_dim to be a multiple of " +
                      std::to_string(bs) + " (head_dim " + std::to_string(c.head_dim) + ")");
    }
}

struct StateBufferSpec {
    const char* name;
    uint8_t blocks;
    uint8_t kv_part;    // kKeys / kValues: a KV buffer, values per position in the state's K / V type
    bool per_position;  // == (kv_part != kNotKv)
    int64_t values;     // per layer (recurrent, F32) or per position (KV)
    int n_layers;       // layers that have it
};

// Layers that have a buffer of this block kind (MTP buffers: the blocks the config loads, n_nextn).
inline int state_buffer_layers(const Config& c, uint8_t blocks) {
    return blocks == kRecurrent ? c.n_recurrent_layers() : blocks == kAttention ? c.n_attn_layers() : c.n_nextn;
}

template <class Fn>
void for_each_state_buffer(const Config& c, Fn&& fn) {
#define PQ_STATE_VISIT(bname, blk, part, expr) \
    fn(StateBufferSpec{#bname, blk, part, part != kNotKv, (int64_t)(expr), state_buffer_layers(c, blk)});
    PQ_STATE_BUFFERS(PQ_STATE_VISIT)
#undef PQ_STATE_VISIT
}

// Bytes of one KV row (one position of one attention layer's K or V) in a KV type (a ggml type id).
inline size_t kv_row_bytes(const Config& c, int kv_type) {
    return tensor_bytes(kv_type, c.kv_row_values(), 1);
}

// Bytes of the recurrent part of one state (independent of the context), all layers.
inline size_t recurrent_state_bytes(const Config& c) {
    size_t b = 0;
    for_each_state_buffer(c, [&](const StateBufferSpec& s) {
        if (!s.per_position) b += (size_t)s.n_layers * (size_t)s.values * sizeof(float);
    });
    return b;
}

// Bytes of one position's KV rows over all attention layers.
inline size_t kv_bytes_per_token(const Config& c, const KvTypes& t) {
    size_t b = 0;
    for_each_state_buffer(c, [&](const StateBufferSpec& s) {
        if (s.per_position) b += (size_t)s.n_layers * tensor_bytes(t.of(s.kv_part), s.values, 1);
    });
    return b;
}

inline size_t state_bytes(const Config& c, int64_t n_ctx, const KvTypes& t) {
    return recurrent_state_bytes(c) + (size_t)n_ctx * kv_bytes_per_token(c, t);
}

// Longest batch a speculative verification may feed (1 + the drafts): rollback keeps per-token rows.
constexpr int kMaxVerifyTokens = 16;

// What rolling back a verification of n tokens keeps (speculative decoding, on top of the state): the
// recurrent part as it was before the batch (restored, then the accepted tokens' updates replayed, so
// the result is bit-identical to having fed only those tokens) and, per token and DeltaNet layer, the
// conv inputs and outputs and the decay and write strength; per token the main model's final hidden
// state (the MTP's input). For the 27B: 157 MB + 3.9 MB per token; a per-token copy of the whole
// recurrent state (llama.cpp's design) would cost 157 MB per token.
inline size_t verify_rollback_bytes(const Config& c, int n_tokens) {
    const size_t per_token_layer = (2 * (size_t)c.conv_channels() + 2 * (size_t)c.ssm_v_heads) * sizeof(float);
    return recurrent_state_bytes(c) +
           (size_t)n_tokens * ((size_t)c.n_recurrent_layers() * per_token_layer + (size_t)c.n_embd * sizeof(float));
}

}  // namespace pq
