// emu_sched.h: the execution model of the emulator -- thread/block indices, barriers, warp intrinsics,
// dynamic shared memory and the kernel launcher.
//
// Every thread of a block is a fiber (ucontext, 64 KiB stack); a block's fibers are run round-robin by
// one OS thread, in a seeded random order that is reshuffled at every synchronisation point, and the
// blocks of a grid run one after another (also in a random order). A fiber only gives up the CPU at a
// barrier or a warp intrinsic, so the emulator explores "coarse" interleavings: enough for a missing
// __syncthreads to produce wrong results, not enough to expose non-atomic read-modify-write races.
// Intrinsics take the caller's file/line through __builtin_FILE()/__builtin_LINE() default arguments so
// that error messages can name the barrier or shuffle involved.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emu_runtime.h"
#include "emu_types.h"

namespace pq_emu {

enum WarpOp : int {
    OP_SHFL_IDX,
    OP_SHFL_UP,
    OP_SHFL_DOWN,
    OP_SHFL_XOR,
    OP_BALLOT,
    OP_ANY,
    OP_ALL,
    OP_SYNCWARP,
    OP_REDUCE_ADD,
    OP_REDUCE_MIN,
    OP_REDUCE_MAX,
};

enum BarrierKind : int { BAR_PLAIN, BAR_COUNT, BAR_AND, BAR_OR };

// Index registers. g_thread_idx points into the running fiber and changes at every switch, which is why
// threadIdx is a macro that dereferences it rather than a variable.
extern const uint3* g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

// Blocks the calling fiber until every thread of the block reached the same barrier; returns the
// count/and/or of `pred` over the block for the _count/_and/_or variants.
int barrier(BarrierKind kind, int pred, const char* file, int line);
// Warp-scoped rendezvous of the lanes named in `mask`: returns this lane's result of `op`.
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);
unsigned active_mask();
void* dyn_smem();
[[noreturn]] void trap(const char* file, int line);

using KernelBody = void (*)(void*);
// Validates a launch configuration like cudaLaunchKernel; a bad one is reported through the sticky last
// error (cudaGetLastError) and on stderr, and false is returned (nothing is queued).
bool launch_config_ok(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem);
// Runs body(ctx) once per thread of every block (the queued launch reaching the head of its stream).
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem, KernelBody body,
              void* ctx);

// Seed of the scheduling order (default: $PQ_EMU_SEED, else a fixed value), for reproducible runs.
void set_seed(uint64_t seed);
uint64_t get_seed();

template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    if (!launch_config_ok(name, reinterpret_cast<const void*>(kernel), grid, block, smem)) return;
    // Arguments are converted to the parameter types once, at the launch, as the CUDA runtime does; the
    // grid runs when its stream gets to it (emu_runtime.h), and every thread gets its own by-value copy
    // (kernels may modify their parameters).
    using Params = std::tuple<std::decay_t<P>...>;
    auto params = std::make_shared<Params>(std::forward<A>(args)...);
    enqueue(stream, [name, kernel, grid, block, smem, params]() {
        struct Ctx {
            void (*k)(P...);
            Params* p;
        } ctx{kernel, params.get()};
        run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, smem,
                 [](void* c) {
                     auto* x = static_cast<Ctx*>(c);
                     std::apply(x->k, *x->p);
                 },
                 &ctx);
    }, name);
}

template <class T>
inline T shfl(WarpOp op, unsigned mask, T var, int arg, int width, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "warp shuffles move 32- or 64-bit values");
    uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    const uint64_t r = warp_op(op, mask, bits, arg, width, file, line);
    T out;
    std::memcpy(&out, &r, sizeof(T));
    return out;
}

}  // namespace pq_emu

#define threadIdx (*::pq_emu::g_thread_idx)
#define blockIdx (static_cast<const uint3&>(::pq_emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::pq_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::pq_emu::g_grid_dim))
static constexpr int warpSize = 32;

// ---- barriers --------------------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::pq_emu::barrier(::pq_emu::BAR_PLAIN, 1, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::pq_emu::barrier(::pq_emu::BAR_COUNT, pred != 0, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::pq_emu::barrier(::pq_emu::BAR_AND, pred != 0, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::pq_emu::barrier(::pq_emu::BAR_OR, pred != 0, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ::pq_emu::warp_op(::pq_emu::OP_SYNCWARP, mask, 0, 0, 32, file, line);
}
// Memory fences order nothing on one OS thread; they only stop the compiler from caching memory.
inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_system() { __asm__ __volatile__("" ::: "memory"); }

// ---- warp shuffles and votes -------------------------------------------------------------------------
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    return ::pq_emu::shfl(::pq_emu::OP_SHFL_IDX, mask, var, srcLane, width, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::pq_emu::shfl(::pq_emu::OP_SHFL_UP, mask, var, (int)delta, width, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::pq_emu::shfl(::pq_emu::OP_SHFL_DOWN, mask, var, (int)delta, width, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::pq_emu::shfl(::pq_emu::OP_SHFL_XOR, mask, var, laneMask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return (unsigned)::pq_emu::warp_op(::pq_emu::OP_BALLOT, mask, pred != 0, 0, 32, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::pq_emu::warp_op(::pq_emu::OP_ANY, mask, pred != 0, 0, 32, file, line);
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::pq_emu::warp_op(::pq_emu::OP_ALL, mask, pred != 0, 0, 32, file, line);
}
inline unsigned __activemask() { return ::pq_emu::active_mask(); }

// sm_80+ warp reductions; `arg` tells the emulator whether to compare as signed.
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned)::pq_emu::warp_op(::pq_emu::OP_REDUCE_ADD, mask, v, 0, 32, file, line);
}
inline int __reduce_add_sync(unsigned mask, int v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::pq_emu::warp_op(::pq_emu::OP_REDUCE_ADD, mask, (uint32_t)v, 1, 32, file, line);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned)::pq_emu::warp_op(::pq_emu::OP_REDUCE_MIN, mask, v, 0, 32, file, line);
}
inline int __reduce_min_sync(unsigned mask, int v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::pq_emu::warp_op(::pq_emu::OP_REDUCE_MIN, mask, (uint32_t)v, 1, 32, file, line);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned)::pq_emu::warp_op(::pq_emu::OP_REDUCE_MAX, mask, v, 0, 32, file, line);
}
inline int __reduce_max_sync(unsigned mask, int v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::pq_emu::warp_op(::pq_emu::OP_REDUCE_MAX, mask, (uint32_t)v, 1, 32, file, line);
}

[[noreturn]] inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) { ::pq_emu::trap(file, line); }
