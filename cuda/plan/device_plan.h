// device_plan.h: the GPU memory plan of the CUDA backend, computed before anything is allocated.
//
// Everything the CUDA model (model/model.cu) puts in device memory, from the config and the file's
// tensor table alone: the weights the spec lists (model_spec.h; each a 256-byte aligned slice of one
// arena, a tied LM head not duplicated), the KV cache and recurrent state of one sequence (the spec's
// state buffers; K and V rows in their KvTypes), no checkpoint (they live in pinned host memory:
// host_snapshots says what n_snapshots of them take there), the workspace
// (workspace_sizes.h plan_workspace), the log of one speculative verification (verify_log_layout), and
// the CUDA context (an allowance the caller gives). A config with an MTP head (n_nextn > 0) plans its
// weights, its KV rows and input hidden state (state buffers of the spec) and its activation buffers. Host-only:
// pyqwen._core exposes it (pyqwen/memory_plan.py only presents it), the CUDA model allocates by it.
#pragma once

#include <string>
#include <vector>

#include "model_spec.h"
#include "workspace_sizes.h"

namespace pq::cuda {

// A weight the CUDA model uploads.
struct PlannedWeight {
    std::string name;
    WeightShape shape;
    size_t bytes;
};

// The weights of the spec that the model uploads, from the file's table (lookup(name) -> const
// TensorDesc*, nullptr when absent). Throws std::invalid_argument for a missing required tensor.
template <class Lookup>
std::vector<PlannedWeight> planned_weights(const Config& c, Lookup&& lookup) {
    std::vector<PlannedWeight> out;
    for_each_tensor(c, [&](const TensorSpec& s, const std::string& name, int64_t, int64_t) {
        const TensorDesc* t = lookup(name);
        if (!t) {
            if (s.optional) return;
            spec_fail("missing tensor " + name);
        }
        out.push_back({name, {t->type, t->ne0, t->ne1}, tensor_bytes(t->type, t->ne0, t->ne1)});
    });
    return out;
}

// The verification log of speculative decoding (model.cu Model::forward with verify, Model::rollback): one
// per model, in one allocation. What it holds is the spec's verify_rollback_bytes (model_spec.h), carved:
// the recurrent arena of the state before the batch (rec0), and per DeltaNet layer and token the conv
// inputs x [C], the conv outputs y [C] and the raw alpha / beta projections [n_v] (rollback replays the
// kept tokens through the decode kernels: the same arithmetic as feeding them one by one), and per token
// the main model's final-norm hidden row [n_embd] (the MTP's input after the kept tokens).
struct VerifyLogLayout {
    int64_t n_tokens = 0;
    size_t rec0 = 0, hidden = 0, total = 0;
    std::vector<size_t> x, y, alpha, beta;  // per DeltaNet layer: [n_tokens][C] and [n_tokens][n_v]
};

inline VerifyLogLayout verify_log_layout(const Config& c, int64_t n_tokens) {
    VerifyLogLayout L;
    L.n_tokens = n_tokens;
    Carver cv;
    L.rec0 = cv.take(recurrent_state_bytes(c));
    const size_t C = (size_t)c.conv_channels(), nv = (size_t)c.ssm_v_heads, n = (size_t)n_tokens;
    for (int i = 0; i < c.n_recurrent_layers(); ++i) {
        L.x.push_back(cv.take(sizeof(float) * n * C));
        L.y.push_back(cv.take(sizeof(float) * n * C));
        L.alpha.push_back(cv.take(sizeof(float) * n * nv));
        L.beta.push_back(cv.take(sizeof(float) * n * nv));
    }
    L.hidden = cv.take(sizeof(float) * n * (size_t)c.n_embd);
    L.total = cv.size;
    return L;
}

struct DevicePlan {
    int64_t n_ctx = 0;
    KvTypes kv_type;  // the KV cache's K and V types
    int64_t n_batch = 0;
    int n_snapshots = 0;
    size_t n_weights = 0;
    size_t weights = 0;       // the arena: every weight 256-byte aligned
    size_t kv_per_token = 0;  // K and V rows of one position over all attention layers
    size_t kv_cache = 0;
    size_t recurrent = 0;     // conv + SSM states of one sequence
    size_t snapshots = 0;     // device bytes of checkpoints: 0 (they live in pinned host memory, model.h Snapshot)
    size_t host_snapshots = 0;  // n_snapshots x recurrent, pinned host memory (not in total(): the session
                                // cache's --cache-ram budget bounds it)
    size_t verify_log = 0;    // speculative decoding: the log of one verification (verify_log_layout)
    WorkspacePlan workspace;
    size_t context = 0;       // CUDA context allowance (the caller's)
    size_t total() const {
        return weights + kv_cache + recurrent + snapshots + verify_log + workspace.total() + context;
    }
};

inline size_t weight_arena_bytes(const std::vector<PlannedWeight>& ws) {
    Carver cv;
    for (const PlannedWeight& w : ws) cv.take(w.bytes);
    return cv.size;
}

inline DevicePlan plan_device_memory(const Config& c, const std::vector<PlannedWeight>& ws, int64_t n_ctx,
                                     const KvTypes& kv_type, int64_t n_batch, int n_snapshots, size_t context_bytes) {
    DevicePlan p;
    p.n_ctx = n_ctx;
    p.kv_type = kv_type;
    p.n_batch = n_batch;
    p.n_snapshots = n_snapshots;
    p.n_weights = ws.size();
    p.weights = weight_arena_bytes(ws);
    p.kv_per_token = kv_bytes_per_token(c, kv_type);
    p.kv_cache = (size_t)n_ctx * p.kv_per_token;
    p.recurrent = recurrent_state_bytes(c);
    p.snapshots = 0;
    p.host_snapshots = (size_t)n_snapshots * p.recurrent;
    p.verify_log = verify_log_layout(c, kMaxVerifyTokens).total;
    std::vector<WeightShape> shapes;
    for (const PlannedWeight& w : ws) shapes.push_back(w.shape);
    p.workspace = plan_workspace(c, shapes, n_batch, n_ctx);
    p.context = context_bytes;
    return p;
}

// The largest n_ctx in [1, n_ctx_max] whose plan fits `budget` bytes (0: not even one token). The total
// grows monotonically with n_ctx (KV linearly, attention scratch up to a bound), so this bisects.
inline int64_t max_context(const Config& c, const std::vector<PlannedWeight>& ws, const KvTypes& kv_type, int64_t n_batch,
                           int n_snapshots, size_t context_bytes, size_t budget, int64_t n_ctx_max) {
    auto fits = [&](int64_t ctx) {
        return plan_device_memory(c, ws, ctx, kv_type, n_batch, n_snapshots, context_bytes).total() <= budget;
    };
    if (n_ctx_max < 1 || !fits(1)) return 0;
    int64_t lo = 1, hi = n_ctx_max;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (fits(mid)) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

}  // namespace pq::cuda
