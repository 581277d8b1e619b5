// bindings_quants.cpp: Python bindings of the quantizers, dequantizers and reference quantized dots.
// quantize / dequantize (used by the converter) sit at the top level of pyqwen._core; the rest, which
// only the tests use, in pyqwen._core.testing.
//
// Everything arriving from Python is validated here (dtype, dimensions, block multiples, byte
// lengths) and reported as ValueError, so no Python input can make the C++ side read or write out of
// bounds. Heavy work runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "qgemm.h"
#include "quants.h"
#include "tensor.h"
#include "threadpool.h"

namespace py = pybind11;

namespace pq {

namespace {

// Largest element count we accept; keeps every size product below 2^63 without overflow checks.
constexpr int64_t kMaxElems = int64_t(1) << 48;

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

const QuantTraits& traits_or_fail(int type) {
    const QuantTraits* t = quant_traits(type);
    if (!t) fail("unsupported quantized type " + std::to_string(type));
    return *t;
}

void check_count(const QuantTraits& t, int64_t n, const char* what, bool allow_zero = true) {
    if (n < 0 || n > kMaxElems) fail(std::string(what) + " = " + std::to_string(n) + " is out of range");
    if (!allow_zero && n == 0) fail(std::string(what) + " must be > 0");
    if (n % t.block_size != 0) {
        fail(std::string(what) + " = " + std::to_string(n) + " is not a multiple of " + std::to_string(t.block_size) +
             " (block size of " + t.name + ")");
    }
}

// A read-only view of raw block bytes: any C-contiguous buffer of 1-byte items (numpy uint8/int8
// arrays, bytes, bytearray, memoryview, mmap). The buffer stays pinned while the view lives.
struct ByteView {
    py::buffer_info info;
    const uint8_t* ptr = nullptr;
    int64_t size = 0;
};

ByteView bytes_arg(const py::buffer& b, const char* what) {
    ByteView v;
    v.info = b.request();
    if (v.info.itemsize != 1) fail(std::string(what) + " must be a buffer of bytes (uint8), got item size " +
                                   std::to_string(v.info.itemsize));
    // C-contiguity: strides must be the packed row-major ones.
    int64_t expect = 1;
    for (int64_t d = v.info.ndim - 1; d >= 0; --d) {
        if (v.info.shape[d] > 1 && v.info.strides[d] != expect) fail(std::string(what) + " must be C-contiguous");
        expect *= v.info.shape[d];
    }
    v.ptr = (const uint8_t*)v.info.ptr;
    v.size = v.info.size;
    return v;
}

// float32 array of 1 or 2 dimensions, made C-contiguous (copied only if needed). Other dtypes are
// rejected rather than converted: a silent float64 -> float32 cast would hide converter bugs.
py::array_t<float, py::array::c_style> floats_arg(const py::array& a, const char* what) {
    if (!py::isinstance<py::array_t<float>>(a)) {
        fail(std::string(what) + " must be a float32 array, got dtype " + std::string(py::str(a.dtype())));
    }
    if (a.ndim() != 1 && a.ndim() != 2) fail(std::string(what) + " must be 1-D or 2-D");
    auto r = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!r) fail(std::string(what) + " could not be made C-contiguous");
    return r;
}

// The weight row count implied by a byte length, or failure if it does not divide evenly.
void check_weight_bytes(int type, const ByteView& w, int64_t n_in, int64_t n_out) {
    const int64_t rb = (int64_t)row_bytes(type, n_in);
    if (rb == 0 ? w.size != 0 : (w.size % rb != 0 || w.size / rb != n_out)) {
        fail("weight has " + std::to_string(w.size) + " bytes, expected " + std::to_string(n_out) + " rows x " +
             std::to_string(rb) + " bytes");
    }
}

py::array_t<uint8_t> py_quantize(int type, const py::array& x_in, int n_threads) {
    const QuantTraits& t = traits_or_fail(type);
    if (!t.from_float_ref) fail(std::string("no reference quantizer for ") + t.name);
    auto x = floats_arg(x_in, "x");
    const int64_t n_per_row = x.ndim() == 2 ? x.shape(1) : x.shape(0);
    const int64_t nrows = x.ndim() == 2 ? x.shape(0) : 1;
    check_count(t, n_per_row, "row length");
    if (nrows * n_per_row > kMaxElems) fail("x is too large");
    const int64_t out_bytes = nrows * (int64_t)row_bytes(type, n_per_row);
    py::array_t<uint8_t> out(out_bytes);
    const float* src = x.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        quantize_rows(type, src, dst, nrows, n_per_row, n_threads);  // std::invalid_argument -> ValueError
    }
    return out;
}

py::array_t<float> py_dequantize(int type, const py::buffer& data, int64_t n, int n_threads) {
    const QuantTraits& t = traits_or_fail(type);
    check_count(t, n, "n");
    ByteView v = bytes_arg(data, "data");
    const int64_t need = (int64_t)row_bytes(type, n);
    if (v.size != need) fail("data has " + std::to_string(v.size) + " bytes, " + std::to_string(n) + " values of " +
                             t.name + " need " + std::to_string(need));
    py::array_t<float> out(n);
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        dequantize(type, v.ptr, dst, n, n_threads);
    }
    return out;
}

const QuantTraits& weight_traits_or_fail(int type) {
    const QuantTraits& t = traits_or_fail(type);
    if (!t.vec_dot) fail(std::string(t.name) + " is an activation format, not a weight format");
    return t;
}

float py_vec_dot(int type, const py::buffer& w_bytes, const py::array& x_in) {
    const QuantTraits& t = weight_traits_or_fail(type);
    auto x = floats_arg(x_in, "x");
    if (x.ndim() != 1) fail("x must be 1-D");
    const int64_t n = x.shape(0);
    check_count(t, n, "len(x)", false);
    ByteView w = bytes_arg(w_bytes, "w");
    check_weight_bytes(type, w, n, 1);
    std::vector<uint8_t> xq(row_bytes(t.vec_dot_type, n));
    py::gil_scoped_release nogil;
    t.quantize_act(x.data(), xq.data(), n);
    return t.vec_dot(n, w.ptr, xq.data());
}

float py_vec_dot_q(int type, const py::buffer& w_bytes, const py::buffer& act_bytes, int64_t n, bool reference) {
    const QuantTraits& t = weight_traits_or_fail(type);
    check_count(t, n, "n", false);
    ByteView w = bytes_arg(w_bytes, "w");
    ByteView a = bytes_arg(act_bytes, "act");
    check_weight_bytes(type, w, n, 1);
    const int64_t need = (int64_t)row_bytes(t.vec_dot_type, n);
    if (a.size != need) fail("act has " + std::to_string(a.size) + " bytes, expected " + std::to_string(need));
    py::gil_scoped_release nogil;
    return (reference ? t.vec_dot_ref : t.vec_dot)(n, w.ptr, a.ptr);
}

py::array_t<float> py_matmul_ref(int type, const py::buffer& w_bytes, int64_t n_in, int64_t n_out, const py::array& x_in,
                                 int n_threads) {
    const QuantTraits& t = weight_traits_or_fail(type);
    check_count(t, n_in, "n_in", false);
    if (n_out < 0 || n_out > kMaxElems) fail("n_out out of range");
    ByteView w = bytes_arg(w_bytes, "w");
    check_weight_bytes(type, w, n_in, n_out);
    auto x = floats_arg(x_in, "x");
    const bool vec = x.ndim() == 1;
    const int64_t T = vec ? 1 : x.shape(0);
    const int64_t xn = vec ? x.shape(0) : x.shape(1);
    if (xn != n_in) fail("x rows have " + std::to_string(xn) + " values, expected n_in = " + std::to_string(n_in));
    if (T * n_out > kMaxElems) fail("output too large");
    py::array_t<float> y = vec ? py::array_t<float>(n_out) : py::array_t<float>({T, n_out});
    float* yp = y.mutable_data();
    const float* xp = x.data();
    {
        py::gil_scoped_release nogil;
        quant_matmul_ref(type, w.ptr, n_in, n_out, xp, T, yp, n_threads);
    }
    return y;
}

// The prefill GEMM with a chosen micro-kernel set ("auto", "ref", "avx2", "avx512vnni", "amx") on n_threads.
py::array_t<float> py_qgemm(int type, const py::buffer& w_bytes, int64_t n_in, int64_t n_out, const py::array& x_in,
                            const std::string& kernels, int n_threads, bool gemv) {
    const QuantTraits& t = weight_traits_or_fail(type);
    if (!qgemm_supported(type)) fail(std::string("qgemm does not handle ") + t.name);
    check_count(t, n_in, "n_in", false);
    if (n_out < 1 || n_out > kMaxElems) fail("n_out out of range");
    if (n_threads < 1 || n_threads > 256) fail("n_threads out of range");
    const QgemmKernels* k = kernels == "auto" ? &qgemm_kernels() : qgemm_kernels_named(kernels.c_str());
    if (!k) fail("kernel set " + kernels + " is not available here");
    ByteView w = bytes_arg(w_bytes, "w");
    check_weight_bytes(type, w, n_in, n_out);
    auto x = floats_arg(x_in, "x");
    if (x.ndim() != 2 || x.shape(1) != n_in) fail("x must be [T, n_in]");
    const int64_t T = x.shape(0);
    if (T * n_out > kMaxElems) fail("output too large");
    py::array_t<float> y({T, n_out});
    float* yp = y.mutable_data();
    const float* xp = x.data();
    {
        py::gil_scoped_release nogil;
        ThreadPool pool(n_threads);
        Tensor W;
        W.type = type;
        W.ne0 = n_in;
        W.ne1 = n_out;
        W.data = w.ptr;
        if (T > 0 && !(gemv && qgemv(pool, W, xp, T, yp, k))) qgemm(pool, W, xp, T, yp, k);
    }
    return y;
}

py::list py_qgemm_kernels() {
    py::list out;
    for (const char* n : {"ref", "avx2", "avx512vnni", "amx"})
        if (qgemm_kernels_named(n)) out.append(n);
    return out;
}

py::object py_type_info(int type) {
    const QuantTraits* t = quant_traits(type);
    if (!t) return py::none();
    py::dict d;
    d["type"] = t->type;
    d["name"] = t->name;
    d["block_size"] = t->block_size;
    d["block_bytes"] = t->block_bytes;
    d["vec_dot_type"] = t->vec_dot_type;
    d["has_quantizer"] = t->from_float_ref != nullptr;
    d["has_vec_dot"] = t->vec_dot != nullptr;
    return d;
}

}  // namespace

void bind_quants(py::module_& m) {
    m.def("quantize", &py_quantize, py::arg("type"), py::arg("x"), py::arg("n_threads") = 0,
          "Quantize float32 rows (1-D = one row) with llama.cpp's reference quantizer (byte-identical, no "
          "imatrix). Returns the raw blocks of all rows concatenated as uint8. Rejects NaN/Inf.");
    m.def("dequantize", &py_dequantize, py::arg("type"), py::arg("data"), py::arg("n"), py::arg("n_threads") = 0,
          "Decode n values from raw blocks (any contiguous byte buffer) to float32.");
}

// The reference dots and matmul, the kernel-set name and the block geometry: for the tests (registered in
// pyqwen._core.testing, see bindings.cpp).
void bind_quants_testing(py::module_& m) {
    m.def("quant_vec_dot", &py_vec_dot, py::arg("type"), py::arg("w"), py::arg("x"),
          "Dot of one quantized weight row with float32 x; x is first quantized to the weight's "
          "activation format (Q8_K, Q8_0 or Q8_1) as llama.cpp's CPU backend does.");
    m.def("quant_vec_dot_q", &py_vec_dot_q, py::arg("type"), py::arg("w"), py::arg("act"), py::arg("n"),
          py::arg("reference") = false,
          "Dot of one quantized weight row with an already quantized activation row (raw blocks). "
          "reference=True runs the scalar reference instead of the SIMD kernel (same result).");
    m.def("quant_simd", &quant_simd_name, "Kernel set used by the quantized dots: 'avx2' or 'ref'.");
    m.def("quant_matmul_ref", &py_matmul_ref, py::arg("type"), py::arg("w"), py::arg("n_in"), py::arg("n_out"),
          py::arg("x"), py::arg("n_threads") = 0,
          "Reference quantized matmul: y[T, n_out] = x[T, n_in] @ W^T with W given as n_out quantized rows; "
          "activations quantized per row, integer dot per weight row.");
    m.def("qgemm", &py_qgemm, py::arg("type"), py::arg("w"), py::arg("n_in"), py::arg("n_out"), py::arg("x"),
          py::arg("kernels") = "auto", py::arg("n_threads") = 1, py::arg("gemv") = false,
          "Prefill GEMM y[T, n_out] on Q4_K/Q5_K/Q6_K/Q8_0/IQ4_XS weights with the named micro-kernel set (bit-identical to "
          "quant_matmul_ref at every level); gemv=True takes the decode row kernel where the set has one.");
    m.def("qgemm_kernels", &py_qgemm_kernels, "Micro-kernel sets of qgemm available on this CPU.");
    m.def("qgemm_default", []() { return std::string(qgemm_kernels().name); }, "The set qgemm picks here.");
    m.def("quant_type_info", &py_type_info, py::arg("type"),
          "Block geometry and capabilities of a quantized type, or None if unsupported.");
}

}  // namespace pq
