// bind_gdn.cpp: Python entry points of the Gated DeltaNet kernels (cuda/ops_gdn.h), for tests and
// debugging: each call copies its numpy inputs to the device, runs the op, synchronises and copies back.
// Built into both pyqwen._cuda and the emulated pyqwen_cuda_emu, in their `testing` submodule (see bindings.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <vector>

#include "../host_api.h"
#include "../ops_gdn.h"
#include "../ops_matvec.h"  // q8_act_bytes
#include "device_buffer.h"

namespace py = pybind11;

namespace pq::cuda_bind {

namespace {

// x [n, C], w [C, K], state [C, K-1] -> (y [n, C], new state [C, K-1]).
py::tuple conv1d_silu(const F32Array& x, const F32Array& w, const F32Array& state) {
    need(x.ndim() == 2 && w.ndim() == 2 && state.ndim() == 2, "x [n, C], w [C, K], state [C, K-1]");
    const int64_t n = x.shape(0), C = x.shape(1), K = w.shape(1);
    need(w.shape(0) == C && state.shape(0) == C && state.shape(1) == K - 1, "shape mismatch");
    auto dx = DeviceBuffer::from(x), dw = DeviceBuffer::from(w), ds = DeviceBuffer::from(state);
    DeviceBuffer dy(sizeof(float) * (size_t)(n * C));
    finish(pq::cuda::conv1d_silu(dx.as<float>(), dw.as<float>(), ds.as<float>(), dy.as<float>(), C, (int)K, n,
                                 nullptr),
           "conv1d_silu");
    F32Array y({n, C}), st({C, K - 1});
    dy.download(y.mutable_data());
    ds.download(st.mutable_data());
    return py::make_tuple(y, st);
}

// The layer tail after the conv (ops_gdn.h gdn): shapes from the arrays, nk given.
py::tuple gdn(const F32Array& y, const F32Array& alpha, const F32Array& b, const F32Array& ssm_a,
              const F32Array& dt_bias, const F32Array& S, const F32Array& z, const F32Array& norm_w, int nk,
              float eps) {
    need(S.ndim() == 3, "S must be [nv, dv, dk]");
    const int64_t nv = S.shape(0), dv = S.shape(1), dk = S.shape(2);
    need(y.ndim() == 2, "y must be [n, C]");
    const int64_t n = y.shape(0);
    need(nk > 0 && y.shape(1) == 2 * nk * dk + nv * dv, "y must be [n, 2*nk*dk + nv*dv]");
    need(alpha.ndim() == 2 && alpha.shape(0) == n && alpha.shape(1) == nv, "alpha must be [n, nv]");
    need(b.ndim() == 2 && b.shape(0) == n && b.shape(1) == nv, "b must be [n, nv]");
    need(ssm_a.size() == nv && dt_bias.size() == nv, "ssm_a and dt_bias must hold nv values");
    need(z.ndim() == 2 && z.shape(0) == n && z.shape(1) == nv * dv, "z must be [n, nv*dv]");
    need(norm_w.size() == dv, "norm_w must hold dv values");
    auto dy = DeviceBuffer::from(y), dal = DeviceBuffer::from(alpha), db = DeviceBuffer::from(b);
    auto da = DeviceBuffer::from(ssm_a), ddt = DeviceBuffer::from(dt_bias), dS = DeviceBuffer::from(S);
    auto dz = DeviceBuffer::from(z), dw = DeviceBuffer::from(norm_w);
    DeviceBuffer dout(sizeof(float) * (size_t)(n * nv * dv));
    DeviceBuffer scratch(pq::cuda::gdn_scratch_bytes(nk, (int)nv, (int)dk, (int)dv, n));
    finish(pq::cuda::gdn(dy.as<float>(), dal.as<float>(), db.as<float>(), da.as<float>(), ddt.as<float>(),
                         dS.as<float>(), dz.as<float>(), dw.as<float>(), dout.as<float>(), nk, (int)nv, (int)dk,
                         (int)dv, n, eps, scratch.as<void>(), nullptr),
           "gdn");
    F32Array out({n, nv * dv}), S_new({nv, dv, dk});
    dout.download(out.mutable_data());
    dS.download(S_new.mutable_data());
    return py::make_tuple(out, S_new);
}

// The decode step through gdn_decode_q8 (one token): spread -> per-head counters (the head's rows over
// several blocks); quantize -> out's Q8_1 too. Returns (out [nv*dv], new S, qs or None, ds or None, the
// counters after the launch or None).
py::tuple gdn_decode_q8(const F32Array& y, const F32Array& alpha, const F32Array& b, const F32Array& ssm_a,
                        const F32Array& dt_bias, const F32Array& S, const F32Array& z, const F32Array& norm_w, int nk,
                        float eps, bool spread, bool quantize) {
    need(S.ndim() == 3, "S must be [nv, dv, dk]");
    const int64_t nv = S.shape(0), dv = S.shape(1), dk = S.shape(2);
    need(nk > 0 && y.size() == 2 * nk * dk + nv * dv, "y must hold 2*nk*dk + nv*dv values");
    need(alpha.size() == nv && b.size() == nv && ssm_a.size() == nv && dt_bias.size() == nv, "nv values each");
    need(z.size() == nv * dv && norm_w.size() == dv, "z [nv*dv], norm_w [dv]");
    const int64_t D = nv * dv;
    auto dy = DeviceBuffer::from(y), dal = DeviceBuffer::from(alpha), db = DeviceBuffer::from(b);
    auto da = DeviceBuffer::from(ssm_a), ddt = DeviceBuffer::from(dt_bias), dS = DeviceBuffer::from(S);
    auto dz = DeviceBuffer::from(z), dw = DeviceBuffer::from(norm_w);
    DeviceBuffer dout(sizeof(float) * (size_t)D);
    DeviceBuffer dq(quantize ? pq::cuda::q8_act_bytes(D, 1) : 1);
    DeviceBuffer dc(sizeof(unsigned) * (size_t)nv);
    std::vector<unsigned> zeros((size_t)nv, 0u);
    dc.upload(zeros.data(), zeros.size() * sizeof(unsigned));
    auto* qs = quantize ? dq.as<int8_t>() : nullptr;
    auto* ds = quantize ? reinterpret_cast<float*>(dq.as<char>() + pq::cuda::q8_values_bytes(D, 1)) : nullptr;
    finish(pq::cuda::gdn_decode_q8(dy.as<float>(), dal.as<float>(), db.as<float>(), da.as<float>(), ddt.as<float>(),
                                   dS.as<float>(), dz.as<float>(), dw.as<float>(), dout.as<float>(), nk, (int)nv,
                                   (int)dk, (int)dv, eps, qs, ds, spread ? dc.as<unsigned>() : nullptr, nullptr),
           "gdn_decode_q8");
    F32Array out({D}), S_new({nv, dv, dk});
    dout.download(out.mutable_data());
    dS.download(S_new.mutable_data());
    py::object pqs = py::none(), pds = py::none(), pc = py::none();
    if (quantize) {
        py::array_t<int8_t> a({D});
        py::array_t<float> d({D / 32, (int64_t)2});
        dq.download(a.mutable_data(), (size_t)D);
        dq.download(d.mutable_data(), sizeof(float) * (size_t)D / 16, pq::cuda::q8_values_bytes(D, 1));
        pqs = a;
        pds = d;
    }
    if (spread) {
        py::array_t<uint32_t> c({nv});
        dc.download(c.mutable_data());
        pc = c;
    }
    return py::make_tuple(out, S_new, pqs, pds, pc);
}

}  // namespace

void bind_gdn(py::module_& m) {
    m.def("gdn_decode_q8", &gdn_decode_q8, py::arg("y"), py::arg("alpha"), py::arg("b"), py::arg("ssm_a"),
          py::arg("dt_bias"), py::arg("S"), py::arg("z"), py::arg("norm_w"), py::arg("nk"), py::arg("eps") = 1e-6f,
          py::arg("spread") = true, py::arg("quantize") = true,
          "One decode step of the DeltaNet tail with its output's Q8_1 and the head rows spread over blocks: "
          "(out, new S, qs, ds, counters).");
    m.def("conv1d_silu", &conv1d_silu, py::arg("x"), py::arg("w"), py::arg("state"),
          "Causal depthwise conv + SiLU: x [n, C], w [C, K], state [C, K-1] -> (y [n, C], new state).");
    m.def("gdn", &gdn, py::arg("y"), py::arg("alpha"), py::arg("b"), py::arg("ssm_a"), py::arg("dt_bias"),
          py::arg("S"), py::arg("z"), py::arg("norm_w"), py::arg("nk"), py::arg("eps") = 1e-6f,
          "Gated DeltaNet layer tail after the conv (n == 1: decode step, n > 1: chunked); S [nv, dv, dk]. "
          "Returns (out [n, nv*dv], new S).");
    m.def("gdn_scratch_bytes", &pq::cuda::gdn_scratch_bytes, py::arg("nk"), py::arg("nv"), py::arg("dk"),
          py::arg("dv"), py::arg("n"), "Scratch bytes gdn needs for n tokens.");
}

}  // namespace pq::cuda_bind
