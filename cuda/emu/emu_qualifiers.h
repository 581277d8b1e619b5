// emu_qualifiers.h: CUDA declaration specifiers as plain C++ for the host emulator.
//
// Kept apart from cuda_emu.h so that headers needing only the qualifiers (formats.h through PQ_HD,
// emu_fp16.h) can be used without pulling in the scheduler.
#pragma once

#ifndef PQ_CUDA_EMU
#define PQ_CUDA_EMU 1
#endif

#define __host__
#define __device__
#define __global__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks run one after another on one OS thread, so a function-local static *is* block-shared storage.
// Consequences: `static __shared__` does not compile here (write `__shared__ T x;`), and static shared
// memory is not re-poisoned between blocks (see cuda/README.md, "Limits").
#define __shared__ static
// g++ understands __restrict__ natively; __noinline__ is left undefined on purpose because libstdc++
// spells __attribute__((__noinline__)) and a macro would break it.
