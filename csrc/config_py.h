// config_py.h: the config dict both Python model classes (_core.Model, _cuda.CudaModel) take and give.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "config.h"

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
    c.recurrent = get<std::vector<bool>>(d, "recurrent");
    c.n_head = get<int>(d, "n_head");
    c.n_head_kv = get<int>(d, "n_head_kv");
    c.head_dim = get<int>(d, "head_dim");
    c.n_rot = get<int>(d, "n_rot");
    c.rope_base = get<float>(d, "rope_base");
    c.ssm_conv = get<int>(d, "ssm_conv");
    c.ssm_k_heads = get<int>(d, "ssm_k_heads");
    c.ssm_v_heads = get<int>(d, "ssm_v_heads");
    c.ssm_k_dim = get<int>(d, "ssm_k_dim");
    c.ssm_v_dim = get<int>(d, "ssm_v_dim");
    c.rms_eps = get<float>(d, "rms_eps");
    if (c.n_layer <= 0 || c.n_layer > 4096) throw std::invalid_argument("n_layer out of range");
    if ((int)c.recurrent.size() != c.n_layer) throw std::invalid_argument("recurrent[] length != n_layer");
    return c;
}

inline pybind11::dict config_to_dict(const Config& c) {
    pybind11::dict d;
    d["n_embd"] = c.n_embd;
    d["n_ff"] = c.n_ff;
    d["n_vocab"] = c.n_vocab;
    d["n_layer"] = c.n_layer;
    d["recurrent"] = c.recurrent;
    d["n_head"] = c.n_head;
    d["n_head_kv"] = c.n_head_kv;
    d["head_dim"] = c.head_dim;
    d["n_rot"] = c.n_rot;
    d["rope_base"] = c.rope_base;
    d["ssm_conv"] = c.ssm_conv;
    d["ssm_k_heads"] = c.ssm_k_heads;
    d["ssm_v_heads"] = c.ssm_v_heads;
    d["ssm_k_dim"] = c.ssm_k_dim;
    d["ssm_v_dim"] = c.ssm_v_dim;
    d["rms_eps"] = c.rms_eps;
    return d;
}

}  // namespace pq
