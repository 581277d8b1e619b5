// bindings.cpp: the CUDA module, one source for two modules:
//   pyqwen._cuda     -- g++ + the CUDA runtime, kernels from nvcc (cuda/CMakeLists.txt)
//   pyqwen_cuda_emu  -- g++ with -DPQ_CUDA_EMU, kernels run by the CPU emulator (tests/cuda/emu_build.py)
// The top level is the production API (CudaModel and friends from bind_model.cpp, device_count,
// mem_get_info). The submodule `testing` holds the numpy-level kernel entry points (these here and the
// families' bind_*.cpp): each call copies its inputs to device memory, runs the op, synchronises and
// copies the result back -- test/debug entry points, not the inference path (which keeps tensors on the
// device).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // node_ledger: a dict

#include <stdexcept>
#include <string>

#include "../blas.h"
#include "../host_api.h"
#include "../ops.h"
#include "device_buffer.h"
#include "py_testing.h"

#ifndef PQ_CUDA_MODULE_NAME
#define PQ_CUDA_MODULE_NAME _cuda
#endif

#if defined(PQ_CUDA_EMU)
#include "../emu/emu_control.h"
#endif

namespace py = pybind11;

namespace pq::cuda_bind {

namespace {

// A (rows, ncols) view of a C-contiguous 1-D or 2-D array: ncols < row length gives strided rows, which
// exercises the kernels' stride arguments.
struct Rows {
    int64_t rows, len, ncols;
};

Rows rows_of(const py::array& a, int64_t ncols) {
    if (a.ndim() != 1 && a.ndim() != 2) throw std::invalid_argument("expected a 1-D or 2-D array");
    Rows r;
    r.rows = a.ndim() == 2 ? a.shape(0) : 1;
    r.len = a.ndim() == 2 ? a.shape(1) : a.shape(0);
    r.ncols = ncols < 0 ? r.len : ncols;
    if (r.ncols > r.len) throw std::invalid_argument("ncols larger than the row length");
    return r;
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // no driver or no device: an answer, not an error
        return 0;
    }
    return n;
}

// (count, why): why is "" when the query worked, else the runtime's error name and text -- so that a
// driver too old for this runtime (cudaErrorInsufficientDriver: the static CUDA runtime needs a driver at
// least as new as itself) is reported instead of looking like a machine without a GPU.
py::tuple device_query() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess) return py::make_tuple(n, std::string());
    cudaGetLastError();
    return py::make_tuple(0, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
}

// cuBLAS handle + workspace + warm-up on `device` before the memory plan is made (blas.h). False when
// the build has no cuBLAS.
bool init_blas(int device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    const cudaError_t e = pq::cuda::blas_init();
    if (e == cudaErrorNotSupported) return false;
    check(e, "cuBLAS initialisation");
    return true;
}

F32Array rms_norm(const F32Array& x, const py::object& w_obj, float eps, int64_t ncols) {
    const Rows r = rows_of(x, ncols);
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer dy(sizeof(float) * r.rows * r.ncols);
    DeviceBuffer dw;  // none: no weight (as<float>() is nullptr)
    if (!w_obj.is_none()) {
        F32Array w = F32Array::ensure(w_obj);
        if (!w || w.size() != r.ncols) throw std::invalid_argument("weight must hold ncols floats");
        dw = DeviceBuffer::from(w);
    }
    finish(pq::cuda::rms_norm_f32(dx.as<float>(), dw.as<float>(), dy.as<float>(), (int)r.ncols,
                                  (int)r.rows, r.len, r.ncols, eps, nullptr),
           "rms_norm");
    F32Array out({r.rows, r.ncols});
    dy.download(out.mutable_data());
    return out;
}

U8Array quantize_q8_1(const F32Array& x, int64_t ncols) {
    const Rows r = rows_of(x, ncols);
    const int64_t nb = (r.ncols + 31) / 32;
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer dy(pq::cuda::kQ8_1BlockBytes * (size_t)(r.rows * nb));
    finish(pq::cuda::quantize_q8_1(dx.as<float>(), dy.as<void>(), (int)r.ncols, (int)r.rows, r.len, nullptr),
           "quantize_q8_1");
    U8Array out({r.rows, nb * (int64_t)pq::cuda::kQ8_1BlockBytes});
    dy.download(out.mutable_data());
    return out;
}

F32Array swiglu(const F32Array& g, const F32Array& u) {
    if (g.ndim() != u.ndim() || g.size() != u.size()) throw std::invalid_argument("gate and up differ in shape");
    const Rows r = rows_of(g, -1);
    auto dg = DeviceBuffer::from(g);
    auto du = DeviceBuffer::from(u);
    DeviceBuffer dy(sizeof(float) * r.rows * r.ncols);
    finish(pq::cuda::swiglu_f32(dg.as<float>(), du.as<float>(), dy.as<float>(), (int)r.ncols, (int)r.rows, r.len,
                                r.len, r.ncols, nullptr),
           "swiglu");
    F32Array out({r.rows, r.ncols});
    dy.download(out.mutable_data());
    return out;
}

// in_place=True runs y = a + b with y aliasing a, the way the residual stream is updated.
F32Array add(const F32Array& a, const F32Array& b, bool in_place) {
    if (a.size() != b.size()) throw std::invalid_argument("a and b differ in size");
    auto da = DeviceBuffer::from(a);
    auto db = DeviceBuffer::from(b);
    DeviceBuffer dy(in_place ? 0 : sizeof(float) * a.size());
    float* y = in_place ? da.as<float>() : dy.as<float>();
    finish(pq::cuda::add_f32(da.as<float>(), db.as<float>(), y, a.size(), nullptr), "add");
    F32Array out(a.size());
    (in_place ? da : dy).download(out.mutable_data());
    return out;
}

I32Array argmax(const F32Array& x) {
    const Rows r = rows_of(x, -1);
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer dout(sizeof(int32_t) * r.rows);
    DeviceBuffer work(pq::cuda::argmax_workspace_bytes(r.len, (int)r.rows));
    finish(pq::cuda::argmax_f32(dx.as<float>(), r.len, (int)r.rows, r.len, dout.as<int32_t>(), work.as<void>(),
                                nullptr),
           "argmax");
    I32Array out(r.rows);
    dout.download(out.mutable_data());
    return out;
}

// Y[n_tok, n_out] = X[n_tok, k] @ W[n_out, k]^T with float16 W and X, through the cuBLAS wrapper.
F32Array gemm_f16(const py::array& w_arr, const py::array& x_arr) {
    F16Bits w = f16_bits(w_arr, "w"), x = f16_bits(x_arr, "x");
    if (w.ndim() != 2 || x.ndim() != 2 || w.shape(1) != x.shape(1))
        throw std::invalid_argument("expected w[n_out, k] and x[n_tok, k]");
    const int n_out = (int)w.shape(0), n_tok = (int)x.shape(0), k = (int)w.shape(1);
    auto dw = DeviceBuffer::from(w);
    auto dx = DeviceBuffer::from(x);
    DeviceBuffer dy(sizeof(float) * (size_t)n_out * n_tok);
    finish(pq::cuda::gemm_f16(dw.as<uint16_t>(), dx.as<uint16_t>(), dy.as<float>(), n_out, n_tok, k, k, k, n_out,
                              nullptr),
           "gemm_f16");
    F32Array out({n_tok, n_out});
    dy.download(out.mutable_data());
    return out;
}

}  // namespace

// Kernel families register their entry points from their own files (cuda/python/bind_*.cpp).
void bind_matvec(py::module_& m);         // quantized GEMV / GEMM (bind_matvec.cpp)
void bind_gdn(py::module_& m);            // Gated DeltaNet kernels (bind_gdn.cpp)
void bind_attention(py::module_& m);      // attention kernels (bind_attention.cpp)
void bind_model(py::module_& m);          // the CUDA backend's model / state (bind_model.cpp)
void bind_model_testing(py::module_& m);  // its device sampler on one logits row (bind_model.cpp)

// The element-wise, norm, quantize, argmax and cuBLAS kernels.
void bind_basic(py::module_& m) {
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("w") = py::none(), py::arg("eps") = 1e-6f,
          py::arg("ncols") = -1, "RMSNorm of each row of x (first ncols values of each row when ncols >= 0).");
    m.def("quantize_q8_1", &quantize_q8_1, py::arg("x"), py::arg("ncols") = -1,
          "block_q8_1 bytes of each row, shape (rows, ceil(ncols/32) * 36).");
    m.def("swiglu", &swiglu, py::arg("g"), py::arg("u"), "silu(g) * u");
    m.def("add", &add, py::arg("a"), py::arg("b"), py::arg("in_place") = false, "a + b (flattened)");
    m.def("argmax", &argmax, py::arg("x"), "Row-wise argmax (int32); ties -> smallest index, NaNs ignored.");
    m.def("gemm_f16", &gemm_f16, py::arg("w"), py::arg("x"), "x @ w.T in float32 from float16 inputs.");
}

}  // namespace pq::cuda_bind

#define PQ_PYMODULE(name, m) PYBIND11_MODULE(name, m)
PQ_PYMODULE(PQ_CUDA_MODULE_NAME, m) {
    namespace bind = pq::cuda_bind;
    m.doc() = "pyqwen CUDA backend: CudaModel, CudaState, CudaSnapshot, device_count, mem_get_info; the "
              "numpy-level kernel entry points (copy in, run, copy out) for tests and debugging are in .testing";
#if defined(PQ_CUDA_EMU)
    m.attr("emulated") = true;
    m.def("set_seed", &pq_emu::set_seed, "Seed of the emulator's thread scheduling order.");
    m.def("live_allocations", &pq_emu::live_allocations, "Device allocations not freed yet.");
    m.def("node_ledger", &pq_emu::node_ledger,
          "Kernel launches, async copies and memsets enqueued so far, by name (what a graph of them holds).");
    m.def("_set_device_count_error", [](int err) { pq_emu::set_device_count_error((cudaError_t)err); },
          "Test hook: cudaGetDeviceCount fails with this cudaError_t (0 restores the emulated device).");
#else
    m.attr("emulated") = false;
#endif
    m.def("device_count", &bind::device_count, "Number of CUDA devices (0 without a driver or a GPU).");
    m.def("device_query", &bind::device_query,
          "(count, why): the device count and, when the query failed, the CUDA error that says why ('' if none).");
    m.def("has_cublas", &pq::cuda::blas_available,
          "Whether prefill GEMMs run on cuBLAS (False: a build without cuBLAS, prefill ~4x slower).");
    m.def("init_blas", &bind::init_blas, py::arg("device") = 0,
          "Create cuBLAS's handle and workspace on `device` and warm it up (before planning memory); False "
          "without cuBLAS.");
    bind::bind_model(m);

    py::module_ testing = pq::testing_submodule(
        m, "Numpy-level kernel entry points (copy in, run one op, synchronise, copy out) and test hooks.");
    bind::bind_basic(testing);
    bind::bind_matvec(testing);
    bind::bind_gdn(testing);
    bind::bind_attention(testing);
    bind::bind_model_testing(testing);
}
