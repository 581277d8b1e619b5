// emu_sched.cpp: the fiber scheduler behind emu_sched.h.
//
// Design (why it is built this way, see also cuda/README.md):
// - One fiber per CUDA thread (ucontext, 64 KiB stack with a PROT_NONE guard page below it so a stack
//   overflow faults instead of corrupting a neighbour). Fibers only switch inside barrier()/warp_op(),
//   back to the scheduler, which resumes the runnable fibers in a freshly shuffled order each round.
// - __syncthreads is strict: it releases only when *every* thread of the block waits at the same
//   barrier (same file:line). Threads that exited, or wait at another barrier or in a warp intrinsic,
//   make it a divergent barrier -- undefined behaviour in CUDA -- and the emulator aborts with a message.
// - Warp intrinsics rendezvous per warp and per mask: the lanes named in `mask` (and only those) must all
//   arrive with the same intrinsic; several disjoint masks of one warp can be in flight at once.
//   Reading a lane outside the mask yields all-ones bits (NaN for floats, -1 for integers).
// - Errors abort(): a kernel bug found by the emulator must never look like a passing run. Tests that
//   expect an abort run the kernel in a subprocess.
#include "emu_sched.h"
#include "emu_racecheck.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

// Racecheck builds (emu_racecheck.h) tell the detector about fibers, barriers and __syncwarp.
#if PQ_EMU_RACECHECK
#define PQ_RC(call) call
#else
#define PQ_RC(call) ((void)0)
#endif

namespace pq_emu {

const uint3* g_thread_idx = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kCanaryBytes = 256;                 // poisoned tail after the dynamic shared memory
constexpr size_t kDefaultSmemLimit = 48 * 1024;      // without cudaFuncSetAttribute
constexpr size_t kOptinSmemLimit = 99 * 1024;        // sm_86 / sm_89 / sm_120 opt-in maximum

enum class St : uint8_t { Runnable, AtBarrier, AtWarp, Done };

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    uint3 tid{0, 0, 0};
    int lin = 0, warp = 0, lane = 0;
    St st = St::Runnable;
    const char* file = nullptr;  // where it waits (barrier or warp intrinsic)
    int line = 0;
    BarrierKind bar_kind = BAR_PLAIN;
    int pred = 0;
    WarpOp op = OP_SYNCWARP;
    unsigned mask = 0;
    int width = 32;
    int arg = 0;
    uint64_t val = 0;
    uint64_t result = 0;
};

struct Group {  // a warp intrinsic in flight: the lanes of `mask` that arrived so far
    unsigned mask;
    unsigned arrived;
    WarpOp op;
    int width;
    const char* file;
    int line;
};

struct Launch {
    const char* name = "";
    dim3 grid, block;
    size_t smem = 0;
    int nthreads = 0;
    KernelBody body = nullptr;
    void* ctx = nullptr;
    std::vector<std::vector<Group>> groups;  // per warp
    char* dyn = nullptr;
    int live = 0;
    ucontext_t sched;
};

std::mutex g_mutex;                 // one launch at a time: static __shared__ storage is process-global
thread_local bool t_in_launch = false;
Launch* g_launch = nullptr;
Fiber* g_cur = nullptr;
std::vector<Fiber> g_fibers;
char* g_stack_pool = nullptr;
size_t g_stack_pool_count = 0;
size_t g_page = 4096;

uint64_t g_seed = 0;
uint64_t g_rng = 0;
bool g_seeded = false;

uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ensure_seeded() {
    if (g_seeded) return;
    const char* env = getenv("PQ_EMU_SEED");
    g_seed = env ? strtoull(env, nullptr, 0) : 0x5eed;
    g_rng = g_seed;
    g_seeded = true;
}

template <class T>
void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
        const size_t j = splitmix64(g_rng) % i;
        std::swap(v[i - 1], v[j]);
    }
}

const char* op_name(WarpOp op) {
    switch (op) {
        case OP_SHFL_IDX: return "__shfl_sync";
        case OP_SHFL_UP: return "__shfl_up_sync";
        case OP_SHFL_DOWN: return "__shfl_down_sync";
        case OP_SHFL_XOR: return "__shfl_xor_sync";
        case OP_BALLOT: return "__ballot_sync";
        case OP_ANY: return "__any_sync";
        case OP_ALL: return "__all_sync";
        case OP_SYNCWARP: return "__syncwarp";
        case OP_REDUCE_ADD: return "__reduce_add_sync";
        case OP_REDUCE_MIN: return "__reduce_min_sync";
        case OP_REDUCE_MAX: return "__reduce_max_sync";
    }
    return "?";
}

bool is_shuffle(WarpOp op) { return op <= OP_SHFL_XOR; }

[[noreturn]] void fail(const char* fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_launch) {
        fprintf(stderr,
                "pq_emu: error: %s\n  in kernel %s, block (%u,%u,%u) of grid (%u,%u,%u), block dim (%u,%u,%u), "
                "seed 0x%llx\n",
                msg, g_launch->name, g_block_idx.x, g_block_idx.y, g_block_idx.z, g_launch->grid.x,
                g_launch->grid.y, g_launch->grid.z, g_launch->block.x, g_launch->block.y, g_launch->block.z,
                (unsigned long long)g_seed);
    } else {
        fprintf(stderr, "pq_emu: error: %s\n", msg);
    }
    fflush(stderr);
    abort();
}

Fiber* current(const char* what) {
    if (!g_cur) fail("%s called outside of a kernel", what);
    return g_cur;
}

// Hands control back to the scheduler; returns when the scheduler resumes this fiber.
void yield(Fiber* f) {
    __asm__ __volatile__("" ::: "memory");
    swapcontext(&f->ctx, &g_launch->sched);
    __asm__ __volatile__("" ::: "memory");
}

void trampoline() {
    Fiber* f = g_cur;
    try {
        g_launch->body(g_launch->ctx);
    } catch (...) {
        fail("a C++ exception escaped the kernel (thread %d)", f->lin);
    }
    f->st = St::Done;
    g_launch->live--;
    // returning switches to uc_link, the scheduler
}

void ensure_fibers(int n) {
    if ((size_t)n <= g_stack_pool_count) return;
    if (g_stack_pool) munmap(g_stack_pool, g_stack_pool_count * (kStackBytes + g_page));
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t per = kStackBytes + g_page;
    void* p = mmap(nullptr, per * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("cannot map %d fiber stacks", n);
    g_stack_pool = static_cast<char*>(p);
    g_stack_pool_count = n;
    g_fibers.assign(n, Fiber{});
    for (int i = 0; i < n; ++i) {
        char* base = g_stack_pool + per * i;
        mprotect(base, g_page, PROT_NONE);  // guard page: stacks grow down into it
        g_fibers[i].stack = base + g_page;
    }
}

// "threads 0-15 at k.cuh:12; threads 16-31 exited" for error messages.
std::string describe_block(int n) {
    auto label = [](const Fiber& f) {
        char b[512];
        switch (f.st) {
            case St::Done: return std::string("exited");
            case St::Runnable: return std::string("running");
            case St::AtBarrier:
                snprintf(b, sizeof b, "wait at __syncthreads %s:%d", f.file, f.line);
                return std::string(b);
            case St::AtWarp:
                snprintf(b, sizeof b, "wait in %s(mask 0x%08x) %s:%d", op_name(f.op), f.mask, f.file, f.line);
                return std::string(b);
        }
        return std::string("?");
    };
    std::string out;
    int shown = 0;
    for (int i = 0; i < n;) {
        const std::string l = label(g_fibers[i]);
        int j = i + 1;
        while (j < n && label(g_fibers[j]) == l) ++j;
        if (shown++ < 12) {
            char b[64];
            if (j - i == 1) snprintf(b, sizeof b, "\n    thread %d: ", i);
            else snprintf(b, sizeof b, "\n    threads %d-%d: ", i, j - 1);
            out += b;
            out += l;
        }
        i = j;
    }
    if (shown > 12) out += "\n    ...";
    return out;
}

bool same_site(const Fiber& a, const Fiber& b) {
    return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0);
}

// Computes every lane's result once all lanes of the group arrived, and makes them runnable.
void resolve(const Group& g, int warp) {
    Fiber* lanes[32] = {};
    for (int l = 0; l < 32; ++l)
        if (g.mask & (1u << l)) lanes[l] = &g_fibers[warp * 32 + l];
    unsigned votes = 0;
    for (int l = 0; l < 32; ++l)
        if (lanes[l] && lanes[l]->val != 0) votes |= 1u << l;
    uint32_t red = 0;
    bool first = true;
    for (int l = 0; l < 32; ++l) {
        if (!lanes[l]) continue;
        const uint32_t v = (uint32_t)lanes[l]->val;
        const bool sgn = lanes[l]->arg != 0;
        if (first) red = v;
        else if (g.op == OP_REDUCE_ADD) red += v;
        else if (g.op == OP_REDUCE_MIN) red = sgn ? ((int32_t)v < (int32_t)red ? v : red) : (v < red ? v : red);
        else if (g.op == OP_REDUCE_MAX) red = sgn ? ((int32_t)v > (int32_t)red ? v : red) : (v > red ? v : red);
        first = false;
    }
    if (g.op == OP_SYNCWARP) PQ_RC(rc_syncwarp(warp, g.mask));
    for (int l = 0; l < 32; ++l) {
        Fiber* f = lanes[l];
        if (!f) continue;
        uint64_t r = 0;
        if (is_shuffle(g.op)) {
            const int w = f->width;
            const int seg = l & ~(w - 1);
            const unsigned a = (unsigned)f->arg;
            int src = l;
            switch (g.op) {
                case OP_SHFL_IDX: src = seg + (f->arg & (w - 1)); break;
                case OP_SHFL_UP: src = (unsigned)(l - seg) < a ? l : l - (int)a; break;
                case OP_SHFL_DOWN: src = (unsigned)(l - seg) + a >= (unsigned)w ? l : l + (int)a; break;
                case OP_SHFL_XOR: {
                    const unsigned s = (unsigned)l ^ a;
                    src = s >= (unsigned)(seg + w) ? l : (int)s;
                    break;
                }
                default: break;
            }
            // A source lane outside the mask is undefined in CUDA: make it loud.
            r = (g.mask & (1u << src)) ? lanes[src]->val : ~0ull;
        } else if (g.op == OP_BALLOT) {
            r = votes;
        } else if (g.op == OP_ANY) {
            r = votes != 0;
        } else if (g.op == OP_ALL) {
            r = votes == g.mask;
        } else if (g.op == OP_SYNCWARP) {
            r = 0;
        } else {
            r = red;
        }
        f->result = r;
        f->st = St::Runnable;
    }
}

// Nothing is runnable: either every live thread waits at one barrier (release it) or the block is stuck.
void resolve_stall(Launch& L) {
    const int n = L.nthreads;
    int at_bar = 0, at_warp = 0, done = 0;
    const Fiber* first_bar = nullptr;
    for (int i = 0; i < n; ++i) {
        const Fiber& f = g_fibers[i];
        if (f.st == St::AtBarrier) {
            ++at_bar;
            if (!first_bar) first_bar = &f;
        } else if (f.st == St::AtWarp) {
            ++at_warp;
        } else if (f.st == St::Done) {
            ++done;
        }
    }
    if (at_warp > 0) {
        for (size_t w = 0; w < L.groups.size(); ++w) {
            for (const Group& g : L.groups[w]) {
                const unsigned missing = g.mask & ~g.arrived;
                for (int l = 0; l < 32; ++l) {
                    if (!(missing & (1u << l))) continue;
                    const Fiber& m = g_fibers[w * 32 + l];
                    fail("deadlock: %s(mask 0x%08x) at %s:%d in warp %zu waits for lane %d, which %s; "
                         "block state:%s",
                         op_name(g.op), g.mask, g.file, g.line, w, l,
                         m.st == St::Done      ? "exited (a lane named in mask never arrives)"
                         : m.st == St::AtWarp  ? "waits in another warp intrinsic (lanes disagree on the mask)"
                                               : "waits at __syncthreads",
                         describe_block(n).c_str());
                }
            }
        }
        fail("deadlock in warp intrinsics; block state:%s", describe_block(n).c_str());
    }
    if (at_bar == 0) fail("scheduler stalled with no waiting thread (internal error)");
    if (done > 0)
        fail("divergent __syncthreads at %s:%d: %d thread(s) wait there but %d thread(s) of the block exited "
             "without reaching it; block state:%s",
             first_bar->file, first_bar->line, at_bar, done, describe_block(n).c_str());
    int count = 0;
    for (int i = 0; i < n; ++i) {
        const Fiber& f = g_fibers[i];
        if (!same_site(f, *first_bar) || f.bar_kind != first_bar->bar_kind)
            fail("divergent __syncthreads: threads of one block wait at different barriers (%s:%d and %s:%d); "
                 "block state:%s",
                 first_bar->file, first_bar->line, f.file, f.line, describe_block(n).c_str());
        count += f.pred;
    }
    uint64_t r = 0;
    switch (first_bar->bar_kind) {
        case BAR_PLAIN: r = 0; break;
        case BAR_COUNT: r = (uint64_t)count; break;
        case BAR_AND: r = count == n; break;
        case BAR_OR: r = count > 0; break;
    }
    PQ_RC(rc_barrier());
    for (int i = 0; i < n; ++i) {
        g_fibers[i].result = r;
        g_fibers[i].st = St::Runnable;
    }
}

void run_block(Launch& L) {
    const int n = L.nthreads;
    for (int i = 0; i < n; ++i) {
        Fiber& f = g_fibers[i];
        f.lin = i;
        f.tid = uint3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
        f.warp = i / 32;
        f.lane = i % 32;
        f.st = St::Runnable;
        f.file = nullptr;
        f.line = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &L.sched;
        makecontext(&f.ctx, trampoline, 0);
    }
    for (auto& g : L.groups) g.clear();
    L.live = n;
    std::vector<int> order;
    order.reserve(n);
    while (L.live > 0) {
        order.clear();
        for (int i = 0; i < n; ++i)
            if (g_fibers[i].st == St::Runnable) order.push_back(i);
        if (order.empty()) {
            resolve_stall(L);
            continue;
        }
        shuffle(order);
        for (int i : order) {
            Fiber& f = g_fibers[i];
            if (f.st != St::Runnable) continue;
            g_cur = &f;
            g_thread_idx = &f.tid;
            PQ_RC(rc_set_thread(i));
            swapcontext(&L.sched, &f.ctx);
            PQ_RC(rc_set_thread(-1));
        }
        g_cur = nullptr;
        g_thread_idx = nullptr;
    }
}

const char* check_config(dim3 grid, dim3 block, size_t smem, const void* kernel, cudaError_t* err) {
    *err = cudaErrorInvalidConfiguration;
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 ||
        block.z > 64)
        return "invalid block dimensions (at most 1024 threads, z <= 64)";
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
        return "invalid grid dimensions (x < 2^31, y and z <= 65535)";
    *err = cudaErrorInvalidValue;
    if (smem > kOptinSmemLimit) return "dynamic shared memory above the 99 KiB per-block maximum";
    if (smem > kDefaultSmemLimit && (size_t)max_dynamic_smem(kernel) < smem)
        return "dynamic shared memory above 48 KiB without cudaFuncSetAttribute(MaxDynamicSharedMemorySize)";
    *err = cudaSuccess;
    return nullptr;
}

}  // namespace

void set_seed(uint64_t seed) {
    g_seed = seed;
    g_rng = seed;
    g_seeded = true;
}

uint64_t get_seed() {
    ensure_seeded();
    return g_seed;
}

int barrier(BarrierKind kind, int pred, const char* file, int line) {
    Fiber* f = current("__syncthreads");
    f->st = St::AtBarrier;
    f->file = file;
    f->line = line;
    f->bar_kind = kind;
    f->pred = pred;
    yield(f);
    return (int)f->result;
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
    Fiber* f = current(op_name(op));
    Launch& L = *g_launch;
    const unsigned bit = 1u << f->lane;
    if (!(mask & bit))
        fail("%s at %s:%d: thread %d (lane %d) calls it with mask 0x%08x, which does not include itself",
             op_name(op), file, line, f->lin, f->lane, mask);
    const int lanes_here = L.nthreads - f->warp * 32 < 32 ? L.nthreads - f->warp * 32 : 32;
    const unsigned existing = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1);
    if (mask & ~existing)
        fail("%s at %s:%d: mask 0x%08x names lanes that do not exist (warp %d has %d lanes; block of %d threads)",
             op_name(op), file, line, mask, f->warp, lanes_here, L.nthreads);
    if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1))))
        fail("%s at %s:%d: width %d is not a power of two in [1, 32]", op_name(op), file, line, width);
    std::vector<Group>& gs = L.groups[f->warp];
    size_t gi = gs.size();
    // Groups with different, overlapping masks may be in flight together (a full-mask shuffle waits
    // while a half-warp finishes its own); lanes that disagree about one rendezvous deadlock instead,
    // and the stall analysis reports them.
    for (size_t i = 0; i < gs.size(); ++i) {
        if (gs[i].mask == mask) {
            gi = i;
            break;
        }
    }
    if (gi == gs.size()) {
        gs.push_back(Group{mask, 0, op, width, file, line});
    } else if (gs[gi].op != op || (is_shuffle(op) && gs[gi].width != width)) {
        fail("lanes of warp %d with mask 0x%08x call different warp intrinsics: %s(width %d) at %s:%d and "
             "%s(width %d) at %s:%d",
             f->warp, mask, op_name(gs[gi].op), gs[gi].width, gs[gi].file, gs[gi].line, op_name(op), width, file,
             line);
    }
    f->op = op;
    f->mask = mask;
    f->val = value;
    f->arg = arg;
    f->width = width;
    f->file = file;
    f->line = line;
    f->st = St::AtWarp;
    gs[gi].arrived |= bit;
    if (gs[gi].arrived == mask) {
        const Group g = gs[gi];
        gs.erase(gs.begin() + gi);
        resolve(g, f->warp);
    }
    yield(f);  // even the last lane yields, so the lanes resume in a random order
    return f->result;
}

unsigned active_mask() {
    Fiber* f = current("__activemask");
    unsigned m = 0;
    for (int l = 0; l < 32; ++l) {
        const int i = f->warp * 32 + l;
        if (i < g_launch->nthreads && g_fibers[i].st != St::Done) m |= 1u << l;
    }
    return m;
}

void* dyn_smem() {
    current("extern __shared__ (PQ_DYN_SHARED)");
    return g_launch->dyn;
}

void trap(const char* file, int line) { fail("__trap() at %s:%d", file, line); }

// For memcheck's fault report (emu_runtime.cpp): who was running when the fault happened.
int describe_running(char* buf, size_t n) {
    if (!g_launch) return snprintf(buf, n, "host code (no kernel running)");
    if (!g_cur)
        return snprintf(buf, n, "kernel %s (scheduler), block (%u,%u,%u)", g_launch->name, g_block_idx.x, g_block_idx.y,
                        g_block_idx.z);
    return snprintf(buf, n, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u) of grid (%u,%u,%u) x block (%u,%u,%u), seed 0x%llx",
                    g_launch->name, g_block_idx.x, g_block_idx.y, g_block_idx.z, g_cur->tid.x, g_cur->tid.y,
                    g_cur->tid.z, g_launch->grid.x, g_launch->grid.y, g_launch->grid.z, g_launch->block.x,
                    g_launch->block.y, g_launch->block.z, (unsigned long long)g_seed);
}

bool launch_config_ok(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem) {
    if (t_in_launch) fail("kernel %s launched from device code (dynamic parallelism is not emulated)", name);
    cudaError_t err;
    if (const char* why = check_config(grid, block, smem, kernel, &err)) {
        fprintf(stderr,
                "pq_emu: launch of %s failed: %s (grid (%u,%u,%u), block (%u,%u,%u), %zu bytes dynamic shared)\n",
                name, why, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        set_last_error(err);
        return false;
    }
    return true;
}

void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem, KernelBody body,
              void* ctx) {
    (void)kernel;
    count_kernel();
    std::lock_guard<std::mutex> lock(g_mutex);
    t_in_launch = true;
    ensure_seeded();
    Launch L;
    L.name = name;
    L.grid = grid;
    L.block = block;
    L.smem = smem;
    L.nthreads = (int)(block.x * block.y * block.z);
    L.body = body;
    L.ctx = ctx;
    L.groups.resize((L.nthreads + 31) / 32);
    ensure_fibers(L.nthreads);
    // Dynamic shared memory: NaN-filled before every block, followed by a canary to catch overruns.
    std::vector<char> dyn_storage(smem + kCanaryBytes + 256);
    L.dyn = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(dyn_storage.data()) + 255) & ~uintptr_t(255));
    g_launch = &L;
    g_grid_dim = grid;
    g_block_dim = block;

    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    std::vector<uint64_t> order;
    if (nblocks <= (1u << 20)) {  // random block order, so nothing can rely on block 0 running first
        order.resize(nblocks);
        for (uint64_t b = 0; b < nblocks; ++b) order[b] = b;
        shuffle(order);
    }
    for (uint64_t k = 0; k < nblocks; ++k) {
        const uint64_t b = order.empty() ? k : order[k];
        g_block_idx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                            (unsigned)(b / ((uint64_t)grid.x * grid.y))};
        memset(L.dyn, 0xff, smem + kCanaryBytes);
        PQ_RC(rc_block_begin(name, g_block_idx, block, L.nthreads, L.dyn, smem));
        run_block(L);
        PQ_RC(rc_block_end());
        for (size_t i = 0; i < kCanaryBytes; ++i)
            if ((unsigned char)L.dyn[smem + i] != 0xff)
                fail("write past the end of dynamic shared memory (%zu bytes requested at launch; byte %zu after "
                     "the end was modified)",
                     smem, i);
    }
    g_launch = nullptr;
    t_in_launch = false;
}

}  // namespace pq_emu
