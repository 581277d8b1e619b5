// emu_graph.cpp: CUDA graphs for the emulator (emu_graph.h): capture records the stream's operations as
// closures (kernel arguments already copied by value at the launch call), replay enqueues them.
#include "emu_graph.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

// A node: the operation as the stream would have run it, and its name (kernel name, "memcpy HtoD", ...).
struct CUgraphNode_st {
    std::function<void()> op;
    std::string what;
    bool kernel = false;
};

struct CUgraph_st {
    std::vector<std::unique_ptr<CUgraphNode_st>> nodes;  // one chain, in capture order
};

struct CUgraphExec_st {
    std::vector<CUgraphNode_st> nodes;  // copies: the graph may be destroyed after instantiation
};

namespace pq_emu {
namespace {

std::mutex g_graph_mutex;
std::map<cudaStream_t, cudaGraph_t> g_capturing;  // stream -> graph being recorded
std::set<const void*> g_live;                     // graphs and executable graphs not destroyed

bool is_copy_or_set(const std::string& what) { return what.rfind("memcpy", 0) == 0 || what == "memset"; }

cudaError_t fail(cudaError_t e) {
    set_last_error(e);
    return e;
}

}  // namespace

bool capture_node(cudaStream_t stream, std::function<void()>& op, const char* what) {
    if (!stream) return false;  // the legacy stream never captures
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    auto it = g_capturing.find(stream);
    if (it == g_capturing.end()) return false;
    auto n = std::make_unique<CUgraphNode_st>();
    n->op = std::move(op);
    n->what = what;
    n->kernel = !is_copy_or_set(n->what);
    it->second->nodes.push_back(std::move(n));
    return true;
}

bool is_capturing(cudaStream_t stream) {
    if (!stream) return false;
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    return g_capturing.count(stream) != 0;
}

size_t live_graphs() {
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    return g_live.size();
}

}  // namespace pq_emu

using namespace pq_emu;

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    (void)mode;  // one recording chain per stream whatever the mode (emu_graph.h)
    if (!stream) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot be captured
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    if (g_capturing.count(stream)) return fail(cudaErrorIllegalState);
    cudaGraph_t g = new CUgraph_st();
    g_live.insert(g);
    g_capturing[stream] = g;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    if (!graph) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    auto it = g_capturing.find(stream);
    if (!stream || it == g_capturing.end()) {
        *graph = nullptr;
        return fail(cudaErrorIllegalState);
    }
    *graph = it->second;
    g_capturing.erase(it);
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
    if (!status) return cudaErrorInvalidValue;
    *status = is_capturing(stream) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
    (void)flags;
    if (!exec || !graph) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    if (!g_live.count(graph)) return fail(cudaErrorInvalidResourceHandle);
    auto* e = new CUgraphExec_st();
    for (const auto& n : graph->nodes) e->nodes.push_back(*n);
    g_live.insert(e);
    *exec = e;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    std::vector<CUgraphNode_st> nodes;
    {
        std::lock_guard<std::mutex> lock(g_graph_mutex);
        if (!exec || !g_live.count(exec)) return fail(cudaErrorInvalidResourceHandle);
        if (stream && g_capturing.count(stream)) return fail(cudaErrorStreamCaptureUnsupported);  // no child graphs
        nodes = exec->nodes;  // this launch's parameters: a later update does not reach it
    }
    for (auto& n : nodes) enqueue(stream, std::move(n.op), n.what.c_str());
    return cudaSuccess;
}

cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo* info) {
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    if (!exec || !graph || !g_live.count(exec) || !g_live.count(graph)) return fail(cudaErrorInvalidResourceHandle);
    cudaGraphExecUpdateResult r = cudaGraphExecUpdateSuccess;
    cudaGraphNode_t bad = nullptr;
    if (graph->nodes.size() != exec->nodes.size()) {
        r = cudaGraphExecUpdateErrorTopologyChanged;
    } else {
        for (size_t i = 0; i < graph->nodes.size() && r == cudaGraphExecUpdateSuccess; ++i) {
            const CUgraphNode_st& a = exec->nodes[i];
            const CUgraphNode_st& b = *graph->nodes[i];
            if (a.kernel != b.kernel || (!a.kernel && a.what != b.what)) r = cudaGraphExecUpdateErrorNodeTypeChanged;
            else if (a.what != b.what) r = cudaGraphExecUpdateErrorFunctionChanged;
            if (r != cudaGraphExecUpdateSuccess) bad = graph->nodes[i].get();
        }
    }
    if (info) {
        info->result = r;
        info->errorNode = bad;
        info->errorFromNode = nullptr;
    }
    if (r != cudaGraphExecUpdateSuccess) return fail(cudaErrorGraphExecUpdateFailure);
    for (size_t i = 0; i < graph->nodes.size(); ++i) exec->nodes[i] = *graph->nodes[i];
    return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count) {
    if (!graph || !count) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    if (!g_live.count(graph)) return fail(cudaErrorInvalidResourceHandle);
    if (nodes) {
        const size_t n = std::min(*count, graph->nodes.size());
        for (size_t i = 0; i < n; ++i) nodes[i] = graph->nodes[i].get();
    }
    *count = graph->nodes.size();
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    if (!graph) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    if (!g_live.erase(graph)) return fail(cudaErrorInvalidResourceHandle);
    for (const auto& c : g_capturing)
        if (c.second == graph) return fail(cudaErrorIllegalState);  // never: EndCapture hands it out
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    if (!exec) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_graph_mutex);
    if (!g_live.erase(exec)) return fail(cudaErrorInvalidResourceHandle);
    delete exec;  // launches already enqueued hold their own copies of the nodes
    return cudaSuccess;
}
