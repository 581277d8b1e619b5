// bind_matvec.cpp: Python entry points of the matmul family (ops_matvec.h): copy in, run, copy out.
// Built into both pyqwen._cuda and the emulated pyqwen_cuda_emu, in their `testing` submodule (see bindings.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <vector>
#include <stdexcept>
#include <string>
#include <vector>

#include "../host_api.h"
#include "../kernels/matvec_internal.cuh"
#include "../ops_matvec.h"
#include "device_buffer.h"
#include "model_spec.h"

namespace py = pybind11;

namespace pq::cuda_bind {

namespace {

void check_weight(const U8Array& w, int64_t N, const char* name) {
    if (w.ndim() < 1) throw std::invalid_argument(std::string(name) + " must be a byte array");
    if (N < 0 || (N > 0 && w.nbytes() % N != 0))
        throw std::invalid_argument(std::string(name) + ": byte size is not N whole rows");
}

// x: [n_tok, K] float32.
void check_x(const F32Array& x, int64_t K) {
    if (x.ndim() != 2 || x.shape(1) != K) throw std::invalid_argument("x must be [n_tok, K] float32");
}

F32Array matmul(int type, const U8Array& w, int64_t K, int64_t N, const F32Array& x) {
    check_weight(w, N, "w");
    check_x(x, K);
    const int64_t n_tok = x.shape(0);
    auto dw = DeviceBuffer::from(w), dx = DeviceBuffer::from(x);
    DeviceBuffer dy(sizeof(float) * (size_t)(n_tok * N));
    DeviceBuffer scratch(pq::cuda::matmul_scratch_bytes(type, K, N, n_tok));
    finish(pq::cuda::matmul(type, dw.as(), K, N, dx.as<float>(), n_tok, dy.as<float>(), scratch.as(), nullptr),
           "matmul");
    F32Array out({n_tok, N});
    dy.download(out.mutable_data());
    return out;
}

F32Array matmul_swiglu(int type_g, const U8Array& wg, int type_u, const U8Array& wu, int64_t K, int64_t N,
                       const F32Array& x) {
    check_weight(wg, N, "wg");
    check_weight(wu, N, "wu");
    check_x(x, K);
    const int64_t n_tok = x.shape(0);
    auto dg = DeviceBuffer::from(wg), du = DeviceBuffer::from(wu), dx = DeviceBuffer::from(x);
    DeviceBuffer dy(sizeof(float) * (size_t)(n_tok * N));
    const size_t sb = pq::cuda::matmul_scratch_bytes(type_g, K, N, n_tok);
    if (sb != pq::cuda::matmul_scratch_bytes(type_u, K, N, n_tok))
        throw std::logic_error("matmul_scratch_bytes depends on the weight type");
    DeviceBuffer scratch(sb);
    finish(pq::cuda::matmul_swiglu(type_g, dg.as(), type_u, du.as(), K, N, dx.as<float>(), n_tok, dy.as<float>(),
                                   scratch.as(), nullptr),
           "matmul_swiglu");
    F32Array out({n_tok, N});
    dy.download(out.mutable_data());
    return out;
}

F32Array get_rows(int type, const U8Array& w, int64_t K, const I32Array& ids) {
    if (ids.ndim() != 1) throw std::invalid_argument("ids must be 1-D int32");
    const int64_t n = ids.shape(0);
    const size_t row_bytes = pq::tensor_bytes(type, K, 1);
    if (row_bytes == 0 || w.nbytes() % row_bytes != 0) throw std::invalid_argument("w must hold whole rows of K values");
    const int64_t n_rows = (int64_t)(w.nbytes() / row_bytes);  // ids outside [0, n_rows) give NaN rows
    auto dw = DeviceBuffer::from(w), dids = DeviceBuffer::from(ids);
    DeviceBuffer dout(sizeof(float) * (size_t)(n * K));
    finish(pq::cuda::get_rows(type, dw.as(), K, n_rows, dids.as<int32_t>(), n, dout.as<float>(), nullptr),
           "get_rows");
    F32Array out({n, K});
    dout.download(out.mutable_data());
    return out;
}

// Rows [row0, row0 + nrows) of W as the prefill path's fp16 tile (raw float16 bits viewed as float16).
py::array dequant_f16(int type, const U8Array& w, int64_t K, int64_t row0, int64_t nrows) {
    auto dw = DeviceBuffer::from(w);
    DeviceBuffer dout(sizeof(uint16_t) * (size_t)(nrows * K));
    finish(pq::cuda::detail::dequant_rows_f16(type, dw.as(), K, row0, nrows, dout.as<uint16_t>(), nullptr),
           "dequant_f16");
    py::array_t<uint16_t> out({nrows, K});
    dout.download(out.mutable_data());
    return as_f16(out);
}

// Splits a q8 buffer (q8_act_bytes layout) into (qs int8 [n_tok, K], ds float32 [n_tok, K/32, 2]).
py::tuple q8_arrays(const DeviceBuffer& dq, int64_t K, int64_t n_tok) {
    const size_t off = pq::cuda::q8_values_bytes(K, n_tok);
    py::array_t<uint8_t> raw((py::ssize_t)pq::cuda::q8_act_bytes(K, n_tok));
    dq.download(raw.mutable_data());
    py::array_t<int8_t> qs({n_tok, K});
    py::array_t<float> ds({n_tok, K / 32, (int64_t)2});
    std::memcpy(qs.mutable_data(), raw.data(), (size_t)(n_tok * K));
    std::memcpy(ds.mutable_data(), raw.data() + off, sizeof(float) * 2 * (size_t)(n_tok * K / 32));
    return py::make_tuple(qs, ds);
}

// The decode path's Q8_1 activations: (qs int8 [n_tok, K], ds float32 [n_tok, K/32, 2] = (d, s)).
py::tuple quantize_act(const F32Array& x) {
    if (x.ndim() != 2 || x.shape(1) % 32 != 0) throw std::invalid_argument("x must be [n_tok, K], K % 32 == 0");
    const int64_t n_tok = x.shape(0), K = x.shape(1);
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer dq(std::max<size_t>(pq::cuda::q8_act_bytes(K, n_tok), 1));
    finish(pq::cuda::detail::quantize_act(dx.as<float>(), K, n_tok, dq.as(), nullptr), "quantize_act");
    return q8_arrays(dq, K, n_tok);
}

// The MMA twins on fragments: a uint32 [32, 4], b uint32 [32, 2], c int32 [32, 4] -> c + A*B, fragment-wise.
py::array_t<int32_t> mma_s8(const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& a,
                            const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& b,
                            const I32Array& c, bool k16) {
    if (a.ndim() != 2 || a.shape(0) != 32 || a.shape(1) != 4 || b.ndim() != 2 || b.shape(0) != 32 ||
        b.shape(1) != 2 || c.ndim() != 2 || c.shape(0) != 32 || c.shape(1) != 4)
        throw std::invalid_argument("mma_s8: a [32, 4], b [32, 2], c [32, 4]");
    auto da = DeviceBuffer::from(a), db = DeviceBuffer::from(b);
    auto dc = DeviceBuffer::from(c);
    finish(pq::cuda::detail::mma_s8_probe(da.as<uint32_t>(), db.as<uint32_t>(), dc.as<int>(), k16, nullptr), "mma_s8");
    py::array_t<int32_t> out({(py::ssize_t)32, (py::ssize_t)4});
    dc.download(out.mutable_data());
    return out;
}

// The int8 tensor-core prefill matmul on given Q8_1 activations (qs int8 [n_tok, K], ds float32 [n_tok, K/32, 2]
// as quantize_act returns them): y [n_tok, N].
F32Array mmq(int type, const U8Array& w, int64_t K, int64_t N,
             const py::array_t<int8_t, py::array::c_style | py::array::forcecast>& qs, const F32Array& ds) {
    check_weight(w, N, "w");
    if (qs.ndim() != 2 || qs.shape(1) != K || ds.ndim() != 3 || ds.shape(0) != qs.shape(0) || ds.shape(1) != K / 32 ||
        ds.shape(2) != 2)
        throw std::invalid_argument("mmq: qs [n_tok, K] int8, ds [n_tok, K/32, 2] float32");
    const int64_t n_tok = qs.shape(0);
    const size_t off = pq::cuda::detail::quantize_act_ds_offset(K, n_tok);
    std::vector<uint8_t> raw(off + ds.nbytes());
    std::memcpy(raw.data(), qs.data(), (size_t)qs.nbytes());
    std::memcpy(raw.data() + off, ds.data(), (size_t)ds.nbytes());
    auto dw = DeviceBuffer::from(w);
    DeviceBuffer dq(raw.size());
    dq.upload(raw.data(), raw.size());
    DeviceBuffer dy(sizeof(float) * (size_t)(n_tok * N));
    finish(pq::cuda::detail::mmq(type, dw.as(), K, N, dq.as(), n_tok, dy.as<float>(), N, nullptr), "mmq");
    F32Array out({n_tok, N});
    dy.download(out.mutable_data());
    return out;
}


// The fused layer entry: (x + add, rms_norm(x + add) * w, qs, ds). add / w may be None; quantize=False
// passes no Q8_1 buffer (qs, ds are then None).
py::tuple add_rms_norm_q8(const F32Array& x, py::object add, py::object w, float eps, bool quantize) {
    if (x.ndim() != 2) throw std::invalid_argument("x must be [n_tok, K] float32");
    const int64_t n_tok = x.shape(0), K = x.shape(1);
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer da(1), dw(1);
    const float *pa = nullptr, *pw = nullptr;
    if (!add.is_none()) {
        const F32Array a = add.cast<F32Array>();
        if (a.ndim() != 2 || a.shape(0) != n_tok || a.shape(1) != K) throw std::invalid_argument("add must be like x");
        da = DeviceBuffer::from(a);
        pa = da.as<float>();
    }
    if (!w.is_none()) {
        const F32Array ww = w.cast<F32Array>();
        if (ww.ndim() != 1 || ww.shape(0) != K) throw std::invalid_argument("w must be [K] float32");
        dw = DeviceBuffer::from(ww);
        pw = dw.as<float>();
    }
    DeviceBuffer dy(sizeof(float) * (size_t)(n_tok * K));
    DeviceBuffer dq(quantize ? std::max<size_t>(pq::cuda::q8_act_bytes(K, n_tok), 1) : 1);
    finish(pq::cuda::add_rms_norm_q8(dx.as<float>(), pa, pw, dy.as<float>(), quantize ? dq.as() : nullptr, K, n_tok,
                                     eps, nullptr),
           "add_rms_norm_q8");
    F32Array xo({n_tok, K}), yo({n_tok, K});
    dx.download(xo.mutable_data());
    dy.download(yo.mutable_data());
    if (!quantize) return py::make_tuple(xo, yo, py::none(), py::none());
    const py::tuple q = q8_arrays(dq, K, n_tok);
    return py::make_tuple(xo, yo, q[0], q[1]);
}

// matmul_prepared: parts = [(w bytes, N), ...] of one type; x quantized by quantize_act_q8 first (as the
// model does); returns one [n_tok, N] array per part.
py::list matmul_prepared(int type, const py::list& parts, int64_t K, const F32Array& x) {
    check_x(x, K);
    const int64_t n_tok = x.shape(0);
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer dq(std::max<size_t>(pq::cuda::q8_act_bytes(K, n_tok), 1));
    if (pq::cuda::matmul_reads_q8(type))
        finish(pq::cuda::quantize_act_q8(dx.as<float>(), K, n_tok, dq.as(), nullptr), "quantize_act_q8");
    std::vector<DeviceBuffer> dws, dys;
    std::vector<pq::cuda::MatmulPart> mp;
    std::vector<int64_t> ns;
    for (const py::handle& h : parts) {
        const py::tuple t = h.cast<py::tuple>();
        const U8Array w = t[0].cast<U8Array>();
        const int64_t N = t[1].cast<int64_t>();
        check_weight(w, N, "w");
        dws.push_back(DeviceBuffer::from(w));
        dys.emplace_back(sizeof(float) * (size_t)std::max<int64_t>(n_tok * N, 1));
        ns.push_back(N);
    }
    for (size_t i = 0; i < ns.size(); ++i) mp.push_back({dws[i].as(), ns[i], dys[i].as<float>()});
    finish(pq::cuda::matmul_prepared(type, mp.data(), (int)mp.size(), K, dx.as<float>(), dq.as(), n_tok, nullptr),
           "matmul_prepared");
    py::list out;
    for (size_t i = 0; i < ns.size(); ++i) {
        F32Array y({n_tok, ns[i]});
        dys[i].download(y.mutable_data());
        out.append(y);
    }
    return out;
}

// One matmul with the conv epilogue (MatmulPart conv_*): (y [n_tok, N], conv_y [n_tok, N], new state).
py::tuple matmul_prepared_conv(int type, const U8Array& w, int64_t N, int64_t K, const F32Array& x,
                               const F32Array& conv_w, const F32Array& state) {
    check_weight(w, N, "w");
    check_x(x, K);
    if (conv_w.ndim() != 2 || conv_w.shape(0) != N || state.ndim() != 2 || state.shape(0) != N ||
        state.shape(1) != conv_w.shape(1) - 1)
        throw std::invalid_argument("conv_w [N, K], state [N, K - 1]");
    const int64_t n_tok = x.shape(0);
    const int ck = (int)conv_w.shape(1);
    auto dw = DeviceBuffer::from(w), dx = DeviceBuffer::from(x), dcw = DeviceBuffer::from(conv_w);
    auto dst = DeviceBuffer::from(state);
    DeviceBuffer dq(std::max<size_t>(pq::cuda::q8_act_bytes(K, n_tok), 1));
    if (pq::cuda::matmul_reads_q8(type))
        finish(pq::cuda::quantize_act_q8(dx.as<float>(), K, n_tok, dq.as(), nullptr), "quantize_act_q8");
    DeviceBuffer dy(sizeof(float) * (size_t)(n_tok * N)), dcy(sizeof(float) * (size_t)(n_tok * N));
    pq::cuda::MatmulPart part{dw.as(), N, dy.as<float>()};
    part.conv_w = dcw.as<float>();
    part.conv_state = dst.as<float>();
    part.conv_y = dcy.as<float>();
    part.conv_k = ck;
    finish(pq::cuda::matmul_prepared(type, &part, 1, K, dx.as<float>(), dq.as(), n_tok, nullptr), "matmul_prepared");
    F32Array y({n_tok, N}), cy({n_tok, N}), st({N, (int64_t)ck - 1});
    dy.download(y.mutable_data());
    dcy.download(cy.mutable_data());
    if (ck > 1) dst.download(st.mutable_data());
    return py::make_tuple(y, cy, st);
}

// One matmul with the layer entry as its epilogue (NormTail): y = W x, then x_res += y, out = rms_norm(x_res)
// * norm_w, its Q8_1. Returns (y, x_res, out, qs, ds, counter after the call); qs, ds None without quantize.
py::tuple matmul_prepared_norm(int type, const U8Array& w, int64_t N, int64_t K, const F32Array& x,
                               const F32Array& res, py::object norm_w, float eps, bool quantize) {
    check_weight(w, N, "w");
    check_x(x, K);
    const int64_t n_tok = x.shape(0);
    if (res.ndim() != 2 || res.shape(0) != n_tok || res.shape(1) != N) throw std::invalid_argument("res must be [n_tok, N]");
    auto dw = DeviceBuffer::from(w), dx = DeviceBuffer::from(x), dres = DeviceBuffer::from(res);
    DeviceBuffer dnw(1);
    const float* pnw = nullptr;
    if (!norm_w.is_none()) {
        const F32Array nw = norm_w.cast<F32Array>();
        if (nw.ndim() != 1 || nw.shape(0) != N) throw std::invalid_argument("norm_w must be [N] float32");
        dnw = DeviceBuffer::from(nw);
        pnw = dnw.as<float>();
    }
    DeviceBuffer dq(std::max<size_t>(pq::cuda::q8_act_bytes(K, n_tok), 1));
    if (pq::cuda::matmul_reads_q8(type))
        finish(pq::cuda::quantize_act_q8(dx.as<float>(), K, n_tok, dq.as(), nullptr), "quantize_act_q8");
    DeviceBuffer dy(sizeof(float) * (size_t)(n_tok * N)), dout(sizeof(float) * (size_t)(n_tok * N));
    DeviceBuffer dnq(std::max<size_t>(pq::cuda::q8_act_bytes(N, n_tok), 1));
    DeviceBuffer dcnt(sizeof(unsigned));
    const unsigned zero = 0;
    dcnt.upload(&zero, sizeof zero);
    pq::cuda::MatmulPart part{dw.as(), N, dy.as<float>()};
    const pq::cuda::NormTail tail{dres.as<float>(), pnw, dout.as<float>(), quantize ? dnq.as() : nullptr,
                                  dcnt.as<unsigned>(), eps};
    finish(pq::cuda::matmul_prepared(type, &part, 1, K, dx.as<float>(), dq.as(), n_tok, nullptr, &tail),
           "matmul_prepared");
    F32Array y({n_tok, N}), xr({n_tok, N}), out({n_tok, N});
    dy.download(y.mutable_data());
    dres.download(xr.mutable_data());
    dout.download(out.mutable_data());
    unsigned cnt = 0;
    dcnt.download(&cnt, sizeof cnt);
    if (!quantize) return py::make_tuple(y, xr, out, py::none(), py::none(), cnt);
    const py::tuple q = q8_arrays(dnq, N, n_tok);
    return py::make_tuple(y, xr, out, q[0], q[1], cnt);
}

}  // namespace

void bind_matvec(py::module_& m) {
    m.def("matmul_prepared_norm", &matmul_prepared_norm, py::arg("type"), py::arg("w"), py::arg("N"), py::arg("K"),
          py::arg("x"), py::arg("res"), py::arg("norm_w") = py::none(), py::arg("eps") = 1e-6f,
          py::arg("quantize") = true,
          "A matmul with the next layer entry (residual add + RMSNorm + Q8_1) as its epilogue: "
          "(y, res + y, normed, qs, ds, counter).");
    m.def("matmul_prepared_conv", &matmul_prepared_conv, py::arg("type"), py::arg("w"), py::arg("N"), py::arg("K"),
          py::arg("x"), py::arg("conv_w"), py::arg("state"),
          "A matmul with the DeltaNet conv + SiLU as its epilogue: (y, conv_y, new conv state).");
    m.def("add_rms_norm_q8", &add_rms_norm_q8, py::arg("x"), py::arg("add") = py::none(), py::arg("w") = py::none(),
          py::arg("eps") = 1e-6f, py::arg("quantize") = true,
          "The decode path's fused layer entry: (x + add, rms_norm(x + add) * w, qs, ds).");
    m.def("matmul_prepared", &matmul_prepared, py::arg("type"), py::arg("parts"), py::arg("K"), py::arg("x"),
          "Several matmuls [(w bytes, N), ...] of one type on x's shared Q8_1 activations, one launch.");
    m.def("matmul", &matmul, py::arg("type"), py::arg("w"), py::arg("K"), py::arg("N"), py::arg("x"),
          "y[n_tok, N] = x[n_tok, K] @ W^T for N rows of K values in GGUF type `type` (raw bytes).");
    m.def("matmul_swiglu", &matmul_swiglu, py::arg("type_g"), py::arg("wg"), py::arg("type_u"), py::arg("wu"),
          py::arg("K"), py::arg("N"), py::arg("x"), "silu(x @ Wg^T) * (x @ Wu^T).");
    m.def("get_rows", &get_rows, py::arg("type"), py::arg("w"), py::arg("K"), py::arg("ids"),
          "Rows ids of W dequantized to float32, shape (len(ids), K).");
    m.def("dequant_f16", &dequant_f16, py::arg("type"), py::arg("w"), py::arg("K"), py::arg("row0"), py::arg("nrows"),
          "Debug: rows of W as the prefill path's fp16 weight tile, float16 (nrows, K).");
    m.def("quantize_act", &quantize_act, py::arg("x"),
          "Debug: the decode path's Q8_1 activations of x [n_tok, K]: (qs int8 [n_tok, K], ds [n_tok, K/32, 2]).");
    m.def("_set_prefill_tile_values", &pq::cuda::detail::set_prefill_tile_values, py::arg("values"),
          "Test hook: fp16 values per prefill weight tile (0 = default), to exercise several tiles.");
    m.def("_set_prefill_overlap", &pq::cuda::detail::set_prefill_overlap, py::arg("enabled"),
          "Test hook: False runs the prefill weight tiles serially on one stream (the reference order).");
    m.def("_set_prefill_overlap_fault", &pq::cuda::detail::set_prefill_overlap_fault, py::arg("fault"),
          "Test hook: plant an ordering bug in the overlapped tiles (1: GEMM does not wait for its tile, "
          "2: dequantization does not wait for the GEMM that read its buffer; 0: none).");
    m.def("_set_prefill_blas_disabled", &pq::cuda::detail::set_prefill_blas_disabled, py::arg("disabled"),
          "Test hook: make the prefill path behave as in a build without cuBLAS (decode-kernel fallback).");
    m.def("mma_s8", &mma_s8, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("k16") = false,
          "Debug: one warp's mma m16n8k32 (k16: m16n8k16) s8 on per-lane fragments a [32,4], b [32,2], c [32,4].");
    m.def("mmq", &mmq, py::arg("type"), py::arg("w"), py::arg("K"), py::arg("N"), py::arg("qs"), py::arg("ds"),
          "Debug: the int8 tensor-core prefill matmul on given Q8_1 activations (qs [n_tok,K], ds [n_tok,K/32,2]).");
    m.def("mmq_type_ok", &pq::cuda::mmq_type_ok, py::arg("type"), py::arg("K"),
          "Whether the prefill matmul of (type, K) runs on the int8 tensor-core kernel.");
    m.def("_set_prefill_mmq_disabled", &pq::cuda::detail::set_prefill_mmq_disabled, py::arg("disabled"),
          "Test hook: prefill of every type takes the fp16 dequantize + cuBLAS path.");
    m.def("matmul_scratch_bytes", &pq::cuda::matmul_scratch_bytes, py::arg("type"), py::arg("K"), py::arg("N"),
          py::arg("n_tok"), "Device scratch bytes of matmul / matmul_swiglu.");
}

}  // namespace pq::cuda_bind
