// bind_gdn.cpp: Python entry points of Gated DeltaNet kernels (placeholder until that part lands).
#include <pybind11/pybind11.h>

namespace pq::cuda_bind {
void bind_gdn(pybind11::module_&) {}
}  // namespace pq::cuda_bind
