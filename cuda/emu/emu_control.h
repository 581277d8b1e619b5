// emu_control.h: knobs of the emulator for host code (bindings, tests) that does not include kernels.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pq_emu {
void set_seed(uint64_t seed);  // seed of the scheduling order; default $PQ_EMU_SEED or a fixed value
uint64_t get_seed();
size_t live_allocations();  // cudaMalloc'd buffers not freed yet
}  // namespace pq_emu
