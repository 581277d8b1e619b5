// emu_events.h: CUDA events for the emulator -- cross-stream ordering (emu_events.cpp).
//
// A stream is a queue that runs when something waits for it (emu_runtime.h). cudaEventRecord(e, A) queues a
// marker on A; cudaStreamWaitEvent(B, e) queues on B a wait for the record that e holds *at the call* (a
// later re-record of e does not move it, as in CUDA). When B reaches the wait, the emulator runs A up to that
// marker, then keeps running A as far as it can without passing another wait: the producer runs as late as
// possible and, once started, as early as possible. So both ordering bugs show up deterministically: a
// consumer missing its wait runs before the producer (stale data), and a producer missing its wait for a
// consumer (buffer reuse) runs ahead and overwrites what the consumer has not read yet. Nothing else runs A:
// work on a stream nobody waits for stays deferred. Events carry no timing (cudaEventElapsedTime is absent).
#pragma once

struct CUevent_st;
typedef CUevent_st* cudaEvent_t;
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
