// emu_racecheck.h: the emulator's shared-memory race detector (racecheck builds only: -DPQ_EMU_RACECHECK=1,
// see cuda/README.md "racecheck" and tests/cuda/emu_build.py).
//
// How accesses are observed: the kernel translation units of a racecheck build are compiled with GCC's
// ThreadSanitizer instrumentation (-fsanitize=thread), which calls __tsan_read4(addr), __tsan_write16(addr),
// ... before every load and store; the libtsan runtime is *not* linked -- emu_racecheck.cpp defines those
// entry points itself. So kernels need no change (raw pointers, reinterpret_cast, static arrays all work).
// An access counts when a kernel thread (fiber) is running and the address lies in this block's dynamic
// shared memory or in the module's writable data (where the function-local statics that emulate static
// __shared__ arrays live; the emulator's own index globals are skipped).
//
// The model (CUDA's, for shared memory): accesses are grouped per block into barrier intervals
// (__syncthreads starts a new one); inside an interval, two accesses to one byte by different threads
// conflict when at least one writes and neither is atomic -- unless both threads are lanes of one warp
// and a __syncwarp over both (directly or through a chain of __syncwarps: vector clocks per warp) lies
// between them. Warp shuffles and votes order nothing (CUDA gives them no memory ordering).
#pragma once

#include <cstddef>
#include <cstdint>

#include "emu_types.h"

namespace pq_emu {

// Scheduler hooks (emu_sched.cpp calls them only in racecheck builds).
void rc_block_begin(const char* kernel, uint3 block, dim3 block_dim, int nthreads, const char* dyn, size_t smem);
void rc_set_thread(int lin);                // the fiber about to run (-1: the scheduler itself)
void rc_barrier();                          // a __syncthreads released: a new interval
void rc_syncwarp(int warp, unsigned mask);  // a __syncwarp of these lanes completed
void rc_block_end();                        // reports the block's races (and aborts) if there were any

// Atomic intrinsics (emu_intrinsics.h) mark their accesses as atomic while this is alive.
struct RcAtomicScope {
    RcAtomicScope();
    ~RcAtomicScope();
};

}  // namespace pq_emu
