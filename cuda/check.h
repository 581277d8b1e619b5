// check.h: CUDA runtime errors as C++ exceptions, for host code (the backend's model.cu and the pybind11
// modules in python/). Plain C++ against the runtime API (host_api.h): compiles with nvcc, with g++ against
// the toolkit and with g++ under the emulator (-DPQ_CUDA_EMU).
#pragma once

#include <stdexcept>
#include <string>

#include "host_api.h"

namespace pq::cuda {

// Throws std::runtime_error("CUDA error in <what>: <error string>"). The sticky last error is cleared
// first, so that later calls report their own errors rather than this one again.
[[noreturn]] inline void fail_cuda(cudaError_t e, const char* what) {
    cudaGetLastError();
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) fail_cuda(e, what);
}

}  // namespace pq::cuda
