// device_buffer.h: what every numpy-level binding in cuda/python/ shares -- the CUDA error check, a
// device allocation that copies numpy arrays in and out, and the argument helpers. Plain C++ against
// the runtime API (host_api.h), so it builds into both pyqwen._cuda and the emulated pyqwen_cuda_emu.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "../check.h"
#include "../host_api.h"

namespace pq::cuda_bind {

namespace py = pybind11;

using pq::cuda::check;  // check(err, what): throws std::runtime_error naming `what`, clears the sticky error

// Array arguments and results: C-contiguous, inputs converted to the element type when needed.
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F16Bits = py::array_t<uint16_t, py::array::c_style>;  // float16 values as their raw bits

// Owns one device allocation (freed on scope exit, also when a check throws). Zero bytes: no allocation,
// as<T>() is nullptr and the copies do nothing.
class DeviceBuffer {
public:
    explicit DeviceBuffer(size_t bytes = 0) : bytes_(bytes) {
        if (bytes) check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
    }
    // A copy of the array's bytes on the device.
    static DeviceBuffer from(const py::array& a) {
        DeviceBuffer d((size_t)a.nbytes());
        d.upload(a.data(), d.bytes());
        return d;
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(ptr_, o.ptr_);
        std::swap(bytes_, o.bytes_);
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);
    }

    template <class T = void>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    size_t bytes() const { return bytes_; }

    // n bytes from host memory to offset.
    void upload(const void* src, size_t n, size_t offset = 0) {
        if (offset > bytes_ || n > bytes_ - offset) throw std::logic_error("DeviceBuffer::upload past the end");
        if (n) check(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, n, cudaMemcpyHostToDevice),
                     "cudaMemcpy to device");
    }
    // n bytes (default: all of it) from offset to host memory.
    void download(void* dst, size_t n = SIZE_MAX, size_t offset = 0) const {
        if (n == SIZE_MAX) n = bytes_ - offset;
        if (offset > bytes_ || n > bytes_ - offset) throw std::logic_error("DeviceBuffer::download past the end");
        if (n) check(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, n, cudaMemcpyDeviceToHost),
                     "cudaMemcpy to host");
    }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// After a launcher: its launch error, then the kernel's own (the numpy entry points are synchronous).
inline void finish(cudaError_t launch_error, const char* what) {
    check(launch_error, what);
    check(cudaDeviceSynchronize(), what);
}

// Argument validation failures are ValueError on the Python side.
inline void need(bool ok, const char* msg) {
    if (!ok) throw std::invalid_argument(msg);
}

// float16 arrays arrive as their raw bits.
inline F16Bits f16_bits(const py::array& a, const char* name) {
    if (a.dtype().kind() != 'f' || a.itemsize() != 2)
        throw std::invalid_argument(std::string(name) + " must be a float16 array");
    py::array c = py::array::ensure(a, py::array::c_style);
    return F16Bits(c.request().shape, static_cast<const uint16_t*>(c.data()));
}

// Raw float16 bits back as a numpy float16 array (a view, no copy).
inline py::array as_f16(const py::array& bits) { return bits.attr("view")("float16"); }

}  // namespace pq::cuda_bind
