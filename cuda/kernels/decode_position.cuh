// decode_position.cuh: the device-resident position of a replayed decode graph (ops_attention.h
// attention_decode_graph). One thread: set it from the host's value (a launch of its own, outside any
// graph: the argument is the host's value at the call) or advance it by one (the last node of the decode
// graph, after every kernel that read it), so that replaying the same graph walks the positions with no
// host write per token.
#pragma once

#include "../compat.cuh"
#include "../pdl.cuh"

namespace pq::cuda {

__global__ void decode_position_kernel(int* __restrict__ pos, int value, int advance) {
    pq_grid_dependency_wait();  // PDL (pdl.cuh): first, before any global memory access
    pq_launch_dependents();
    if (threadIdx.x == 0 && blockIdx.x == 0) *pos = advance ? *pos + 1 : value;
}

}  // namespace pq::cuda
