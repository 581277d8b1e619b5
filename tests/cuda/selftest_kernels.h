// selftest_kernels.h: host entry points of the emulator self-test kernels (selftest_kernels.cu).
//
// No include guard on purpose: selftest_module.cpp includes it once per namespace, because the kernels
// are compiled twice -- normally (namespace selftest) and with -DPQ_SELFTEST_NO_BARRIER (namespace
// nobarrier) -- to show that the emulator turns a missing __syncthreads into a wrong result.
#include <cstdint>
#include <vector>

#ifndef PQ_SELFTEST_NS
#error "define PQ_SELFTEST_NS before including selftest_kernels.h"
#endif

namespace PQ_SELFTEST_NS {

// Sum of each 256-value chunk of x: static __shared__ tree reduction.
std::vector<float> block_sum(const std::vector<float>& x);
// Same with a runtime block size and dynamic shared memory.
std::vector<float> dyn_block_sum(const std::vector<float>& x, int block);
// Warp intrinsics on one block of 64 threads; returns kWarpTests rows of 64 ints (see the .cu).
constexpr int kWarpTests = 13;
std::vector<int32_t> warp_ops(const std::vector<int32_t>& x);
// __syncthreads_count/_and/_or of (x[t] > 0) over a block of x.size() threads: 3 rows of x.size().
std::vector<int32_t> barrier_votes(const std::vector<int32_t>& x);
// Thread (8, 4, 2) block: per thread {linear id from threadIdx, lane-0 value of its warp}.
std::vector<int32_t> block_3d();
// Atomics over many blocks: {histogram..., max, float sum as int, u64 sum low, u64 sum high}.
std::vector<int64_t> atomics(const std::vector<int32_t>& vals, int nbins);
// __dp4a signed and unsigned on packed int8x4 operands.
std::vector<int32_t> dp4a(const std::vector<int32_t>& a, const std::vector<int32_t>& b, const std::vector<int32_t>& c,
                          bool is_unsigned);
// fp16 / bf16: rows {half bits, bf16 bits} as uint16 values, for each float of x.
std::vector<uint16_t> to_16bit(const std::vector<float>& x);
// Half arithmetic on pairs: rows {hadd, hmul, hsub, hfma(a,b,a)} as half bits.
std::vector<uint16_t> half_ops(const std::vector<float>& a, const std::vector<float>& b);
// Error codes from invalid launches: {2048 threads, grid.y 70000, 64 KiB dynamic smem without opt-in,
// 64 KiB with opt-in, last error after a good launch}.
std::vector<int> launch_errors();

// Each of these aborts the process with a pq_emu error message (tests run them in a subprocess).
void divergent_exit();      // half the block exits, the other half waits at __syncthreads
void divergent_sites();     // odd and even threads wait at two different __syncthreads
void shfl_lane_exits();     // lane 5 exits before a full-mask shuffle
void shfl_vs_barrier();     // lane 0 shuffles while the other lanes wait at __syncthreads
void shfl_not_in_mask();    // a lane calls a shuffle with a mask that excludes itself
void shfl_mask_mismatch();  // lanes 0-15 shuffle with a half-warp mask, lanes 16-31 with the full mask
void shfl_missing_lanes();  // full-mask shuffle in a block of 48 threads
void smem_overflow();       // writes past the dynamic shared memory
void trap();                // __trap()
void oob_read();            // a kernel reads 1024 floats past the end of a 100-float cudaMalloc (memcheck)
void use_after_free();      // a kernel writes a buffer freed before the launch (memcheck)

// Racecheck self-tests (a racecheck build reports and aborts where noted):
int rc_write_write();                         // threads 0 and 33 write one static __shared__ int: write-write
std::vector<int> rc_warp_exchange(bool sync); // lanes swap through dynamic shared: clean with __syncwarp,
                                              // write-read race without
std::vector<int> rc_cross_warp();             // the swap across warps with only __syncwarp: write-read race
int rc_shared_atomics();                      // 96 atomicAdds on one shared int (no race): returns 96

// Stream semantics: {device word before the sync (-1: untouched), pinned-source copy + 1 after it,
// pageable-source copy + 1 after it} when the host changes both sources after queueing the copies.
std::vector<int> stream_order();

// Events: a producer stream fills two buffers in turn (step i: the value i into buffer i % 2), a consumer
// stream copies each to its own output. Returns {cudaEventQuery said not-ready before the sync, ready after
// it, then per step the value the consumer saw (-2: a mix)}. mode 0: both waits (0, 1, ..., 5); mode 1:
// the consumer does not wait for the fill (planted: stale -1 bytes); mode 2: the producer does not wait
// for the consumer before reusing a buffer (planted: later steps' values).
std::vector<int> event_pipeline(int mode);
// A wait takes the record the event holds at the call (a two-stream handshake through one re-recorded event):
// {value b copied after a's first fill (1), after a's second (2)}; a never-recorded event does not wait.
std::vector<int> event_rerecord();

// CUDA graphs: {device word after the capture (-1: nothing ran), nodes captured (2), the kernel node's
// by-value argument after replay (5, the host changed it to 7), the copy node's pinned source (11, written
// after the capture), cudaGraphExecUpdate with the same topology (0), the updated argument (9), the update
// with one node more (910, cudaErrorGraphExecUpdateFailure), its result (2, topology changed), the
// argument after the refused update (9), a captured copy from pageable memory (900, unsupported)}.
std::vector<int> graph_semantics();

}  // namespace PQ_SELFTEST_NS
