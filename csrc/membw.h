// membw.h: measured DRAM read bandwidth (bytes/s), for `pyqwen bench`'s decode roofline.
#pragma once

#include <cstdint>

namespace pq {

// Best of reps passes of n_threads threads summing disjoint slices of an n_bytes buffer.
double read_bandwidth(int n_threads, int64_t n_bytes, int reps);

}  // namespace pq
