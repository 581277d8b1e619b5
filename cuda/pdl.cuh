// pdl.cuh: programmatic dependent launch (PDL, sm_90 and newer: H100, the RTX 50 series' sm_120), used by
// the decode body's launchers (as llama.cpp's CUDA backend does).
//
// Normally a kernel starts only once its predecessor in the stream has finished and its writes are
// flushed: every one of the ~500 launches of a decode step pays that gap (a few microseconds of idle SMs).
// A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may instead be launched while
// its predecessor still runs; it must then execute griddepcontrol.wait (pq_grid_dependency_wait) before
// it touches any global memory the predecessor reads or writes -- the wait returns once the predecessor
// grid has completed and its memory is visible. A primary may let its dependents launch before it exits
// with griddepcontrol.launch_dependents (pq_launch_dependents).
//
// Rules for kernels launched with PQ_LAUNCH_PDL:
//   - pq_grid_dependency_wait() is the first statement: nothing before it reads or writes global memory
//     (the wait is transitive: the predecessor itself waited for its own predecessor before finishing).
//   - pq_launch_dependents() right after the wait. The dependent grid is launched once every block of
//     this one has executed it or exited -- so only after all of this grid's blocks were scheduled: the
//     dependent's blocks take SM slots this grid no longer needs, start, and sit in their own wait until
//     this grid has finished. What is gained is the launch and block scheduling of the next kernel,
//     which otherwise starts only after this one's completion (the ~1 us gap per node on Ada/Blackwell).
//
// Where it is compiled: the device instructions only for __CUDA_ARCH__ >= 900; elsewhere (sm_86/89 SASS,
// the emulator) both helpers are empty. The host launches with the attribute only when the kernel's
// loaded code was compiled for compute_90 or newer (cudaFuncGetAttributes ptxVersion >= 90): an sm_90 card
// running the compute_89 PTX through the JIT has no wait instruction in it and gets plain launches.
// $PYQWEN_CUDA_PDL=0 turns it off.
//
// The emulator's twin: PQ_LAUNCH_PDL is PQ_LAUNCH and the helpers do nothing -- the emulator runs a
// stream's kernels one after the other (a dependent never overlaps its primary), which is exactly the
// ordering the wait guarantees, so the emulated results are what a PDL launch computes. What the twin
// cannot show is a kernel that forgot the wait (a real race on sm_90+); the rule above (the wait first)
// and tests/cuda/test_decode_graph_emu.py's source check keep every PDL kernel honest.
#pragma once

#include "compat.cuh"

#if !defined(PQ_CUDA_EMU)
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#endif

namespace pq::cuda {

__device__ __forceinline__ void pq_grid_dependency_wait() {
#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pq_launch_dependents() {
#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#if !defined(PQ_CUDA_EMU)
// Whether launches of `kernel` on the current device may carry the PDL attribute (cached per device and
// kernel; see the header comment). Host work at the launch call only: the decode body is recorded into a
// graph once per bucket, so this is not paid per token.
inline bool pdl_usable(const void* kernel) {
    static const bool enabled = [] {
        const char* e = std::getenv("PYQWEN_CUDA_PDL");
        return !(e && e[0] == '0');
    }();
    if (!enabled) return false;
    static std::mutex mu;
    static std::map<std::pair<int, const void*>, bool> cache;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find({dev, kernel});
    if (it != cache.end()) return it->second;
    cudaFuncAttributes a;
    bool ok = false;
    if (cudaFuncGetAttributes(&a, kernel) == cudaSuccess) ok = a.ptxVersion >= 90;
    else cudaGetLastError();
    cache[{dev, kernel}] = ok;
    return ok;
}

template <class... P, class... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
    if (!pdl_usable(reinterpret_cast<const void*>(kernel))) {
        kernel<<<grid, block, smem, stream>>>(static_cast<P>(args)...);
        return;
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...);  // an error stays the sticky last error
}
#endif

}  // namespace pq::cuda

// PQ_LAUNCH_PDL(kernel, grid, block, smem, stream, args...): PQ_LAUNCH with programmatic stream
// serialization where the device and the loaded code have it (the kernel must follow the rules above).
#if defined(PQ_CUDA_EMU)
#define PQ_LAUNCH_PDL(kernel, grid, block, smem, stream, ...) PQ_LAUNCH(kernel, grid, block, smem, stream, ##__VA_ARGS__)
#else
#define PQ_LAUNCH_PDL(kernel, grid, block, smem, stream, ...) \
    ::pq::cuda::launch_pdl(kernel, dim3(grid), dim3(block), (size_t)(smem), stream, ##__VA_ARGS__)
#endif
