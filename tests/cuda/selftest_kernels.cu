// selftest_kernels.cu: kernels that pin down the emulator's semantics (tests/cuda/test_emu_harness.py).
//
// Written as ordinary CUDA (cuda/compile_check.sh also compiles this file with nvcc), so what the
// harness is shown to catch here is what it catches in the real kernels.
#include <cstring>
#include <vector>

#include "compat.cuh"

#ifndef PQ_SELFTEST_NS
#define PQ_SELFTEST_NS selftest
#endif
#include "selftest_kernels.h"

#ifdef PQ_SELFTEST_NO_BARRIER
#define SELFTEST_BARRIER() ((void)0)
#else
#define SELFTEST_BARRIER() __syncthreads()
#endif

namespace PQ_SELFTEST_NS {

namespace {

template <class T>
T* to_dev(const std::vector<T>& v) {
    T* d = nullptr;
    cudaMalloc(&d, v.size() * sizeof(T) + 1);
    cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
    return d;
}

template <class T>
T* dev_alloc(size_t n) {
    T* d = nullptr;
    cudaMalloc(&d, n * sizeof(T) + 1);
    return d;
}

template <class T>
std::vector<T> to_host(T* d, size_t n) {
    std::vector<T> h(n);
    cudaDeviceSynchronize();
    cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
    cudaFree(d);
    return h;
}

constexpr int kSumBlock = 256;

__global__ void block_sum_kernel(const float* x, float* out, int n) {
    __shared__ float s[kSumBlock];
    const int i = blockIdx.x * kSumBlock + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    SELFTEST_BARRIER();
    for (int stride = kSumBlock / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        SELFTEST_BARRIER();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

__global__ void dyn_block_sum_kernel(const float* x, float* out, int n) {
    PQ_DYN_SHARED(float, s);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    SELFTEST_BARRIER();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        SELFTEST_BARRIER();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

constexpr int kWarpBlock = 64;

__global__ void warp_ops_kernel(const int* x, int* o) {
    const int t = threadIdx.x, lane = t % 32, N = kWarpBlock;
    const int v = x[t];
    {  // 0: two half-warp reductions in flight at once, with disjoint masks
        const unsigned m = lane < 16 ? 0x0000ffffu : 0xffff0000u;
        int s = v;
        for (int off = 8; off > 0; off >>= 1) s += __shfl_xor_sync(m, s, off);
        o[0 * N + t] = s;
    }
    o[1 * N + t] = __shfl_sync(0xffffffffu, v, 3, 8);        // 1: lane 3 of each 8-lane segment
    o[2 * N + t] = __shfl_up_sync(0xffffffffu, v, 2, 16);    // 2: up by 2 within 16 (own value at the start)
    o[3 * N + t] = __shfl_down_sync(0xffffffffu, v, 3);      // 3: down by 3 (own value at the end)
    o[4 * N + t] = __shfl_xor_sync(0xffffffffu, v, 5, 8);    // 4: butterfly within 8
    {  // 5: ballots of even and odd lanes with interleaved masks
        const unsigned m = lane % 2 == 0 ? 0x55555555u : 0xaaaaaaaau;
        o[5 * N + t] = (int)__ballot_sync(m, v & 1);
    }
    if (lane < 16) {  // 6, 7: votes of the low half-warp only
        o[6 * N + t] = __any_sync(0x0000ffffu, v > 90);
        o[7 * N + t] = __all_sync(0x0000ffffu, v >= 0);
    } else {
        o[6 * N + t] = -2;
        o[7 * N + t] = -2;
    }
    // 8: a source lane outside the mask is undefined in CUDA; the emulator returns all-ones (-1)
    o[8 * N + t] = lane < 16 ? __shfl_sync(0x0000ffffu, v, 20) : -2;
    {  // 9: 64-bit shuffle
        const double dv = v * 0.5;
        o[9 * N + t] = (int)(2.0 * __shfl_down_sync(0xffffffffu, dv, 1));
    }
    // 10: sm_80 warp reduction over the odd lanes
    o[10 * N + t] = lane % 2 ? __reduce_add_sync(0xaaaaaaaau, v) : -2;
    {  // 11: __syncwarp orders shared-memory traffic between the lanes of a warp
        __shared__ int sw[kWarpBlock];
        sw[t] = v;
        __syncwarp();
        o[11 * N + t] = sw[t ^ 1];
    }
    // 12: __activemask() is whichever lanes happen to run converged -- any subset holding the caller
    // (the emulator leaves out lanes that already exited); only that much is portable to check.
    o[12 * N + t] = (int)((__activemask() >> lane) & 1u);
}

__global__ void barrier_votes_kernel(const int* x, int* o) {
    const int t = threadIdx.x, n = blockDim.x;
    const int p = x[t] > 0;
    o[0 * n + t] = __syncthreads_count(p);
    o[1 * n + t] = __syncthreads_and(p);
    o[2 * n + t] = __syncthreads_or(p);
}

__global__ void block_3d_kernel(int* o) {
    const int lin = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
    o[2 * lin] = lin;
    o[2 * lin + 1] = __shfl_sync(0xffffffffu, lin, 0);
}

__global__ void atomics_kernel(const int* vals, int n, int nbins, int* hist, int* maxv, unsigned* fsum,
                               unsigned long long* usum) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int v = vals[i];
        atomicAdd(&hist[v % nbins], 1);
        atomicMax(maxv, v);
        // float add through a CAS loop, the classic pattern for types without a native atomic
        unsigned old = *fsum, assumed;
        do {
            assumed = old;
            old = atomicCAS(fsum, assumed, __float_as_uint(__uint_as_float(assumed) + (float)v));
        } while (assumed != old);
        atomicAdd(usum, (unsigned long long)v << 20);
    }
}

__global__ void dp4a_kernel(const int* a, const int* b, const int* c, int* o, int n, bool is_unsigned) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    o[i] = is_unsigned ? (int)__dp4a((unsigned)a[i], (unsigned)b[i], (unsigned)c[i]) : __dp4a(a[i], b[i], c[i]);
}

__global__ void to_16bit_kernel(const float* x, unsigned short* o, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    o[i] = __half_as_ushort(__float2half(x[i]));
    o[n + i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
}

__global__ void half_ops_kernel(const float* a, const float* b, unsigned short* o, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __half ha = __float2half(a[i]), hb = __float2half(b[i]);
    o[i] = __half_as_ushort(__hadd(ha, hb));
    o[n + i] = __half_as_ushort(__hmul(ha, hb));
    o[2 * n + i] = __half_as_ushort(__hsub(ha, hb));
    o[3 * n + i] = __half_as_ushort(__hfma(ha, hb, ha));
}

__global__ void noop_kernel(int* o) {
    PQ_DYN_SHARED(int, s);
    s[threadIdx.x] = 1;
    if (o && threadIdx.x == 0) o[0] = s[0];
}

// ---- kernels that must abort under the emulator --------------------------------------------------
__global__ void divergent_exit_kernel() {
    if (threadIdx.x >= 32) return;
    __syncthreads();
}

__global__ void divergent_sites_kernel() {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}

__global__ void shfl_lane_exits_kernel(int* o) {
    if (threadIdx.x == 5) return;
    o[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void shfl_vs_barrier_kernel(int* o) {
    if (threadIdx.x == 0) o[0] = __shfl_sync(0xffffffffu, 1, 0);
    else __syncthreads();
}

__global__ void shfl_not_in_mask_kernel(int* o) {
    o[threadIdx.x] = __shfl_sync(threadIdx.x == 3 ? 0x1u : 0xfffffff7u, (int)threadIdx.x, 0);
}

__global__ void shfl_mask_mismatch_kernel(int* o) {
    const unsigned m = threadIdx.x < 16 ? 0x0000ffffu : 0xffffffffu;
    o[threadIdx.x] = __shfl_sync(m, (int)threadIdx.x, 0);
}

__global__ void shfl_missing_lanes_kernel(int* o) {
    o[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void smem_overflow_kernel() {
    PQ_DYN_SHARED(float, s);
    s[threadIdx.x + 8] = 1.0f;  // 32 threads, 128 bytes requested: threads 24..31 write past the end
}

// ---- racecheck self-tests (emu_racecheck.h; a racecheck build aborts on the races planted here) --------

__global__ void rc_write_write_kernel(int* out) {
    __shared__ int slot[8];
    if (threadIdx.x == 0 || threadIdx.x == 33) slot[5] = (int)threadIdx.x;  // two warps, one word, no barrier
    __syncthreads();
    if (threadIdx.x == 0) out[0] = slot[5];
}

// Each lane writes its slot, then reads its neighbour's (lane ^ 1): ordered by __syncwarp when `sync`.
__global__ void rc_warp_exchange_kernel(int* out, bool sync) {
    PQ_DYN_SHARED(int, s);
    const int t = threadIdx.x;
    s[t] = 10 * t;
    if (sync) __syncwarp();
    out[t] = s[t ^ 1];
}

// The same exchange across warps (t ^ 32): __syncwarp orders only the lanes of one warp.
__global__ void rc_cross_warp_kernel(int* out) {
    PQ_DYN_SHARED(int, s);
    const int t = threadIdx.x;
    s[t] = t;
    __syncwarp();
    out[t] = s[t ^ 32];
}

// Every thread bumps one shared counter atomically (not a race); thread 0 reads it after the barrier.
__global__ void rc_shared_atomics_kernel(int* out) {
    __shared__ int count;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    atomicAdd(&count, 1);
    __syncthreads();
    if (threadIdx.x == 0) out[0] = count;
}

__global__ void add_one_kernel(int* p, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] += 1;
}

// Thread 0 stores v (a by-value argument: what a graph replays is the value at the capture).
__global__ void store_kernel(int* p, int v) {
    if (threadIdx.x == 0) *p = v;
}

// Reads element n of an n-element buffer (planted out-of-bounds read; memcheck must catch it).
__global__ void oob_read_kernel(const float* p, int n, float* out) {
    if (threadIdx.x == 3) out[0] = p[n + 1024];
}

__global__ void fill_kernel(int* p, int n, int v) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = v;
}

__global__ void copy_kernel(const int* src, int* dst, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i];
}

__global__ void trap_kernel() {
    if (threadIdx.x == 7) __trap();
}

}  // namespace

std::vector<float> block_sum(const std::vector<float>& x) {
    const int n = (int)x.size(), nb = (n + kSumBlock - 1) / kSumBlock;
    float* dx = to_dev(x);
    float* dout = dev_alloc<float>(nb);
    PQ_LAUNCH(block_sum_kernel, nb, kSumBlock, 0, nullptr, dx, dout, n);
    cudaFree(dx);
    return to_host(dout, nb);
}

std::vector<float> dyn_block_sum(const std::vector<float>& x, int block) {
    const int n = (int)x.size(), nb = (n + block - 1) / block;
    float* dx = to_dev(x);
    float* dout = dev_alloc<float>(nb);
    PQ_LAUNCH(dyn_block_sum_kernel, nb, block, block * sizeof(float), nullptr, dx, dout, n);
    cudaFree(dx);
    return to_host(dout, nb);
}

std::vector<int32_t> warp_ops(const std::vector<int32_t>& x) {
    int* dx = to_dev(x);
    int* dout = dev_alloc<int>(kWarpTests * kWarpBlock);
    PQ_LAUNCH(warp_ops_kernel, 1, kWarpBlock, 0, nullptr, dx, dout);
    cudaFree(dx);
    return to_host(dout, kWarpTests * kWarpBlock);
}

std::vector<int32_t> barrier_votes(const std::vector<int32_t>& x) {
    int* dx = to_dev(x);
    int* dout = dev_alloc<int>(3 * x.size());
    PQ_LAUNCH(barrier_votes_kernel, 1, (int)x.size(), 0, nullptr, dx, dout);
    cudaFree(dx);
    return to_host(dout, 3 * x.size());
}

std::vector<int32_t> block_3d() {
    int* dout = dev_alloc<int>(2 * 64);
    PQ_LAUNCH(block_3d_kernel, 1, dim3(8, 4, 2), 0, nullptr, dout);
    return to_host(dout, 2 * 64);
}

std::vector<int64_t> atomics(const std::vector<int32_t>& vals, int nbins) {
    int* dv = to_dev(vals);
    int* hist = dev_alloc<int>(nbins);
    int* maxv = dev_alloc<int>(1);
    unsigned* fsum = dev_alloc<unsigned>(1);
    unsigned long long* usum = dev_alloc<unsigned long long>(1);
    cudaMemset(hist, 0, nbins * sizeof(int));
    const int lowest = INT_MIN;
    cudaMemcpy(maxv, &lowest, sizeof(int), cudaMemcpyHostToDevice);
    cudaMemset(fsum, 0, sizeof(unsigned));
    cudaMemset(usum, 0, sizeof(unsigned long long));
    PQ_LAUNCH(atomics_kernel, 7, 96, 0, nullptr, dv, (int)vals.size(), nbins, hist, maxv, fsum, usum);
    cudaFree(dv);
    std::vector<int64_t> out;
    for (int h : to_host(hist, nbins)) out.push_back(h);
    out.push_back(to_host(maxv, 1)[0]);
    const unsigned fbits = to_host(fsum, 1)[0];
    float f;
    memcpy(&f, &fbits, sizeof f);
    out.push_back((int64_t)f);
    const unsigned long long u = to_host(usum, 1)[0];
    out.push_back((int64_t)(u & 0xffffffffu));
    out.push_back((int64_t)(u >> 32));
    return out;
}

std::vector<int32_t> dp4a(const std::vector<int32_t>& a, const std::vector<int32_t>& b, const std::vector<int32_t>& c,
                          bool is_unsigned) {
    const int n = (int)a.size();
    int *da = to_dev(a), *db = to_dev(b), *dc = to_dev(c), *dout = dev_alloc<int>(n);
    PQ_LAUNCH(dp4a_kernel, (n + 127) / 128, 128, 0, nullptr, da, db, dc, dout, n, is_unsigned);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    return to_host(dout, n);
}

std::vector<uint16_t> to_16bit(const std::vector<float>& x) {
    const int n = (int)x.size();
    float* dx = to_dev(x);
    unsigned short* dout = dev_alloc<unsigned short>(2 * n);
    PQ_LAUNCH(to_16bit_kernel, (n + 127) / 128, 128, 0, nullptr, dx, dout, n);
    cudaFree(dx);
    return to_host(dout, 2 * n);
}

std::vector<uint16_t> half_ops(const std::vector<float>& a, const std::vector<float>& b) {
    const int n = (int)a.size();
    float *da = to_dev(a), *db = to_dev(b);
    unsigned short* dout = dev_alloc<unsigned short>(4 * n);
    PQ_LAUNCH(half_ops_kernel, (n + 127) / 128, 128, 0, nullptr, da, db, dout, n);
    cudaFree(da);
    cudaFree(db);
    return to_host(dout, 4 * n);
}

std::vector<int> launch_errors() {
    std::vector<int> errs;
    cudaGetLastError();
    PQ_LAUNCH(noop_kernel, 1, 2048, 0, nullptr, (int*)nullptr);
    errs.push_back(cudaGetLastError());
    PQ_LAUNCH(noop_kernel, dim3(1, 70000), 32, 0, nullptr, (int*)nullptr);
    errs.push_back(cudaGetLastError());
    PQ_LAUNCH(noop_kernel, 1, 32, 64 * 1024, nullptr, (int*)nullptr);
    errs.push_back(cudaGetLastError());
    cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    int* d = dev_alloc<int>(1);
    PQ_LAUNCH(noop_kernel, 1, 32, 64 * 1024, nullptr, d);
    errs.push_back(cudaGetLastError());
    errs.push_back(to_host(d, 1)[0] == 1 ? 0 : -1);
    return errs;
}

// The aborting launches run when the host waits: each entry point synchronises.
void divergent_exit() { PQ_LAUNCH(divergent_exit_kernel, 1, 64, 0, nullptr); cudaDeviceSynchronize(); }
void divergent_sites() { PQ_LAUNCH(divergent_sites_kernel, 1, 64, 0, nullptr); cudaDeviceSynchronize(); }
void shfl_lane_exits() {
    int* d = dev_alloc<int>(32);
    PQ_LAUNCH(shfl_lane_exits_kernel, 1, 32, 0, nullptr, d); cudaDeviceSynchronize();
}
void shfl_vs_barrier() {
    int* d = dev_alloc<int>(32);
    PQ_LAUNCH(shfl_vs_barrier_kernel, 1, 32, 0, nullptr, d); cudaDeviceSynchronize();
}
void shfl_not_in_mask() {
    int* d = dev_alloc<int>(32);
    PQ_LAUNCH(shfl_not_in_mask_kernel, 1, 32, 0, nullptr, d); cudaDeviceSynchronize();
}
void shfl_mask_mismatch() {
    int* d = dev_alloc<int>(32);
    PQ_LAUNCH(shfl_mask_mismatch_kernel, 1, 32, 0, nullptr, d); cudaDeviceSynchronize();
}
void shfl_missing_lanes() {
    int* d = dev_alloc<int>(48);
    PQ_LAUNCH(shfl_missing_lanes_kernel, 1, 48, 0, nullptr, d); cudaDeviceSynchronize();
}
void smem_overflow() { PQ_LAUNCH(smem_overflow_kernel, 1, 32, 128, nullptr); cudaDeviceSynchronize(); }

int rc_write_write() {
    int* d = dev_alloc<int>(1);
    PQ_LAUNCH(rc_write_write_kernel, 1, 64, 0, nullptr, d);
    return to_host(d, 1)[0];
}

std::vector<int> rc_warp_exchange(bool sync) {
    int* d = dev_alloc<int>(64);
    PQ_LAUNCH(rc_warp_exchange_kernel, 1, 64, 64 * sizeof(int), nullptr, d, sync);
    return to_host(d, 64);
}

std::vector<int> rc_cross_warp() {
    int* d = dev_alloc<int>(64);
    PQ_LAUNCH(rc_cross_warp_kernel, 1, 64, 64 * sizeof(int), nullptr, d);
    return to_host(d, 64);
}

int rc_shared_atomics() {
    int* d = dev_alloc<int>(1);
    PQ_LAUNCH(rc_shared_atomics_kernel, 1, 96, 0, nullptr, d);
    return to_host(d, 1)[0];
}
void trap() { PQ_LAUNCH(trap_kernel, 2, 32, 0, nullptr); cudaDeviceSynchronize(); }

std::vector<int> stream_order() {
    std::vector<int> r;
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    int* d = dev_alloc<int>(2);
    int* pinned = nullptr;
    cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(int));
    int pageable = 1;
    *pinned = 1;
    cudaMemcpyAsync(d, pinned, sizeof(int), cudaMemcpyHostToDevice, s);
    cudaMemcpyAsync(d + 1, &pageable, sizeof(int), cudaMemcpyHostToDevice, s);
    PQ_LAUNCH(add_one_kernel, 1, 32, 0, s, d, 2);
    *pinned = 2;   // before the stream ran: the queued copy reads 2 (as a GPU's DMA would)
    pageable = 2;  // a pageable source was staged at the call: 1 is copied
    int peek[2];
    std::memcpy(peek, d, sizeof peek);  // emulator only (device memory is host memory): untouched (0xff) yet
    r.push_back(peek[0]);
    cudaStreamSynchronize(s);
    int got[2];
    cudaMemcpy(got, d, sizeof got, cudaMemcpyDeviceToHost);
    r.push_back(got[0]);
    r.push_back(got[1]);
    cudaFreeHost(pinned);
    cudaFree(d);
    cudaStreamDestroy(s);
    return r;
}

std::vector<int> event_pipeline(int mode) {
    constexpr int kSteps = 6, kLen = 64;
    cudaStream_t prod, cons;
    cudaStreamCreateWithFlags(&prod, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&cons, cudaStreamNonBlocking);
    cudaEvent_t ready[2], freed[2];
    for (int b = 0; b < 2; ++b) {
        cudaEventCreateWithFlags(&ready[b], cudaEventDisableTiming);
        cudaEventCreateWithFlags(&freed[b], cudaEventDisableTiming);
    }
    int* buf = dev_alloc<int>(2 * kLen);
    int* out = dev_alloc<int>(kSteps * kLen);
    for (int i = 0; i < kSteps; ++i) {
        const int b = i % 2;
        if (i >= 2 && mode != 2) cudaStreamWaitEvent(prod, freed[b], 0);  // step i-2 has read buffer b
        PQ_LAUNCH(fill_kernel, 1, kLen, 0, prod, buf + b * kLen, kLen, i);
        cudaEventRecord(ready[b], prod);
        if (mode != 1) cudaStreamWaitEvent(cons, ready[b], 0);  // buffer b holds step i
        PQ_LAUNCH(copy_kernel, 1, kLen, 0, cons, buf + b * kLen, out + i * kLen, kLen);
        cudaEventRecord(freed[b], cons);
    }
    std::vector<int> r;
    r.push_back(cudaEventQuery(freed[(kSteps - 1) % 2]) == cudaErrorNotReady ? 1 : 0);  // on a GPU: likely
    cudaEventSynchronize(freed[(kSteps - 1) % 2]);
    r.push_back(cudaEventQuery(freed[(kSteps - 1) % 2]) == cudaSuccess ? 1 : 0);
    std::vector<int> h(kSteps * kLen);
    cudaMemcpy(h.data(), out, h.size() * sizeof(int), cudaMemcpyDeviceToHost);
    for (int i = 0; i < kSteps; ++i) {
        int v = h[i * kLen];
        for (int j = 1; j < kLen; ++j)
            if (h[i * kLen + j] != v) v = -2;  // a step saw two values: never expected
        r.push_back(v);
    }
    cudaStreamSynchronize(prod);
    for (int b = 0; b < 2; ++b) {
        cudaEventDestroy(ready[b]);
        cudaEventDestroy(freed[b]);
    }
    cudaFree(buf);
    cudaFree(out);
    cudaStreamDestroy(prod);
    cudaStreamDestroy(cons);
    return r;
}

std::vector<int> event_rerecord() {
    // A handshake that completes only if each wait takes the record its event holds at the call: b's first
    // wait is for a's first record; a's refill waits for b's copy; a then records e again for b's second wait.
    // (Had b's first wait meant e's latest record, it would wait for work queued behind a wait for b.)
    cudaStream_t a, b;
    cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
    cudaEvent_t e, f, never;
    cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    cudaEventCreateWithFlags(&f, cudaEventDisableTiming);
    cudaEventCreateWithFlags(&never, cudaEventDisableTiming);
    int* d = dev_alloc<int>(3);
    PQ_LAUNCH(fill_kernel, 1, 1, 0, a, d, 1, 1);
    cudaEventRecord(e, a);
    cudaStreamWaitEvent(b, e, 0);
    cudaStreamWaitEvent(b, never, 0);  // never recorded: no wait
    PQ_LAUNCH(copy_kernel, 1, 1, 0, b, d, d + 1, 1);
    cudaEventRecord(f, b);
    cudaStreamWaitEvent(a, f, 0);
    PQ_LAUNCH(fill_kernel, 1, 1, 0, a, d, 1, 2);
    cudaEventRecord(e, a);
    cudaStreamWaitEvent(b, e, 0);
    PQ_LAUNCH(copy_kernel, 1, 1, 0, b, d, d + 2, 1);
    cudaStreamSynchronize(b);
    int h[3];
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    cudaStreamSynchronize(a);
    cudaEventDestroy(e);
    cudaEventDestroy(f);
    cudaEventDestroy(never);
    cudaFree(d);
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
    return {h[1], h[2]};
}

std::vector<int> graph_semantics() {
    std::vector<int> r;
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    int* d = dev_alloc<int>(2);
    int* pinned = nullptr;
    cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(int));
    int v = 5, pageable = 0;
    *pinned = 1;
    auto capture = [&](int value, bool extra) {
        cudaGraph_t g = nullptr;
        cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed);
        PQ_LAUNCH(store_kernel, 1, 32, 0, s, d, value);
        cudaMemcpyAsync(d + 1, pinned, sizeof(int), cudaMemcpyHostToDevice, s);
        if (extra) PQ_LAUNCH(add_one_kernel, 1, 32, 0, s, d, 1);
        cudaStreamEndCapture(s, &g);
        return g;
    };
    cudaGraph_t g = capture(v, false);
    int peek = 0;
    std::memcpy(&peek, d, sizeof peek);  // emulator only (device memory is host memory): untouched (0xff)
    r.push_back(peek);
    size_t n = 0;
    cudaGraphGetNodes(g, nullptr, &n);
    r.push_back((int)n);
    cudaGraphExec_t exec = nullptr;
    cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    v = 7;        // the kernel node keeps 5
    *pinned = 11;  // the copy node reads the pinned word when it runs
    cudaGraphLaunch(exec, s);
    cudaStreamSynchronize(s);
    int got[2];
    cudaMemcpy(got, d, sizeof got, cudaMemcpyDeviceToHost);
    r.push_back(got[0]);
    r.push_back(got[1]);
    // in-place update with a graph of the same topology: the new arguments
    g = capture(9, false);
    cudaGraphExecUpdateResultInfo info;
    r.push_back((int)cudaGraphExecUpdate(exec, g, &info));
    cudaGraphDestroy(g);
    cudaGraphLaunch(exec, s);
    cudaStreamSynchronize(s);
    cudaMemcpy(got, d, sizeof got, cudaMemcpyDeviceToHost);
    r.push_back(got[0]);
    // another topology (one more node): refused, the executable graph unchanged
    g = capture(3, true);
    r.push_back((int)cudaGraphExecUpdate(exec, g, &info));
    r.push_back((int)info.result);
    cudaGetLastError();
    cudaGraphDestroy(g);
    cudaGraphLaunch(exec, s);
    cudaStreamSynchronize(s);
    cudaMemcpy(got, d, sizeof got, cudaMemcpyDeviceToHost);
    r.push_back(got[0]);
    // a copy from pageable memory cannot be captured
    cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed);
    r.push_back((int)cudaMemcpyAsync(d, &pageable, sizeof(int), cudaMemcpyHostToDevice, s));
    cudaStreamEndCapture(s, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    cudaGraphExecDestroy(exec);
    cudaFreeHost(pinned);
    cudaFree(d);
    cudaStreamDestroy(s);
    return r;
}

void oob_read() {
    float* p = dev_alloc<float>(100);
    float* o = dev_alloc<float>(1);
    PQ_LAUNCH(oob_read_kernel, 1, 32, 0, nullptr, p, 100, o);
    cudaDeviceSynchronize();
}

void use_after_free() {
    int* p = dev_alloc<int>(64);
    cudaFree(p);
    PQ_LAUNCH(add_one_kernel, 1, 64, 0, nullptr, p, 64);
    cudaDeviceSynchronize();
}

}  // namespace PQ_SELFTEST_NS
