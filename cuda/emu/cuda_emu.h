// cuda_emu.h: compile a CUDA kernel source with g++ and run it on the CPU with CUDA semantics.
//
// Include this instead of <cuda_runtime.h>/<cuda_fp16.h>/<cuda_bf16.h> (cuda/compat.cuh does it when
// PQ_CUDA_EMU is defined). What is emulated and what is not: see cuda/README.md. Kernels are launched
// only through PQ_LAUNCH (cuda/compat.cuh) because the <<<...>>> syntax does not parse in g++.
#pragma once

// The standard headers come first, before the qualifier macros below exist, so that no libstdc++ header
// is ever parsed with __shared__/__device__/... redefined.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emu_qualifiers.h"
#include "emu_types.h"
#include "emu_fp16.h"
#include "emu_runtime.h"
#include "emu_graph.h"
#include "emu_sched.h"
#include "emu_racecheck.h"
#include "emu_intrinsics.h"
