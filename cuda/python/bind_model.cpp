// bind_model.cpp: Python entry points of the CUDA backend model (pyqwen._cuda.CudaModel and friends).
//
// The same construction arguments as pyqwen._core.Model -- the config dict and the tensor table
// name -> (ggml_type, ne0, ne1, host address) -- and the same methods (new_state, forward, snapshot,
// restore, config, and speculative decoding's has_mtp, verify, rollback, mtp_draft, eval_mtp), plus decode()
// (one token, next token chosen on the GPU). Weights are copied to the
// device once; afterwards the mmap is not needed by this object (keepalive is still held so a caller
// may release it when it likes).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "../model/model.h"
#include "../plan/plan_py.h"
#include "../host_api.h"
#include "config_py.h"
#include "device_buffer.h"

namespace py = pybind11;
using pq::config_from_dict;
using pq::config_to_dict;
using pq::tensors_from_dict;
using pq::cuda::Model;
using pq::cuda::ModelConfig;
using pq::cuda::Snapshot;
using pq::cuda::State;

namespace {

// One call at a time per model: the stream, buffers and graphs are shared by every state.
struct PyModel {
    std::unique_ptr<Model> model;
    py::object keepalive;
    std::mutex mu;
};

// The device sampler's parameters, as decode() and sample_logits take them.
pq::cuda::SampleParams sample_params(float temperature, int top_k, float top_p, float min_p, uint64_t seed,
                                     uint64_t counter) {
    pq::cuda::SampleParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    p.counter = counter;
    return p;
}

}  // namespace

namespace pq::cuda_bind {

void bind_model(py::module_& m) {
    // module_local: the real (pyqwen._cuda) and the emulated (pyqwen_cuda_emu) modules define the same
    // C++ types and may be loaded into one process (the tests do); each keeps its own registration.
    py::class_<State>(m, "CudaState", py::module_local())
        .def_readonly("pos", &State::pos)
        .def_readonly("n_ctx", &State::n_ctx)
        .def_property_readonly("nbytes", &State::bytes)
        .def_property_readonly("kv_type", [](const State& st) { return pq::kv_types_name(st.kv_types()); })
        .def_property_readonly("kv_rotation", [](const State& st) { return st.kv_types().rotate; })
        .def_property_readonly("has_mtp", &State::has_mtp, "Whether the state keeps the MTP head's cache.")
        .def("reset", &State::reset, "Forget every token (KV cache and recurrent states).");

    py::class_<Snapshot>(m, "CudaSnapshot", py::module_local())
        .def_readonly("pos", &Snapshot::pos)
        .def_readonly("has_kv", &Snapshot::has_kv)
        .def_property_readonly("nbytes", &Snapshot::bytes);

    auto model_cls = py::class_<PyModel>(m, "CudaModel", py::module_local())
        .def(py::init([](const py::dict& config, const py::dict& tensors, int64_t n_batch, int64_t n_ctx,
                         bool use_graphs, py::object progress, py::object keepalive, int device) {
                 auto pm = std::make_unique<PyModel>();
                 ModelConfig c = config_from_dict(config);
                 auto host = tensors_from_dict(tensors);
                 pq::cuda::ModelOptions opt;
                 opt.n_batch = n_batch;
                 opt.use_graphs = use_graphs;
                 opt.device = device;
                 pq::cuda::ProgressFn cb;
                 if (!progress.is_none()) {
                     cb = [progress](size_t done, size_t total) {
                         py::gil_scoped_acquire gil;
                         progress(done, total);
                     };
                 }
                 {
                     py::gil_scoped_release release;
                     pm->model = std::make_unique<Model>(std::move(c), host, opt, cb);
                     if (n_ctx > 0) pm->model->new_state(n_ctx);  // sizes the scratch for n_ctx up front
                 }
                 pm->keepalive = std::move(keepalive);
                 return pm;
             }),
             py::arg("config"), py::arg("tensors"), py::arg("n_batch") = 256, py::arg("n_ctx") = 0,
             py::arg("use_graphs") = true, py::arg("progress") = py::none(), py::arg("keepalive") = py::none(),
             py::arg("device") = 0,
             "Upload the weights (pointers into host memory, e.g. the mmapped GGUF) to the GPU. n_ctx > 0 "
             "reserves scratch for states of that context now; progress(done_bytes, total_bytes) is called "
             "while uploading. device: the CUDA device index (after CUDA_VISIBLE_DEVICES) everything of this model runs on.")
        .def_property_readonly("config", [](PyModel& pm) { return config_to_dict(pm.model->config()); })
        .def_property_readonly("n_batch", [](PyModel& pm) { return pm.model->options().n_batch; })
        .def_property_readonly("weight_bytes", [](PyModel& pm) { return pm.model->weight_bytes(); })
        .def_property_readonly("workspace", [](PyModel& pm) { return pq::cuda::workspace_to_dict(pm.model->workspace()); },
                               "Bytes of activation buffers, logits, op scratch and sampling workspace.")
        .def_property_readonly("graphs_enabled", [](PyModel& pm) { return pm.model->graphs_enabled(); })
        .def_property_readonly("graph_stats",
                               [](PyModel& pm) {
                                   auto g = pm.model->graph_stats();
                                   py::dict d;
                                   d["captures"] = g.captures;
                                   d["instantiations"] = g.instantiations;
                                   d["updates"] = g.updates;
                                   d["launches"] = g.launches;
                                   d["direct"] = g.direct;
                                   d["body_nodes"] = g.body_nodes;
                                   d["pos_sets"] = g.pos_sets;
                                   return d;
                               })
        .def(
            "new_state",
            [](PyModel& pm, int64_t n_ctx, const std::string& kv_type, bool mtp, bool kv_rotation) {
                pq::KvTypes kt = pq::kv_types_from_name(kv_type);  // ValueError on a bad name
                kt.rotate = kv_rotation;
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(pm.mu);
                return pm.model->new_state(n_ctx, kt, mtp);
            },
            py::arg("n_ctx"), py::arg("kv_type") = "f16", py::arg("mtp") = false, py::arg("kv_rotation") = true,
            py::keep_alive<0, 1>(),
            "A sequence state. kv_type: the KV cache's type, f16, q8_0 or q4_0, or 'K,V' for two (llama.cpp's "
            "-ctk/-ctv); mtp=True also keeps the MTP head's cache (for mtp_draft); kv_rotation: a quantized "
            "cache stores Hadamard-rotated rows (llama.cpp's default; model_spec.h kv_rotation_block), as the "
            "CPU core's.")
        .def_property_readonly("has_mtp", [](PyModel& pm) { return pm.model->has_mtp(); })
        .def(
            "verify",
            [](PyModel& pm, State& st, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens,
               bool argmax) -> py::object {
                if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be a 1-D array");
                const int64_t n = tokens.shape(0);
                const int32_t* tok = tokens.data();
                if (argmax) {
                    py::array_t<int32_t> ids(n);
                    int32_t* d = ids.mutable_data();
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->verify_argmax(st, tok, n, d);
                    return std::move(ids);
                }
                py::array_t<float> out({n, (int64_t)pm.model->config().n_vocab});
                float* o = out.mutable_data();
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->forward(st, tok, n, o, true, n, true);
                }
                return std::move(out);
            },
            py::arg("state"), py::arg("tokens"), py::arg("argmax") = false,
            "Feed tokens (the last sampled one, then the drafts) as one batch and return the logits of every "
            "one [n, n_vocab] (each row as a one-token step computes it), or with argmax=True only each row's "
            "argmax [n] (int32, chosen on the device); rollback(state, n_keep) then keeps a prefix of them.")
        .def(
            "mtp_draft",
            [](PyModel& pm, State& st, int32_t token, bool argmax) -> py::object {
                if (argmax) {
                    int32_t id = -1;
                    {
                        py::gil_scoped_release release;
                        std::lock_guard<std::mutex> lock(pm.mu);
                        pm.model->mtp_draft(st, token, nullptr, &id);
                    }
                    return py::int_(id);
                }
                py::array_t<float> out(pm.model->config().n_vocab);
                float* o = out.mutable_data();
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->mtp_draft(st, token, o);
                }
                return std::move(out);
            },
            py::arg("state"), py::arg("token"), py::arg("argmax") = false,
            "One MTP draft step: logits [n_vocab] of the token after `token` (the first call after a forward "
            "pairs it with the last fed token's hidden state; later calls continue the draft chain), or with "
            "argmax=True only their argmax (chosen on the device).")
        .def(
            "decode",
            [](PyModel& pm, State& st, int32_t token, float temperature, int top_k, float top_p, float min_p,
               uint64_t seed, uint64_t counter) {
                const pq::cuda::SampleParams p = sample_params(temperature, top_k, top_p, min_p, seed, counter);
                int32_t next;
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    next = pm.model->decode(st, token, p);
                }
                return next;
            },
            py::arg("state"), py::arg("token"), py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
            py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("counter") = 0,
            "One decode step: feed `token` (-1: the token the previous decode() chose, still on the GPU) at "
            "state.pos and return the next token, chosen on the GPU (argmax when temperature < 1e-5, else "
            "top-k / top-p / min-p / temperature sampling with the draw (seed, counter)).")
        .def(
            "snapshot",
            [](PyModel& pm, const State& st, bool with_kv) {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(pm.mu);
                return pm.model->snapshot(st, with_kv);
            },
            py::arg("state"), py::arg("with_kv") = false, py::keep_alive<0, 1>(),
            "Checkpoint of the state in pinned host memory (recurrent part; KV rows too if with_kv), copied "
            "asynchronously on the model's stream (nothing is kept on the GPU).")
        .def(
            "snapshot_kv_rows",
            [](PyModel& pm, const Snapshot& s) {
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->synchronize();  // the snapshot's copies have run
                }
                py::list out;
                for (size_t i = 0; i < s.kv_layers(); ++i) {
                    auto k = s.k_rows(i), v = s.v_rows(i);
                    out.append(py::make_tuple(py::bytes(reinterpret_cast<const char*>(k.first), k.second),
                                              py::bytes(reinterpret_cast<const char*>(v.first), v.second)));
                }
                return out;
            },
            py::arg("snapshot"),
            "[(K bytes, V bytes)] of a with_kv snapshot, per attention layer then MTP block (tests).")
        .def(
            "restore",
            [](PyModel& pm, State& st, const Snapshot& s) {
                py::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(pm.mu);
                pm.model->restore(st, s);
            },
            py::arg("state"), py::arg("snapshot"));
    pq::def_forward<PyModel, State>(model_cls);
    pq::def_rollback_and_eval_mtp<PyModel, State>(model_cls);

    m.def(
        "mem_get_info",
        [](int device) {
            check(cudaSetDevice(device), "cudaSetDevice");
            size_t free_b = 0, total_b = 0;
            check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
            return py::make_tuple(free_b, total_b);
        },
        py::arg("device") = 0, "(free, total) bytes of CUDA device `device` (cudaMemGetInfo).");
}

// Test entry point of the device sampler (registered in the `testing` submodule, see bindings.cpp).
void bind_model_testing(py::module_& m) {
    m.def("_set_decode_fusion", &pq::cuda::set_decode_fusion, py::arg("on"),
          "Test hook: False runs decode steps and verifications op by op (the path before the fused launches).");
    m.def("_set_decode_graph_stale_position", &pq::cuda::set_decode_graph_stale_position, py::arg("on"),
          "Test hook, a planted bug: True makes recorded decode graphs take the capture-time position by value.");
    m.def(
        "sample_logits",
        [](const F32Array& logits, float temperature, int top_k, float top_p, float min_p, uint64_t seed,
           uint64_t counter, int cap) {
            if (logits.ndim() != 1) throw std::invalid_argument("logits must be 1-D");
            const int64_t n = logits.shape(0);
            const size_t ws_b = pq::cuda::sample_workspace_bytes(n);
            auto dl = DeviceBuffer::from(logits);
            DeviceBuffer dws(ws_b), dout(sizeof(int32_t));
            const pq::cuda::SampleParams p = sample_params(temperature, top_k, top_p, min_p, seed, counter);
            finish(pq::cuda::sample_token_cap(dl.as<float>(), n, p, dout.as<int32_t>(), dws.as(), ws_b,
                                              cap < 0 ? 8192 : cap, nullptr),
                   "sample_token");
            int32_t out = -2;
            dout.download(&out);
            return out;
        },
        py::arg("logits"), py::arg("temperature"), py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
        py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("counter") = 0, py::arg("cap") = -1,
        "One draw of the device sampler from a logits row (test entry point; cap < 8192 forces the "
        "whole-row path).");
}

}  // namespace pq::cuda_bind
