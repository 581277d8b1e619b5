// emu_runtime.cpp: the host runtime API of emu_runtime.h (allocations, copies, errors, device info).
#include "emu_runtime.h"
#include "emu_control.h"
#include "emu_graph.h"  // capture_node: a capturing stream records instead of queueing

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace pq_emu {
namespace {

std::mutex g_mutex;
std::map<uintptr_t, size_t> g_allocs;     // device allocations: start -> size
std::map<uintptr_t, size_t> g_pinned;     // cudaMallocHost allocations: start -> size
std::map<const void*, int> g_max_dyn_smem;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
cudaError_t g_last_error = cudaSuccess;

bool in_map(const std::map<uintptr_t, size_t>& m, const void* p, size_t n) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = m.upper_bound(a);
    if (it == m.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}
// True when [p, p+n) lies inside one live device allocation.
bool in_device(const void* p, size_t n) { return in_map(g_allocs, p, n); }
// True when [p, p+n) lies inside one pinned host allocation.
bool in_pinned(const void* p, size_t n) { return in_map(g_pinned, p, n); }

// ---- memcheck: every cudaMalloc is its own mapping, [guard page][data][guard page], with the data's end
// (rounded up to 256 bytes, cudaMalloc's alignment) against the rear guard, so a kernel (or host code)
// reading or writing past the end -- or, by more than the page slack, before the start -- faults. cudaFree
// turns the whole mapping PROT_NONE and keeps it reserved (physical pages released), so a later access
// through a stale pointer faults too. The SIGSEGV handler names the allocation, the offset and the kernel,
// block and thread, and aborts; faults elsewhere go to the previous handler.
struct Mapping {
    uintptr_t base = 0;   // mmap start (front guard page)
    size_t len = 0;       // whole mapping
    uintptr_t user = 0;   // what cudaMalloc returned
    size_t bytes = 0;     // requested size
    bool freed = false;
};
std::map<uintptr_t, Mapping> g_maps;  // base -> mapping, live and freed (quarantined)
size_t g_quarantine = 0;              // bytes of freed mappings still reserved
constexpr size_t kQuarantineMax = size_t(64) << 30;  // address space only; munmap the oldest beyond it
std::vector<uintptr_t> g_freed_order;
struct sigaction g_prev_segv;
bool g_handler_installed = false;

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

const Mapping* find_mapping(uintptr_t a) {
    auto it = g_maps.upper_bound(a);
    if (it == g_maps.begin()) return nullptr;
    --it;
    return a < it->second.base + it->second.len ? &it->second : nullptr;
}

}  // namespace
int describe_running(char* buf, size_t n);  // emu_sched.cpp
namespace {

void on_segv(int sig, siginfo_t* info, void* uc) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
    const Mapping* m = find_mapping(a);  // no lock: the faulting thread may hold none or g_mutex; read only
    if (!m) {
        sigaction(SIGSEGV, &g_prev_segv, nullptr);  // not ours: let the previous handler see the re-fault
        return;
    }
    bool write = false;
#if defined(__x86_64__)
    write = (static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
    (void)uc;
#endif
    char who[512];
    describe_running(who, sizeof who);
    const long long off = (long long)(a - m->user);
    fprintf(stderr,
            "pq_emu: error: memcheck: invalid %s of global memory at %p: %s of a %zu-byte cudaMalloc allocation at "
            "%p (offset %lld)\n  in %s\n",
            write ? "write" : "read", info->si_addr,
            m->freed ? "inside a FREED block (use after cudaFree)" : (off < 0 ? "before the start" : "past the end"),
            m->bytes, reinterpret_cast<void*>(m->user), off, who);
    fflush(stderr);
    signal(SIGABRT, SIG_DFL);
    abort();
    (void)sig;
}

void install_handler() {
    if (g_handler_installed) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    g_handler_installed = true;
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

}  // namespace pq_emu

// A stream: the queue of work the host enqueued and the device has not run yet.
struct CUstream_st {
    struct Op {
        std::function<void()> run;
        bool wait = false;  // a cudaStreamWaitEvent (emu_events.cpp): running it may run another stream
    };
    std::deque<Op> q;
    int in_wait = 0;       // > 0 while one of its waits runs: the stream is stopped there (run_head skips it)
    bool blocking = true;  // created without cudaStreamNonBlocking: synchronous calls wait for it
};

namespace pq_emu {
namespace {

CUstream_st g_default_stream;               // the legacy default stream (stream argument nullptr)
std::vector<CUstream_st*> g_streams;        // every live stream, in creation order
std::recursive_mutex g_exec;                // one thread runs device work at a time
WorkStats g_work;

CUstream_st* resolve(cudaStream_t s) { return s ? s : &g_default_stream; }

// Runs the stream's queued work in order (the device catching up), on the calling host thread.
void drain(CUstream_st* s) {
    std::lock_guard<std::recursive_mutex> exec(g_exec);
    for (;;) {
        if (!run_head(s, false)) return;
    }
}

// What a synchronous call (cudaMemcpy, cudaMemset) waits for: the legacy stream and the blocking streams.
void drain_synchronous() {
    std::vector<CUstream_st*> blocking;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        for (CUstream_st* s : g_streams)
            if (s->blocking) blocking.push_back(s);
    }
    drain(&g_default_stream);
    for (CUstream_st* s : blocking) drain(s);
}

void drain_all() {
    std::vector<CUstream_st*> all;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        all = g_streams;
    }
    drain(&g_default_stream);
    for (CUstream_st* s : all) drain(s);
}

}  // namespace

namespace {
std::map<std::string, uint64_t> g_ledger;  // enqueued work by node name (emu_control.h)
uint64_t g_ledger_total = 0;
void note_node(const char* what) {  // g_mutex held; nullptr: not a graph node (event record / wait)
    if (!what) return;
    ++g_ledger[what];
    ++g_ledger_total;
}
}  // namespace

void enqueue(cudaStream_t stream, std::function<void()> op, const char* what) {
    if (capture_node(stream, op, what)) return;  // a graph node now (emu_graph.cpp), not queued work
    std::lock_guard<std::mutex> lock(g_mutex);
    note_node(what);
    resolve(stream)->q.push_back({std::move(op), false});
}

void enqueue_wait(cudaStream_t stream, std::function<void()> op) {
    std::lock_guard<std::mutex> lock(g_mutex);
    resolve(stream)->q.push_back({std::move(op), true});
}

bool run_head(cudaStream_t stream, bool stop_at_wait) {
    CUstream_st* s = resolve(stream);
    std::lock_guard<std::recursive_mutex> exec(g_exec);
    std::function<void()> op;
    bool wait;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (s->q.empty() || s->in_wait > 0 || (stop_at_wait && s->q.front().wait)) return false;
        op = std::move(s->q.front().run);
        wait = s->q.front().wait;
        s->q.pop_front();
        s->in_wait += wait;
    }
    op();
    if (wait) {
        std::lock_guard<std::mutex> lock(g_mutex);
        --s->in_wait;
    }
    return true;
}

void note_sync_node(const char* what) {
    std::lock_guard<std::mutex> lock(g_mutex);
    note_node(what);
}

std::map<std::string, uint64_t> node_ledger() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_ledger;
}

uint64_t nodes_enqueued() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_ledger_total;
}

void count_kernel() {
    std::lock_guard<std::mutex> lock(g_mutex);
    ++g_work.kernels;
}

WorkStats work_stats() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_work;
}

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
    // 256-byte alignment like cudaMalloc, the end against a guard page (memcheck, above); 0xFF bytes so
    // unwritten memory reads as NaN / -1.
    const size_t n = bytes ? (bytes + 255) & ~size_t(255) : 256;
    const size_t pg = page_size();
    const size_t data = (n + pg - 1) / pg * pg;
    const size_t len = data + 2 * pg;
    void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        *ptr = nullptr;
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        return record(cudaErrorMemoryAllocation);
    }
    char* b = static_cast<char*>(base);
    mprotect(b, pg, PROT_NONE);
    mprotect(b + pg + data, pg, PROT_NONE);
    char* p = b + pg + data - n;
    memset(p, 0xff, n);
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    install_handler();
    Mapping m;
    m.base = reinterpret_cast<uintptr_t>(base);
    m.len = len;
    m.user = reinterpret_cast<uintptr_t>(p);
    m.bytes = bytes;
    g_maps[m.base] = m;
    g_allocs[reinterpret_cast<uintptr_t>(p)] = bytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    if (!ptr) return cudaSuccess;
    pq_emu::drain_all();  // cudaFree waits for the device, as the real one does
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == g_allocs.end()) {
        fprintf(stderr, "pq_emu: cudaFree(%p) of a pointer that cudaMalloc did not return (or freed twice)\n", ptr);
        return record(cudaErrorInvalidDevicePointer);
    }
    g_allocs.erase(it);
    // Quarantine: no access from now on, physical pages returned, the addresses not reused for a while.
    auto mi = g_maps.upper_bound(reinterpret_cast<uintptr_t>(ptr));
    --mi;
    Mapping& m = mi->second;
    mprotect(reinterpret_cast<void*>(m.base), m.len, PROT_NONE);
    madvise(reinterpret_cast<void*>(m.base), m.len, MADV_DONTNEED);
    m.freed = true;
    g_quarantine += m.len;
    g_freed_order.push_back(m.base);
    while (g_quarantine > kQuarantineMax && !g_freed_order.empty()) {
        auto old = g_maps.find(g_freed_order.front());
        g_freed_order.erase(g_freed_order.begin());
        if (old == g_maps.end()) continue;
        munmap(reinterpret_cast<void*>(old->second.base), old->second.len);
        g_quarantine -= old->second.len;
        g_maps.erase(old);
    }
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
    if (!ptr) return cudaErrorInvalidValue;
    *ptr = aligned_alloc(256, bytes ? (bytes + 255) & ~size_t(255) : 256);
    if (!*ptr) return cudaErrorMemoryAllocation;
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    g_pinned[reinterpret_cast<uintptr_t>(*ptr)] = bytes ? bytes : 1;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
    if (!ptr) return cudaSuccess;
    pq_emu::drain_all();  // queued copies may still read or write it
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    g_pinned.erase(reinterpret_cast<uintptr_t>(ptr));
    free(ptr);
    return cudaSuccess;
}

namespace {
const char* copy_node_name(cudaMemcpyKind kind) {
    switch (kind) {
        case cudaMemcpyHostToDevice: return "memcpy HtoD";
        case cudaMemcpyDeviceToHost: return "memcpy DtoH";
        case cudaMemcpyDeviceToDevice: return "memcpy DtoD";
        default: return "memcpy";
    }
}
void do_copy(void* dst, const void* src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    ++g_work.copies;
    g_work.copy_bytes += bytes;
}
}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    {
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        const cudaError_t e = check_copy(dst, src, bytes, kind);
        if (e != cudaSuccess) return record(e);
    }
    pq_emu::drain_synchronous();
    do_copy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    bool src_pinned = false, dst_pinned = false;
    {
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        const cudaError_t e = check_copy(dst, src, bytes, kind);
        if (e != cudaSuccess) return record(e);
        src_pinned = in_pinned(src, bytes);
        dst_pinned = in_pinned(dst, bytes);
    }
    if (bytes == 0) return cudaSuccess;
    if (pq_emu::is_capturing(stream) && ((kind == cudaMemcpyHostToDevice && !src_pinned) ||
                                         (kind == cudaMemcpyDeviceToHost && !dst_pinned))) {
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        return record(cudaErrorStreamCaptureUnsupported);  // a graph cannot stage or wait on pageable memory
    }
    if (kind == cudaMemcpyHostToDevice && !src_pinned) {
        // Pageable source: the runtime stages it before returning, so the caller may reuse it at once.
        auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                          static_cast<const char*>(src) + bytes);
        pq_emu::enqueue(stream, [dst, staged]() { do_copy(dst, staged->data(), staged->size()); }, "memcpy HtoD");
        return cudaSuccess;
    }
    if (kind == cudaMemcpyDeviceToHost && !dst_pinned) {
        // Pageable destination: the call returns once the bytes are there (the stream has caught up).
        pq_emu::drain(pq_emu::resolve(stream));
        pq_emu::note_sync_node("memcpy DtoH");  // a stream node on a GPU, run here at once
        do_copy(dst, src, bytes);
        return cudaSuccess;
    }
    pq_emu::enqueue(stream, [dst, src, bytes]() { do_copy(dst, src, bytes); }, copy_node_name(kind));
    return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
    {
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        if (bytes && !in_device(dst, bytes)) {
            fprintf(stderr, "pq_emu: cudaMemset %p+%zu is not inside a device allocation\n", dst, bytes);
            return record(cudaErrorInvalidValue);
        }
    }
    pq_emu::drain_synchronous();
    memset(dst, value, bytes);
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    ++g_work.memsets;
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
    {
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        if (bytes && !in_device(dst, bytes)) {
            fprintf(stderr, "pq_emu: cudaMemset %p+%zu is not inside a device allocation\n", dst, bytes);
            return record(cudaErrorInvalidValue);
        }
    }
    pq_emu::enqueue(stream, [dst, value, bytes]() {
        memset(dst, value, bytes);
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        ++g_work.memsets;
    }, "memset");
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    *free_bytes = size_t(8) << 30;
    *total_bytes = size_t(8) << 30;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
    if (!stream) return cudaErrorInvalidValue;
    *stream = new CUstream_st();
    (*stream)->blocking = !(flags & cudaStreamNonBlocking);
    std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
    g_streams.push_back(*stream);
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream) return cudaErrorInvalidResourceHandle;
    pq_emu::drain(stream);  // the real call returns at once and the queued work still completes
    {
        std::lock_guard<std::mutex> lock(pq_emu::g_mutex);
        for (size_t i = 0; i < g_streams.size(); ++i)
            if (g_streams[i] == stream) g_streams.erase(g_streams.begin() + i);
    }
    delete stream;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    if (pq_emu::is_capturing(stream)) {
        pq_emu::set_last_error(cudaErrorStreamCaptureUnsupported);
        return cudaErrorStreamCaptureUnsupported;
    }
    pq_emu::drain(pq_emu::resolve(stream));
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
    pq_emu::drain_all();
    return cudaSuccess;
}

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
        case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorNotReady: return "cudaErrorNotReady";
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
        case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        default: return cudaGetErrorName(err);
    }
}

namespace pq_emu {
namespace {
cudaError_t g_device_count_error = cudaSuccess;
}
void set_device_count_error(cudaError_t err) { g_device_count_error = err; }
}  // namespace pq_emu

cudaError_t cudaGetDeviceCount(int* count) {
    if (pq_emu::g_device_count_error != cudaSuccess) {
        *count = 0;
        pq_emu::set_last_error(pq_emu::g_device_count_error);
        return pq_emu::g_device_count_error;
    }
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
