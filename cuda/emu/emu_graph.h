// emu_graph.h: CUDA graphs for the emulator -- stream capture, instantiation, replay, in-place update.
//
// The semantics that matter for correctness, as on a GPU:
//   - cudaStreamBeginCapture turns a stream into a recorder: every kernel launch, cudaMemcpyAsync and
//     cudaMemsetAsync enqueued on it becomes a node of the graph and nothing runs. A kernel node keeps
//     its arguments BY VALUE as they were at the launch call (pq_emu::launch converts them once), a copy
//     node its pointers: a replay sees the scalars of capture time and reads/writes the memory those
//     pointers name when it runs (a pinned host word is read at replay, not at capture).
//   - cudaGraphLaunch enqueues the executable graph's nodes, in capture order, on the target stream's
//     queue (emu_runtime.h): they run when the host waits for that stream, and each counts in the node
//     ledger (emu_control.h) as the launch it replays. Captured nodes are not counted at capture.
//   - cudaGraphExecUpdate replaces an executable graph's node parameters with those of a graph of the
//     same topology (same number of nodes, same kind and kernel per node); otherwise it fails with
//     cudaErrorGraphExecUpdateFailure and the result says why, and the executable graph is unchanged.
//     Launches already enqueued keep the parameters they were enqueued with.
//   - Errors CUDA reports during capture: capturing the legacy stream, beginning twice, ending a stream
//     that is not capturing, a copy from or to pageable host memory (the runtime would have to stage or
//     wait on it), cudaStreamSynchronize of a capturing stream.
// Not modelled: capture dependencies across streams (an event recorded or waited on in a capturing stream
// is refused with cudaErrorStreamCaptureUnsupported, emu_events.cpp), graph topology other than a chain (one
// stream records one chain), capture modes (global / thread-local restrictions), conditional nodes.
#pragma once

#include <cstddef>
#include <functional>

#include "emu_runtime.h"

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};

enum cudaGraphExecUpdateResult {
    cudaGraphExecUpdateSuccess = 0,
    cudaGraphExecUpdateError = 1,
    cudaGraphExecUpdateErrorTopologyChanged = 2,
    cudaGraphExecUpdateErrorNodeTypeChanged = 3,
    cudaGraphExecUpdateErrorFunctionChanged = 4,
};

// The runtime's error codes for graphs (their real values; emu_runtime.h's enum holds the others).
constexpr cudaError_t cudaErrorStreamCaptureUnsupported = static_cast<cudaError_t>(900);
constexpr cudaError_t cudaErrorStreamCaptureInvalidated = static_cast<cudaError_t>(901);
constexpr cudaError_t cudaErrorStreamCaptureUnmatched = static_cast<cudaError_t>(903);
constexpr cudaError_t cudaErrorGraphExecUpdateFailure = static_cast<cudaError_t>(910);
constexpr cudaError_t cudaErrorIllegalState = static_cast<cudaError_t>(401);

struct CUgraph_st;
struct CUgraphExec_st;
struct CUgraphNode_st;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;
typedef CUgraphNode_st* cudaGraphNode_t;

struct cudaGraphExecUpdateResultInfo {
    cudaGraphExecUpdateResult result;
    cudaGraphNode_t errorNode;
    cudaGraphNode_t errorFromNode;
};

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo* info);
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

namespace pq_emu {
// The runtime's hooks (emu_runtime.cpp): true when `stream` is capturing, and then `op` became a node of
// its graph instead of being queued.
bool capture_node(cudaStream_t stream, std::function<void()>& op, const char* what);
bool is_capturing(cudaStream_t stream);
// Graphs and executable graphs not destroyed yet (for finding leaks while debugging).
size_t live_graphs();
}  // namespace pq_emu
