// config_py.h: what both Python model classes (_core.Model, _cuda.CudaModel) take and give: the config
// dict, the tensor table, the forward() body.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "model_spec.h"

namespace pq {

namespace config_detail {
template <typename T>
T get(const pybind11::dict& d, const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("config is missing '") + key + "'");
    return d[key].cast<T>();
}
}  // namespace config_detail

inline Config config_from_dict(const pybind11::dict& d) {
    using config_detail::get;
    Config c;
    c.n_embd = get<int64_t>(d, "n_embd");
    c.n_ff = get<int64_t>(d, "n_ff");
    c.n_vocab = get<int64_t>(d, "n_vocab");
    c.n_layer = get<int>(d, "n_layer");
    c.n_nextn = d.contains("n_nextn") ? d["n_nextn"].cast<int>() : 0;
    c.recurrent = get<std::vector<bool>>(d, "recurrent");
    c.n_head = get<int>(d, "n_head");
    c.n_head_kv = get<int>(d, "n_head_kv");
    c.head_dim = get<int>(d, "head_dim");
    c.n_rot = get<int>(d, "n_rot");
    c.rope_base = get<float>(d, "rope_base");
    // RoPE scaling: optional (absent = none), the names of Config's fields.
    auto opt = [&](const char* key, auto& field) {
        if (d.contains(key)) field = d[key].cast<std::remove_reference_t<decltype(field)>>();
    };
    opt("rope_scaling", c.rope_scaling);
    opt("rope_freq_scale", c.rope_freq_scale);
    opt("yarn_orig_ctx", c.yarn_orig_ctx);
    opt("yarn_ext_factor", c.yarn_ext_factor);
    opt("yarn_attn_factor", c.yarn_attn_factor);
    opt("yarn_beta_fast", c.yarn_beta_fast);
    opt("yarn_beta_slow", c.yarn_beta_slow);
    c.ssm_conv = get<int>(d, "ssm_conv");
    c.ssm_k_heads = get<int>(d, "ssm_k_heads");
    c.ssm_v_heads = get<int>(d, "ssm_v_heads");
    c.ssm_k_dim = get<int>(d, "ssm_k_dim");
    c.ssm_v_dim = get<int>(d, "ssm_v_dim");
    c.rms_eps = get<float>(d, "rms_eps");
    validate_config(c);
    return c;
}

inline pybind11::dict config_to_dict(const Config& c) {
    pybind11::dict d;
    d["n_embd"] = c.n_embd;
    d["n_ff"] = c.n_ff;
    d["n_vocab"] = c.n_vocab;
    d["n_layer"] = c.n_layer;
    d["n_nextn"] = c.n_nextn;
    d["recurrent"] = c.recurrent;
    d["n_head"] = c.n_head;
    d["n_head_kv"] = c.n_head_kv;
    d["head_dim"] = c.head_dim;
    d["n_rot"] = c.n_rot;
    d["rope_base"] = c.rope_base;
    d["rope_scaling"] = c.rope_scaling;
    d["rope_freq_scale"] = c.rope_freq_scale;
    d["yarn_orig_ctx"] = c.yarn_orig_ctx;
    d["yarn_ext_factor"] = c.yarn_ext_factor;
    d["yarn_attn_factor"] = c.yarn_attn_factor;
    d["yarn_beta_fast"] = c.yarn_beta_fast;
    d["yarn_beta_slow"] = c.yarn_beta_slow;
    d["ssm_conv"] = c.ssm_conv;
    d["ssm_k_heads"] = c.ssm_k_heads;
    d["ssm_v_heads"] = c.ssm_v_heads;
    d["ssm_k_dim"] = c.ssm_k_dim;
    d["ssm_v_dim"] = c.ssm_v_dim;
    d["rms_eps"] = c.rms_eps;
    return d;
}

// tensors: name -> (ggml_type, ne0, ne1, address) or, for planning, (ggml_type, ne0, ne1). Addresses
// point into memory the Python side keeps alive for the model's lifetime (the mmap), passed as `keepalive`.
inline std::map<std::string, TensorDesc> tensors_from_dict(const pybind11::dict& tensors) {
    std::map<std::string, TensorDesc> out;
    for (auto item : tensors) {
        const auto tup = item.second.cast<pybind11::tuple>();
        if (tup.size() != 3 && tup.size() != 4)
            throw std::invalid_argument("tensor table entries are (type, ne0, ne1[, address])");
        TensorDesc t;
        t.type = tup[0].cast<int>();
        t.ne0 = tup[1].cast<int64_t>();
        t.ne1 = tup[2].cast<int64_t>();
        if (tup.size() == 4) t.data = reinterpret_cast<const void*>(tup[3].cast<uintptr_t>());
        out[item.first.cast<std::string>()] = t;
    }
    return out;
}

// The body of both model classes' forward(state, tokens, logits, n_batch): checks the arguments,
// allocates the logits array ('last' [n_vocab], 'all' [n, n_vocab], 'none' -> None) and runs
// model.forward with the GIL released under the model's mutex (one forward at a time per model).
template <typename ModelT, typename StateT>
pybind11::object forward_py(ModelT& model, std::mutex& mu, StateT& st,
                            const pybind11::array_t<int32_t, pybind11::array::c_style | pybind11::array::forcecast>& tokens,
                            const std::string& logits, int64_t n_batch) {
    if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be a 1-D array");
    const int64_t n = tokens.shape(0);
    if (logits != "last" && logits != "all" && logits != "none")
        throw std::invalid_argument("logits must be 'last', 'all' or 'none'");
    const int64_t V = model.config().n_vocab;
    const bool all = logits == "all";
    pybind11::array_t<float> out;
    float* o = nullptr;
    if (logits != "none") {
        if (all) out = pybind11::array_t<float>({n, V});
        else out = pybind11::array_t<float>({V});
        o = out.mutable_data();
    }
    const int32_t* tok = tokens.data();
    {
        pybind11::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mu);
        model.forward(st, tok, n, o, all, n_batch);
    }
    if (!o) return pybind11::none();
    return std::move(out);
}

// Defines forward(state, tokens, logits='last', n_batch=256) on a model class whose Python object holds
// `model` (the C++ model) and `mu` (its mutex): the same signature and text on the CPU and CUDA classes.
template <typename PyModelT, typename StateT, typename Cls>
void def_forward(Cls& cls) {
    cls.def(
        "forward",
        [](PyModelT& pm, StateT& st,
           const pybind11::array_t<int32_t, pybind11::array::c_style | pybind11::array::forcecast>& tokens,
           const std::string& logits, int64_t n_batch) {
            return forward_py(*pm.model, pm.mu, st, tokens, logits, n_batch);
        },
        pybind11::arg("state"), pybind11::arg("tokens"), pybind11::arg("logits") = "last",
        pybind11::arg("n_batch") = 256,
        "Run tokens through the model at state.pos; float32 logits of the last token [n_vocab], of every "
        "token [n, n_vocab] (logits='all') or None.");
}

// rollback(state, n_keep) and eval_mtp(tokens) of speculative decoding: the same signature, checks and text on
// the CPU and CUDA classes (their verify and mtp_draft differ: the CUDA ones can return device argmaxes).
template <typename PyModelT, typename StateT, typename Cls>
void def_rollback_and_eval_mtp(Cls& cls) {
    cls.def(
           "rollback",
           [](PyModelT& pm, StateT& st, int64_t n_keep) {
               pybind11::gil_scoped_release release;
               std::lock_guard<std::mutex> lock(pm.mu);
               pm.model->rollback(st, n_keep);
           },
           pybind11::arg("state"), pybind11::arg("n_keep"),
           "After verify(): the state as if only the first n_keep tokens had been fed (bit-identical).")
        .def(
            "eval_mtp",
            [](PyModelT& pm, const pybind11::array_t<int32_t, pybind11::array::c_style | pybind11::array::forcecast>& tokens) {
                if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be a 1-D array");
                const int64_t n = tokens.shape(0);
                if (n < 2) throw std::invalid_argument("eval_mtp needs at least two tokens");
                pybind11::array_t<float> out({n - 1, (int64_t)pm.model->config().n_vocab});
                float* o = out.mutable_data();
                const int32_t* tok = tokens.data();
                {
                    pybind11::gil_scoped_release release;
                    std::lock_guard<std::mutex> lock(pm.mu);
                    pm.model->eval_mtp(tok, n, o);
                }
                return out;
            },
            pybind11::arg("tokens"),
            "MTP draft logits of a fresh sequence: row t = logits for tokens[t + 2] given tokens[0..t+1].");
}

}  // namespace pq
