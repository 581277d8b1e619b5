// emu_runtime.h: host-side CUDA runtime API stand-ins (cudaMalloc, cudaMemcpy, streams, errors).
//
// Only the subset the project uses. Streams are queues, as on a GPU: kernel launches, cudaMemcpyAsync
// and cudaMemsetAsync are validated at the call (errors come back at once) and run later, in order, when
// the host waits for their stream (cudaStreamSynchronize, cudaDeviceSynchronize, a synchronous
// cudaMemcpy/cudaMemset, cudaFree). An async copy reads a pinned (cudaMallocHost) source and writes a
// pinned destination when it runs, not at the call, so host code that reuses a pinned buffer before the
// copy ran sees the wrong bytes, as it would on a GPU. Pageable host memory behaves as the real runtime
// makes it: a host-to-device copy takes its bytes at the call, a device-to-host copy waits for the stream.
// Device buffers are host memory filled with 0xFF bytes (NaN as f32/f16/bf16, -1 as integers) so that
// reading memory nobody wrote gives loud results. Allocations are tracked: copies into or out of
// "device" ranges that are not inside a live allocation fail with cudaErrorInvalidValue, like the
// real runtime would (mostly) do, instead of silently touching host memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
#define cudaStreamNonBlocking 0x01
#define cudaStreamDefault 0x00

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int warpSize;
    int maxThreadsPerBlock;
    int multiProcessorCount;
    int major;
    int minor;
};

cudaError_t cudaMalloc(void** ptr, size_t bytes);
template <class T>
inline cudaError_t cudaMalloc(T** ptr, size_t bytes) {
    return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);

namespace pq_emu {
// Records cudaFuncSetAttribute(MaxDynamicSharedMemorySize) per kernel; the launcher enforces it.
cudaError_t set_func_attribute(const void* func, cudaFuncAttribute attr, int value);
int max_dynamic_smem(const void* func);
// Sets the sticky "last error" (what cudaGetLastError returns next).
void set_last_error(cudaError_t err);
// Number of live cudaMalloc allocations (tests use it to find leaks).
size_t live_allocations();
// Appends work to a stream's queue (nullptr: the legacy default stream); it runs when the host waits.
// `what` names the node it is (the kernel's name, "memcpy HtoD", ...) for the ledger (emu_control.h);
// nullptr: not a graph node (an event record, emu_events.cpp).
void enqueue(cudaStream_t stream, std::function<void()> op, const char* what);
// Event waits (emu_events.cpp): `op` runs when the stream reaches it and runs the recording stream up to
// the record; not a graph node. run_head runs the next queued entry of `stream` (false: the queue is
// empty, the stream is stopped inside one of its own waits, or its head is a wait and stop_at_wait).
void enqueue_wait(cudaStream_t stream, std::function<void()> op);
bool run_head(cudaStream_t stream, bool stop_at_wait);
// A stream node the emulator runs at the call (an async copy to pageable memory): counted all the same.
void note_sync_node(const char* what);
// Work counters: kernels, copies and memsets executed so far (benchmarks and tests count a decode step).
struct WorkStats {
    uint64_t kernels = 0, copies = 0, memsets = 0, copy_bytes = 0;
};
WorkStats work_stats();
// Test hook: cudaGetDeviceCount fails with `err` (cudaSuccess: the one emulated device again).
void set_device_count_error(cudaError_t err);
void count_kernel();
}  // namespace pq_emu

template <class F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
    return pq_emu::set_func_attribute(reinterpret_cast<const void*>(func), attr, value);
}

// __device__/__constant__ variables are plain host globals here.
template <class T>
inline cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t bytes, size_t offset = 0,
                                      cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    (void)kind;
    if (offset + bytes > sizeof(T)) return cudaErrorInvalidValue;
    __builtin_memcpy(reinterpret_cast<char*>(&symbol) + offset, src, bytes);
    return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t bytes, size_t offset = 0,
                                        cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
    (void)kind;
    if (offset + bytes > sizeof(T)) return cudaErrorInvalidValue;
    __builtin_memcpy(dst, reinterpret_cast<const char*>(&symbol) + offset, bytes);
    return cudaSuccess;
}

#include "emu_events.h"  // cudaEvent_t and the event API (emu_events.cpp)
