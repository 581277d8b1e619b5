// spec_module.cpp: pyqwen._spec, the model spec (model_spec.h) and the GPU memory plan
// (cuda/plan/device_plan.h) for Python: the GGUF loader checks files against expected_tensors(),
// pyqwen/memory_plan.py presents plan_device_memory() -- neither keeps a copy of the tables or formulas.
// A module of its own, with no kernels: validating a file or planning GPU memory needs neither backend.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>

#include "config_py.h"
#include "device_plan.h"
#include "plan_py.h"
#include "model_spec.h"

namespace py = pybind11;

namespace pq {
namespace {

const char* storage_name(Storage s) { return s == Storage::Weight ? "weight" : "float"; }

py::list block_names(uint8_t blocks) {
    py::list out;
    if (blocks == 0) out.append("global");
    if (blocks & kRecurrent) out.append("recurrent");
    if (blocks & kAttention) out.append("attention");
    if (blocks & kMtp) out.append("mtp");
    return out;
}

// KV cache types by their llama.cpp names (ggml type ids).
KvTypes kv_type_id(const Config& c, const std::string& name) {
    const KvTypes t = kv_types_from_name(name);
    check_kv_types(c, t);
    return t;
}

py::dict plan_to_dict(const cuda::DevicePlan& p) {
    py::dict d;
    d["n_ctx"] = p.n_ctx;
    d["n_batch"] = p.n_batch;
    d["n_snapshots"] = p.n_snapshots;
    d["n_weights"] = p.n_weights;
    d["weights"] = p.weights;
    d["kv_per_token"] = p.kv_per_token;
    d["kv_cache"] = p.kv_cache;
    d["recurrent"] = p.recurrent;
    d["snapshots"] = p.snapshots;
    d["host_snapshots"] = p.host_snapshots;
    d["verify_log"] = p.verify_log;
    d["workspace"] = cuda::workspace_to_dict(p.workspace);
    d["context"] = p.context;
    d["total"] = p.total();
    d["logit_rows"] = cuda::kLogitRows;
    return d;
}

}  // namespace

void bind_spec(py::module_& m) {
    m.def(
        "weight_types", []() {
            py::list out;
            for (int t = 0; t < 64; ++t)
                if (spec_weight_type(t)) out.append(t);
            return out;
        },
        "ggml type ids the runtime reads as weights (every backend implements all of them).");
    m.def(
        "tensor_spec",
        []() {
            // The table itself: walk a config with one block of each kind, one row per spec line.
            Config one;
            one.n_layer = 2;
            one.recurrent = {true, false};
            one.n_nextn = 1;
            std::vector<TensorSpec> specs;
            for_each_tensor(one, [&](const TensorSpec& s, const std::string&, int64_t, int64_t) {
                for (const TensorSpec& t : specs)
                    if (std::string(t.name) == s.name) return;
                specs.push_back(s);
            });
            py::list rows;
            for (const TensorSpec& s : specs) {
                py::dict r;
                r["name"] = s.blocks == 0 ? std::string(s.name) : std::string("blk.{i}.") + s.name;
                r["blocks"] = block_names(s.blocks);
                r["ne0"] = dim_name(s.ne0);
                r["ne1"] = dim_name(s.ne1);
                r["storage"] = storage_name(s.storage);
                r["optional"] = s.optional;
                rows.append(r);
            }
            return rows;
        },
        "Every tensor of the qwen35 spec: name pattern, blocks that have it, dimensions, storage, optional.");

    m.def(
        "expected_tensors",
        [](const py::dict& config) {
            const Config c = config_from_dict(config);
            py::dict out;
            for_each_tensor(c, [&](const TensorSpec& s, const std::string& name, int64_t ne0, int64_t ne1) {
                py::dict r;
                r["ne0"] = ne0;
                r["ne1"] = ne1;
                r["storage"] = storage_name(s.storage);
                r["optional"] = s.optional;
                out[py::str(name)] = r;
            });
            return out;
        },
        py::arg("config"),
        "name -> {ne0, ne1, storage ('weight' | 'float'), optional} of every tensor a model with this config "
        "reads, in file order.");

    m.def(
        "state_buffers",
        [](const py::dict& config) {
            const Config c = config_from_dict(config);
            py::list out;
            for_each_state_buffer(c, [&](const StateBufferSpec& b) {
                py::dict r;
                r["name"] = b.name;
                r["blocks"] = block_names(b.blocks);
                r["per_position"] = b.per_position;
                r["values"] = b.values;
                r["n_layers"] = b.n_layers;
                out.append(r);
            });
            return out;
        },
        py::arg("config"), "The per-sequence state buffers (conv, ssm: F32 per layer; k, v: KV type per position).");

    m.def(
        "state_bytes",
        [](const py::dict& config, int64_t n_ctx, const std::string& kv_type) {
            const Config c = config_from_dict(config);
            const KvTypes kt = kv_type_id(c, kv_type);
            py::dict d;
            d["recurrent"] = recurrent_state_bytes(c);
            d["kv_per_token"] = kv_bytes_per_token(c, kt);
            d["kv_cache"] = (size_t)n_ctx * kv_bytes_per_token(c, kt);
            d["total"] = state_bytes(c, n_ctx, kt);
            return d;
        },
        py::arg("config"), py::arg("n_ctx"), py::arg("kv_type") = "f16",
        "Bytes of one sequence's state at n_ctx: recurrent part, KV per token, KV cache, total.");

    m.def(
        "plan_device_memory",
        [](const py::dict& config, const py::dict& tensors, int64_t n_ctx, const std::string& kv_type, int64_t n_batch,
           int n_snapshots, size_t context_bytes, py::object budget, int64_t n_ctx_max) {
            const Config c = config_from_dict(config);
            if (n_ctx < 1 || n_batch < 1 || n_snapshots < 0)
                throw std::invalid_argument("n_ctx and n_batch must be >= 1, n_snapshots >= 0");
            const KvTypes kt = kv_type_id(c, kv_type);
            const auto table = tensors_from_dict(tensors);
            auto lookup = [&](const std::string& name) -> const TensorDesc* {
                auto it = table.find(name);
                return it == table.end() ? nullptr : &it->second;
            };
            py::dict d;
            {
                const auto ws = cuda::planned_weights(c, lookup);
                cuda::DevicePlan p;
                int64_t best = -1;
                {
                    py::gil_scoped_release release;
                    p = cuda::plan_device_memory(c, ws, n_ctx, kt, n_batch, n_snapshots, context_bytes);
                }
                d = plan_to_dict(p);
                if (!budget.is_none()) {
                    const size_t b = budget.cast<size_t>();
                    py::gil_scoped_release release;
                    best = cuda::max_context(c, ws, kt, n_batch, n_snapshots, context_bytes, b, n_ctx_max);
                }
                d["max_ctx"] = best < 0 ? py::object(py::none()) : py::object(py::int_(best));
                py::list names;
                for (const auto& w : ws) names.append(py::make_tuple(w.name, w.shape.type, w.shape.ne0, w.shape.ne1, w.bytes));
                d["weight_table"] = names;
            }
            return d;
        },
        py::arg("config"), py::arg("tensors"), py::arg("n_ctx"), py::arg("kv_type") = "f16", py::arg("n_batch") = 256,
        py::arg("n_snapshots") = 2, py::arg("context_bytes") = 0, py::arg("budget") = py::none(),
        py::arg("n_ctx_max") = 0,
        "The CUDA backend's device memory at n_ctx (tensors: name -> (type, ne0, ne1), the file's table). "
        "With a budget, max_ctx is the largest context in [1, n_ctx_max] that fits (0: none).");
}

}  // namespace pq

PYBIND11_MODULE(_spec, m) {
    m.doc() = "pyqwen model spec (tensors, state buffers) and the CUDA backend's GPU memory plan";
    pq::bind_spec(m);
}
