// emu_events.cpp: cudaEvent* and cudaStreamWaitEvent on the emulator's stream queues (emu_events.h says
// what ordering they give and why).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>

#include "emu_graph.h"  // is_capturing: events inside a capture are not modelled
#include "emu_runtime.h"

namespace {

// What the queued markers and waits share; outlives cudaEventDestroy (queued work still refers to it).
struct EventState {
    std::mutex mu;
    uint64_t recorded = 0;          // records issued by the host
    uint64_t done = 0;              // records the device has passed
    cudaStream_t stream = nullptr;  // the stream of the latest record
};

uint64_t done_of(EventState& st) {
    std::lock_guard<std::mutex> lock(st.mu);
    return st.done;
}

// Runs `stream` until the event's record number `n` has passed, then on while its next entry is not a wait.
// A record's stream cannot be destroyed before it ran (cudaStreamDestroy drains it), so once `done` says
// so, the stream is not touched.
void run_to_record(EventState& st, cudaStream_t stream, uint64_t n) {
    while (done_of(st) < n)
        if (!pq_emu::run_head(stream, false)) return;  // cannot happen: the marker is queued on `stream`
    while (pq_emu::run_head(stream, true)) {
    }
}

}  // namespace

struct CUevent_st {
    std::shared_ptr<EventState> st = std::make_shared<EventState>();
};

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
    if (!event || (flags & ~0x0Fu)) return cudaErrorInvalidValue;
    *event = new CUevent_st();
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (!event) return cudaErrorInvalidResourceHandle;
    delete event;  // queued markers and waits keep the state alive, as the real runtime defers the release
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    if (!event) return cudaErrorInvalidResourceHandle;
    // Captured events become cross-stream graph edges on a GPU; the emulated graphs record one stream's
    // chain only (emu_graph.h), so a capture that uses events is refused rather than replayed wrongly.
    if (pq_emu::is_capturing(stream)) return cudaErrorStreamCaptureUnsupported;
    std::shared_ptr<EventState> st = event->st;
    uint64_t n;
    {
        std::lock_guard<std::mutex> lock(st->mu);
        n = ++st->recorded;
        st->stream = stream;
    }
    pq_emu::enqueue(stream, [st, n]() {
        std::lock_guard<std::mutex> lock(st->mu);
        st->done = std::max(st->done, n);
    }, nullptr);  // an edge of a captured graph, not a node
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    if (!event) return cudaErrorInvalidResourceHandle;
    if (flags != 0) return cudaErrorInvalidValue;
    if (pq_emu::is_capturing(stream)) return cudaErrorStreamCaptureUnsupported;  // see cudaEventRecord
    std::shared_ptr<EventState> st = event->st;
    uint64_t n;
    cudaStream_t producer;
    {
        std::lock_guard<std::mutex> lock(st->mu);
        n = st->recorded;  // the record the event holds now; never recorded: no wait at all
        producer = st->stream;
    }
    if (n == 0 || producer == stream) return cudaSuccess;  // same stream: already in order
    pq_emu::enqueue_wait(stream, [st, producer, n]() { run_to_record(*st, producer, n); });
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (!event) return cudaErrorInvalidResourceHandle;
    std::shared_ptr<EventState> st = event->st;
    uint64_t n;
    cudaStream_t producer;
    {
        std::lock_guard<std::mutex> lock(st->mu);
        n = st->recorded;
        producer = st->stream;
    }
    while (done_of(*st) < n)
        if (!pq_emu::run_head(producer, false)) break;
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    if (!event) return cudaErrorInvalidResourceHandle;
    std::lock_guard<std::mutex> lock(event->st->mu);
    return event->st->done >= event->st->recorded ? cudaSuccess : cudaErrorNotReady;
}
