// compat.cuh: the one header every kernel (.cuh) and launch file (.cu) includes first.
//
// It selects the real CUDA toolkit (nvcc) or the CPU emulator (g++ with -DPQ_CUDA_EMU, see emu/) and
// defines the few macros whose spelling differs between the two. Kernel sources must not include the
// toolkit headers themselves, and must launch kernels only through PQ_LAUNCH.
#pragma once

#if defined(PQ_CUDA_EMU)
#include "emu/cuda_emu.h"
#elif defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#else
#error "CUDA sources are compiled by nvcc, or by g++ with -DPQ_CUDA_EMU (the CPU emulator)"
#endif

#include <climits>
#include <cstdint>

#include "formats.h"  // block layouts and fp16/bf16 conversions shared with the CPU backend

// PQ_LAUNCH(kernel, grid, block, smem_bytes, stream, args...): kernel<<<grid, block, smem, stream>>>(args).
// A kernel name containing a comma (k<A, B>) must be aliased first: `auto* k = my_kernel<A, B>;`.
#if defined(PQ_CUDA_EMU)
#define PQ_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ::pq_emu::launch(#kernel, kernel, dim3(grid), dim3(block), (size_t)(smem), stream, ##__VA_ARGS__)
#else
#define PQ_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

// PQ_DYN_SHARED(T, name): `T* name` pointing at the launch's dynamic shared memory (extern __shared__).
// Through one byte array because nvcc rejects two extern __shared__ arrays of different types in a TU.
#if defined(PQ_CUDA_EMU)
#define PQ_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::pq_emu::dyn_smem())
#else
#define PQ_DYN_SHARED(T, name)                                   \
    extern __shared__ __align__(16) unsigned char pq_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(pq_dyn_smem_)
#endif

// PQ_DEVICE_ARCH: compute capability the device code is compiled for (e.g. 890), 0 in host passes.
// The emulator behaves like an sm_89 part but has no PTX: PQ_HAVE_PTX guards inline-asm paths, which
// must always come with a portable twin that the emulated tests exercise.
#if defined(PQ_CUDA_EMU)
#define PQ_DEVICE_ARCH 890
#define PQ_HAVE_PTX 0
#elif defined(__CUDA_ARCH__)
#define PQ_DEVICE_ARCH __CUDA_ARCH__
#define PQ_HAVE_PTX 1
#else
#define PQ_DEVICE_ARCH 0
#define PQ_HAVE_PTX 0
#endif
