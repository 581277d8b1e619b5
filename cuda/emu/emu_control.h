// emu_control.h: knobs of the emulator for host code (bindings, tests) that does not include kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace pq_emu {
void set_seed(uint64_t seed);  // seed of the scheduling order; default $PQ_EMU_SEED or a fixed value
uint64_t get_seed();
size_t live_allocations();  // cudaMalloc'd buffers not freed yet
// The node ledger: every kernel launch, async copy and memset enqueued so far, counted by name (the
// kernel's name as PQ_LAUNCH spells it, "memcpy HtoD", "memset", ...) at the call -- what a CUDA graph
// captured from the same calls would hold as nodes. Differences around a call count its nodes.
std::map<std::string, uint64_t> node_ledger();
uint64_t nodes_enqueued();
}  // namespace pq_emu
