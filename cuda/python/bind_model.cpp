// bind_model.cpp: Python entry points of the CUDA backend model (placeholder until that part lands).
#include <pybind11/pybind11.h>

namespace pq::cuda_bind {
void bind_model(pybind11::module_&) {}
}  // namespace pq::cuda_bind
