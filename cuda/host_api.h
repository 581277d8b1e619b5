// host_api.h: the CUDA runtime API for plain C++ host code (bindings, allocators) -- the toolkit's
// cuda_runtime_api.h, or the emulator's stand-ins under -DPQ_CUDA_EMU. Host code that includes this
// never sees kernel syntax, so it compiles with g++ in both builds.
#pragma once

#if defined(PQ_CUDA_EMU)
#include "emu/emu_runtime.h"
#include "emu/emu_graph.h"  // graphs: part of cuda_runtime_api.h on the real side
#else
#include <cuda_runtime_api.h>
#endif
