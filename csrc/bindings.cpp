// bindings.cpp: the pybind11 module pyqwen._core (model, state, snapshots; kernels for the tests).
//
// Python hands over the mmapped GGUF's tensor pointers (never copies) and token ids; a whole forward
// pass runs in C++ with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>

#include "config_py.h"
#include "gdn_chunk.h"
#include "membw.h"
#include "model.h"
#include "py_testing.h"
#include "simd/dispatch.h"

namespace py = pybind11;

namespace pq {

void bind_quants(py::module_& m);          // quantize / dequantize (bindings_quants.cpp)
void bind_quants_testing(py::module_& m);  // reference quantized dots and matmul (bindings_quants.cpp)
void bind_ref(py::module_& m);             // reference kernels (bindings_ref.cpp)

namespace {

// One forward at a time per model: the thread pool is not reentrant and a server may call from
// several Python threads.
struct PyModel {
    std::unique_ptr<Model> model;
    py::object keepalive;
    std::mutex mu;
};

}  // namespace
}  // namespace pq

PYBIND11_MODULE(_core, m) {
    using namespace pq;
    m.doc() = "pyqwen C++ core: qwen35 forward pass on the CPU, GGUF block formats, kernels";

    py::class_<State>(m, "State")
        .def_readonly("pos", &State::pos)
        .def_readonly("n_ctx", &State::n_ctx)
        .def_property_readonly("nbytes", &State::bytes)
        .def_property_readonly("kv_type", [](const State& s) { return kv_types_name(s.kv_type); })
        .def_property_readonly("kv_rotation", [](const State& s) { return s.kv_type.rotate; })
        .def_property_readonly("has_mtp", &State::has_mtp, "Whether the state keeps the MTP head's cache.")
        .def("reset", &State::reset, "Forget every token (KV cache and recurrent states).");

    py::class_<Snapshot>(m, "Snapshot")
        .def_readonly("pos", &Snapshot::pos)
        .def_readonly("has_kv", &Snapshot::has_kv)
        .def_property_readonly("nbytes", &Snapshot::bytes)
        .def_property_readonly(
            "kv_rows",
            [](const Snapshot& s) {
                py::list out;
                for (size_t i = 0; i < s.k.size(); ++i)
                    out.append(py::make_tuple(py::bytes(reinterpret_cast<const char*>(s.k[i].data()), s.k[i].size()),
                                              py::bytes(reinterpret_cast<const char*>(s.v[i].data()), s.v[i].size())));
                return out;
            },
            "[(K bytes, V bytes)] of rows [0, pos) per attention layer, then MTP block (with_kv snapshots; tests "
            "compare the backends' caches with it).")
        .def_property_readonly(
            "ssm_states",
            [](const Snapshot& s) {
                py::list out;
                for (const auto& v : s.ssm) {
                    py::array_t<float> a((py::ssize_t)v.size());
                    std::copy(v.begin(), v.end(), a.mutable_data());
                    out.append(a);
                }
                return out;
            },
            "The delta-rule state of each recurrent layer, flat float32 ([n_v_heads][dv][dk]; tests compare "
            "the chunked and token-loop prefills with it).");

    auto model_cls = py::class_<PyModel>(m, "Model")
        .def(py::init([](const py::dict& config, const py::dict& tensors, int n_threads, py::object keepalive) {
                 auto pm = std::make_unique<PyModel>();
                 Config c = config_from_dict(config);
                 Weights w = bind_cpu_weights(c, tensors_from_dict(tensors));
                 if (n_threads < 1 || n_threads > 1024) throw std::invalid_argument("n_threads out of range");
                 pm->model = std::make_unique<Model>(std::move(c), std::move(w), n_threads);
                 pm->keepalive = std::move(keepalive);
                 return pm;
             }),
             py::arg("config"), py::arg("tensors"), py::arg("n_threads"), py::arg("keepalive") = py::none())
        .def_property_readonly("config", [](PyModel& pm) { return config_to_dict(pm.model->config()); })
        .def_property_readonly("n_threads", [](PyModel& pm) { return pm.model->n_threads(); })
        .def(
            "new_state",
            [](PyModel& pm, int64_t n_ctx, const std::string& kv_type, bool mtp, bool kv_rotation) {
                KvTypes t = kv_types_from_name(kv_type);
                t.rotate = kv_rotation;
                return pm.model->new_state(n_ctx, t, mtp);
            },
            py::arg("n_ctx"), py::arg("kv_type") = "f16", py::arg("mtp") = false, py::arg("kv_rotation") = true,
            "A sequence state; mtp=True also keeps the MTP head's cache (for mtp_draft); kv_rotation: a quantized "
            "cache stores Hadamard-rotated rows (llama.cpp's default; model_spec.h kv_rotation_block).")
        .def_property_readonly("has_mtp", [](PyModel& pm) { return pm.model->has_mtp(); })
        .def(
            "verify",
            [](PyModel& pm, State& st, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens) {
                if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be a 1-D array");
                const int64_t n = tokens.shape(0);
                py::array_t<float> out({n, pm.model->config().n_vocab});
                float* o = out.mutable_data();
                const int32_t* tok = tokens.data();
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->forward(st, tok, n, o, true, n, true);
                }
                return out;
            },
            py::arg("state"), py::arg("tokens"),
            "Feed tokens (the last sampled one, then the drafts) as one batch and return the logits of every "
            "one [n, n_vocab]; rollback(state, n_keep) then keeps a prefix of them.")
        .def(
            "verify_greedy",
            [](PyModel& pm, State& st, const std::vector<int32_t>& tokens) {
                int32_t next = -1;
                int64_t n_acc;
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    n_acc = pm.model->verify_greedy(st, tokens.data(), (int64_t)tokens.size(), &next);
                }
                return py::make_tuple(n_acc, next);
            },
            py::arg("state"), py::arg("tokens"),
            "Greedy verification in one call: verify tokens (the last sampled one, then the drafts) and accept "
            "the drafts equal to the model's argmax; returns (n_acc, next token), no logits. rollback(state, "
            "n_keep) follows as after verify.")
        .def(
            "mtp_draft_greedy",
            [](PyModel& pm, State& st, int32_t token, int64_t k, double p_first, double p_min) {
                std::vector<int32_t> out((size_t)std::max<int64_t>(k, 0));
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    out.resize((size_t)pm.model->mtp_draft_greedy(st, token, k, out.data(), p_first, p_min));
                }
                return out;
            },
            py::arg("state"), py::arg("token"), py::arg("k"), py::arg("p_first") = 0.0, py::arg("p_min") = 0.0,
            "Up to k chained greedy MTP drafts after `token` (each the argmax of mtp_draft's logits); their ids. "
            "The chain stops before a draft whose top softmax probability is below p_first (the first) or "
            "p_min (the others).")
        .def(
            "mtp_draft",
            [](PyModel& pm, State& st, int32_t token) {
                py::array_t<float> out(pm.model->config().n_vocab);
                float* o = out.mutable_data();
                {
                    py::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->mtp_draft(st, token, o);
                }
                return out;
            },
            py::arg("state"), py::arg("token"),
            "One MTP draft step: logits [n_vocab] of the token after `token` (the first call after a forward "
            "pairs it with the last fed token's hidden state; later calls continue the draft chain).")
        .def(
            "snapshot",
            [](PyModel& pm, const State& st, bool with_kv) {
                std::lock_guard<std::mutex> lock(pm.mu);
                return pm.model->snapshot(st, with_kv);
            },
            py::arg("state"), py::arg("with_kv") = false)
        .def(
            "restore",
            [](PyModel& pm, State& st, const Snapshot& s) {
                std::lock_guard<std::mutex> lock(pm.mu);
                pm.model->restore(st, s);
            },
            py::arg("state"), py::arg("snapshot"));
    pq::def_forward<PyModel, State>(model_cls);
    pq::def_rollback_and_eval_mtp<PyModel, State>(model_cls);

    m.def("type_supported", &type_supported, py::arg("ggml_type"),
          "Whether the CPU kernels can use weights of this ggml type.");
    m.def("simd_backend", []() { return std::string(simd_kernels().name); }, "Name of the kernel set in use.");
    m.def("set_gdn_chunked", &gdn_set_chunked, py::arg("on"),
          "Whether CPU prefill batches of 32+ tokens run the chunked gated delta rule (csrc/gdn_chunk.h; off by "
          "default: it gives up batch invariance; PYQWEN_GDN_CHUNK=on sets the initial value).");
    m.def("gdn_chunked", &gdn_chunked_enabled, "Whether the chunked gated delta rule is on (set_gdn_chunked).");
    m.def(
        "set_simd", [](const std::string& name) { return simd_select(name.c_str()); }, py::arg("name"),
        "Choose the kernel set ('ref', 'avx2', 'auto'); returns False if unavailable here.");

    m.def(
        "read_bandwidth",
        [](int n_threads, int64_t n_bytes, int reps) {
            py::gil_scoped_release nogil;
            return read_bandwidth(n_threads, n_bytes, reps);
        },
        py::arg("n_threads"), py::arg("n_bytes") = int64_t(1) << 30, py::arg("reps") = 3,
        "DRAM read bandwidth in bytes/s with n_threads threads (best of reps passes over n_bytes).");

    bind_quants(m);
    py::module_ testing = testing_submodule(m, "Reference kernels and quantized dots, for the tests.");
    bind_quants_testing(testing);
    bind_ref(testing);
}
