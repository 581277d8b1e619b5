// bind_attention.cpp: numpy-level entry points of the attention kernels (ops_attention.h), for tests
// (registered in the `testing` submodule, see bindings.cpp).
// Each call copies its inputs to the device, runs, synchronises and copies the results back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../host_api.h"
#include "../ops_attention.h"
#include "device_buffer.h"

namespace py = pybind11;

namespace pq::cuda_bind {

namespace {

struct Heads {
    int64_t n;
    int H, Hkv, D;
};

Heads heads_of(const F32Array& qg, const F32Array& k, const F32Array& v) {
    if (qg.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3) throw std::invalid_argument("qg [n,H,2D], k and v [n,Hkv,D]");
    Heads h{qg.shape(0), (int)qg.shape(1), (int)k.shape(1), (int)k.shape(2)};
    if (qg.shape(2) != 2 * h.D || k.shape(0) != h.n || v.shape(0) != h.n || v.shape(1) != h.Hkv || v.shape(2) != h.D)
        throw std::invalid_argument("qg [n,H,2D], k and v [n,Hkv,D] disagree");
    return h;
}

void need_vec(const F32Array& w, int D, const char* name) {
    if (w.ndim() != 1 || w.shape(0) != D) throw std::invalid_argument(std::string(name) + " must hold D floats");
}

// (qg, k) after q/k RMSNorm + RoPE, no cache append.
py::tuple attention_prepare(const F32Array& qg, const F32Array& k, const F32Array& v, const F32Array& q_norm,
                            const F32Array& k_norm, int64_t pos0, int n_rot, float rope_base, float eps) {
    const Heads h = heads_of(qg, k, v);
    need_vec(q_norm, h.D, "q_norm");
    need_vec(k_norm, h.D, "k_norm");
    auto dq = DeviceBuffer::from(qg), dk = DeviceBuffer::from(k), dv = DeviceBuffer::from(v);
    auto dqn = DeviceBuffer::from(q_norm), dkn = DeviceBuffer::from(k_norm);
    finish(pq::cuda::attention_prepare(dq.as<float>(), dk.as<float>(), dv.as<float>(), dqn.as<float>(),
                                       dkn.as<float>(), nullptr, nullptr, pos0, h.n, h.H, h.Hkv, h.D, n_rot,
                                       rope_base, eps, nullptr),
           "attention_prepare");
    F32Array qo({(py::ssize_t)h.n, (py::ssize_t)h.H, (py::ssize_t)(2 * h.D)});
    F32Array ko({(py::ssize_t)h.n, (py::ssize_t)h.Hkv, (py::ssize_t)h.D});
    dq.download(qo.mutable_data());
    dk.download(ko.mutable_data());
    return py::make_tuple(qo, ko);
}

// (out [n, H*D], qg, k, k_cache, v_cache) after the whole attention core. The scratch is allocated with
// exactly attention_scratch_bytes_ex bytes plus a canary tail that must stay untouched.
py::tuple attention(const F32Array& qg, const F32Array& k, const F32Array& v, const F32Array& q_norm,
                    const F32Array& k_norm, const py::array& k_cache, const py::array& v_cache, int64_t pos0,
                    int n_rot, float rope_base, float eps, int64_t decode_split, int64_t prefill_split,
                    bool force_prefill) {
    const Heads h = heads_of(qg, k, v);
    need_vec(q_norm, h.D, "q_norm");
    need_vec(k_norm, h.D, "k_norm");
    F16Bits kc = f16_bits(k_cache, "k_cache"), vc = f16_bits(v_cache, "v_cache");
    if (kc.ndim() != 3 || kc.shape(1) != h.Hkv || kc.shape(2) != h.D || vc.ndim() != 3 ||
        vc.shape(0) != kc.shape(0) || vc.shape(1) != h.Hkv || vc.shape(2) != h.D)
        throw std::invalid_argument("caches must be [n_ctx, Hkv, D] float16");
    const int64_t n_ctx = kc.shape(0);
    pq::cuda::AttentionTuning tune;
    tune.decode_split = decode_split;
    tune.prefill_split = prefill_split;
    tune.force_prefill = force_prefill;

    auto dq = DeviceBuffer::from(qg), dk = DeviceBuffer::from(k), dv = DeviceBuffer::from(v);
    auto dqn = DeviceBuffer::from(q_norm), dkn = DeviceBuffer::from(k_norm);
    auto dkc = DeviceBuffer::from(kc), dvc = DeviceBuffer::from(vc);
    DeviceBuffer dout(sizeof(float) * (size_t)(h.n * h.H * h.D));
    const size_t scratch_bytes = pq::cuda::attention_scratch_bytes_ex(h.H, h.Hkv, h.D, h.n, n_ctx, tune);
    constexpr size_t kCanary = 4096;
    DeviceBuffer scratch(scratch_bytes + kCanary);
    std::vector<uint8_t> canary(kCanary, 0xA5);
    scratch.upload(canary.data(), kCanary, scratch_bytes);
    finish(pq::cuda::attention_ex(dq.as<float>(), dk.as<float>(), dv.as<float>(), dqn.as<float>(),
                                  dkn.as<float>(), dkc.as<uint16_t>(), dvc.as<uint16_t>(), n_ctx, pos0, h.n, h.H,
                                  h.Hkv, h.D, n_rot, rope_base, eps, dout.as<float>(), scratch.as<void>(), nullptr,
                                  tune),
           "attention");
    std::vector<uint8_t> tail(kCanary);
    scratch.download(tail.data(), kCanary, scratch_bytes);
    for (uint8_t b : tail)
        if (b != 0xA5) throw std::runtime_error("attention wrote past attention_scratch_bytes");

    F32Array out({(py::ssize_t)h.n, (py::ssize_t)(h.H * h.D)});
    F32Array qo({(py::ssize_t)h.n, (py::ssize_t)h.H, (py::ssize_t)(2 * h.D)});
    F32Array ko({(py::ssize_t)h.n, (py::ssize_t)h.Hkv, (py::ssize_t)h.D});
    F16Bits kco(kc.request().shape), vco(vc.request().shape);
    dout.download(out.mutable_data());
    dq.download(qo.mutable_data());
    dk.download(ko.mutable_data());
    dkc.download(kco.mutable_data());
    dvc.download(vco.mutable_data());
    return py::make_tuple(out, qo, ko, as_f16(kco), as_f16(vco));
}

}  // namespace

void bind_attention(py::module_& m) {
    m.def("attention", &attention, py::arg("qg"), py::arg("k"), py::arg("v"), py::arg("q_norm"), py::arg("k_norm"),
          py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"), py::arg("n_rot"), py::arg("rope_base"),
          py::arg("eps"), py::arg("decode_split") = 0, py::arg("prefill_split") = 0, py::arg("force_prefill") = false,
          "Gated-attention core (ops_attention.h attention_ex): qg [n,H,2D], k/v [n,Hkv,D] float32, caches "
          "[n_ctx,Hkv,D] float16. Returns (out [n,H*D], qg, k, k_cache, v_cache) after the call.");
    m.def("attention_prepare", &attention_prepare, py::arg("qg"), py::arg("k"), py::arg("v"), py::arg("q_norm"),
          py::arg("k_norm"), py::arg("pos0"), py::arg("n_rot"), py::arg("rope_base"), py::arg("eps"),
          "q/k RMSNorm + NEOX RoPE only (no cache); returns (qg, k).");
    m.def("attention_scratch_bytes", &pq::cuda::attention_scratch_bytes, py::arg("H"), py::arg("Hkv"), py::arg("D"),
          py::arg("n"), py::arg("n_ctx"));
}

}  // namespace pq::cuda_bind
