// emu_runtime.cpp: the host runtime API of emu_runtime.h (allocations, copies, errors, device info).
#include "emu_runtime.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace pq_emu {
namespace {

std::mutex g_mutex;
std::map<uintptr_t, size_t> g_allocs;     // device allocations: start -> size
std::map<const void*, int> g_max_dyn_smem;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
cudaError_t g_last_error = cudaSuccess;

// True when [p, p+n) lies inside one live device allocation.
bool in_device(const void* p, size_t n) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

cudaError_t record(cudaError_t e) {
    if (e != cudaSuccess) g_last_error = e;
    return e;
}

cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind > cudaMemcpyDefault) return cudaErrorInvalidMemcpyDirection;
    if (dst_dev && !in_device(dst, n)) {
        fprintf(stderr, "pq_emu: cudaMemcpy destination %p+%zu is not inside a device allocation\n", dst, n);
        return cudaErrorInvalidValue;
    }
    if (src_dev && !in_device(src, n)) {
        fprintf(stderr, "pq_emu: cudaMemcpy source %p+%zu is not inside a device allocation\n", src, n);
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

}  // namespace

cudaError_t set_func_attribute(const void* func, cudaFuncAttribute attr, int value) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > 99 * 1024) return record(cudaErrorInvalidValue);
        g_max_dyn_smem[func] = value;
    }
    return cudaSuccess;
}

int max_dynamic_smem(const void* func) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_max_dyn_smem.find(func);
    return it == g_max_dyn_smem.end() ? 48 * 1024 : it->second;
}

void set_last_error(cudaError_t err) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_last_error = err;
}

size_t live_allocations() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_allocs.size();
}

}  // namespace pq_emu

using namespace pq_emu;

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
    if (!ptr) return cudaErrorInvalidValue;
    // 256-byte alignment like cudaMalloc; 0xFF bytes so unwritten memory reads as NaN / -1.
    const size_t n = bytes ? (bytes + 255) & ~size_t(255) : 256;
    void* p = aligned_alloc(256, n);
    if (!p) {
        *ptr = nullptr;
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        return record(cudaErrorMemoryAllocation);
    }
    memset(p, 0xff, n);
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    g_allocs[reinterpret_cast<uintptr_t>(p)] = bytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    if (!ptr) return cudaSuccess;
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == g_allocs.end()) {
        fprintf(stderr, "pq_emu: cudaFree(%p) of a pointer that cudaMalloc did not return (or freed twice)\n", ptr);
        return record(cudaErrorInvalidDevicePointer);
    }
    g_allocs.erase(it);
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
    *ptr = aligned_alloc(256, bytes ? (bytes + 255) & ~size_t(255) : 256);
    return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void* ptr) {
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    const cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess) return record(e);
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    if (bytes && !in_device(dst, bytes)) {
        fprintf(stderr, "pq_emu: cudaMemset %p+%zu is not inside a device allocation\n", dst, bytes);
        return record(cudaErrorInvalidValue);
    }
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return cudaMemset(dst, value, bytes); }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    *free_bytes = size_t(8) << 30;
    *total_bytes = size_t(8) << 30;
    return cudaSuccess;
}

struct CUstream_st {
    int tag;
};

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
    *stream = new CUstream_st{0};
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) { return cudaStreamCreate(stream); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaGetLastError() {
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    const cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError() {
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    return g_last_error;
}

const char* cudaGetErrorName(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInitializationError: return "cudaErrorInitializationError";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
    }
    return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorNotSupported: return "operation not supported";
        default: return cudaGetErrorName(err);
    }
}

cudaError_t cudaGetDeviceCount(int* count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "pq_emu (CPU emulation of an sm_89 device)");
    prop->totalGlobalMem = size_t(8) << 30;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->sharedMemPerBlockOptin = 99 * 1024;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->multiProcessorCount = 1;
    prop->major = 8;
    prop->minor = 9;
    return cudaSuccess;
}
