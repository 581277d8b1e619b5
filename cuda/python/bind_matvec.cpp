// bind_matvec.cpp: Python entry points of quantized GEMV / GEMM (placeholder until that part lands).
#include <pybind11/pybind11.h>

namespace pq::cuda_bind {
void bind_matvec(pybind11::module_&) {}
}  // namespace pq::cuda_bind
