// bind_attention.cpp: Python entry points of attention kernels (placeholder until that part lands).
#include <pybind11/pybind11.h>

namespace pq::cuda_bind {
void bind_attention(pybind11::module_&) {}
}  // namespace pq::cuda_bind
