// emu_racecheck.cpp: the shared-memory race detector behind emu_racecheck.h, and the __tsan_* entry points
// that GCC's -fsanitize=thread instrumentation of the kernel translation units calls (no libtsan).
//
// Per block: a map byte address -> (last writer, readers since it) for the current barrier interval,
// cleared at every __syncthreads; per warp a 32 x 32 vector clock advanced by __syncwarp. Every access
// is a hash lookup per byte, which is why this lives in a separate build (emu_build.py, racecheck=True)
// and the ordinary emulator pays nothing. Compiled without instrumentation itself.
#include "emu_racecheck.h"

#if PQ_EMU_RACECHECK

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "emu_sched.h"

namespace pq_emu {

namespace {

constexpr size_t kMaxShown = 12;   // reports printed per block (all are counted)
constexpr size_t kMaxKept = 1000;  // distinct reports kept per block: a racy kernel stays linear-time

struct Reader {
    int32_t thr;
    uint32_t stamp;
    bool atomic;
};

struct Rec {
    int32_t w_thr = -1;  // last writer in this interval (-1: none)
    uint32_t w_stamp = 0;
    bool w_atomic = false;
    std::vector<Reader> readers;  // reads since that write
};

struct Report {
    const char* kind;  // "write-write", "read-write" (read first), "write-read"
    uintptr_t addr;
    int first, second;  // thread (linear index) of the earlier and of the later access
};

struct Range {
    uintptr_t lo, hi;
    bool has(uintptr_t a) const { return a >= lo && a < hi; }
};

struct State {
    bool in_block = false;
    int thr = -1;  // running fiber's linear thread index, -1 outside of kernel threads
    int atomic_depth = 0;
    const char* kernel = "";
    uint3 block{0, 0, 0};
    dim3 bdim;
    int nthreads = 0;
    Range dyn{0, 0};
    std::vector<Range> statics;  // writable segments of this module (function-local statics)
    std::vector<Range> skip;     // the emulator's own globals that kernels read (threadIdx & co.)
    std::vector<uint32_t> vc;    // [warp][lane i][lane j]: what lane i knows of lane j's __syncwarp clock
    std::unordered_map<uintptr_t, Rec> recs;
    std::vector<Report> reports;
    size_t n_races = 0;
};

State g;

uint32_t& clock_of(int thr_i, int lane_j) { return g.vc[((size_t)(thr_i / 32) * 32 + thr_i % 32) * 32 + lane_j]; }

void reset_clocks() {
    std::fill(g.vc.begin(), g.vc.end(), 0u);
    for (int t = 0; t < g.nthreads; ++t) clock_of(t, t % 32) = 1;  // own clock starts above what others know
}

// a (thread ta, its own clock sa at the access) happens before anything thread tb does now?
bool ordered(int ta, uint32_t sa, int tb) { return ta / 32 == tb / 32 && clock_of(tb, ta % 32) >= sa; }

void report(const char* kind, uintptr_t addr, int first, int second) {
    ++g.n_races;  // every conflicting pair of accesses (bytes counted apiece)
    if (g.reports.size() >= kMaxKept) return;
    for (const Report& r : g.reports)  // one line per word, kind and thread pair
        if ((r.addr & ~uintptr_t(3)) == (addr & ~uintptr_t(3)) && r.kind == kind && r.first == first &&
            r.second == second)
            return;
    g.reports.push_back(Report{kind, addr, first, second});
}

void check_byte(uintptr_t a, bool write) {
    const int t = g.thr;
    const uint32_t s = clock_of(t, t % 32);
    const bool atomic = g.atomic_depth > 0;
    Rec& r = g.recs[a];
    // a conflict needs two threads, one write, at most one atomic side ... and no ordering
    auto conflicts = [&](int other, uint32_t stamp, bool other_atomic) {
        return other != t && !(atomic && other_atomic) && !ordered(other, stamp, t);
    };
    if (r.w_thr >= 0 && conflicts(r.w_thr, r.w_stamp, r.w_atomic))
        report(write ? "write-write" : "write-read", a, r.w_thr, t);
    if (write) {
        for (const Reader& rd : r.readers)
            if (conflicts(rd.thr, rd.stamp, rd.atomic)) report("read-write", a, rd.thr, t);
        r.w_thr = t;
        r.w_stamp = s;
        r.w_atomic = atomic;
        r.readers.clear();
    } else {
        for (Reader& rd : r.readers)
            if (rd.thr == t) {
                rd.stamp = s;
                rd.atomic = atomic;
                return;
            }
        r.readers.push_back(Reader{t, s, atomic});
    }
}

inline void on_access(const void* p, size_t n, bool write) {
    if (g.thr < 0) return;  // host code of an instrumented file, or no racecheck launch running
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (!g.dyn.has(a)) {
        bool in_static = false;
        for (const Range& r : g.statics) in_static |= r.has(a);
        if (!in_static) return;
        for (const Range& r : g.skip)
            if (r.has(a)) return;
    }
    for (size_t i = 0; i < n; ++i) check_byte(a + i, write);
}

// ---- where a static address belongs: the module's symbol table (function-local statics are local
// symbols, absent from .dynsym, so dladdr cannot name them)
std::string static_symbol(uintptr_t a) {
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(a), &info) || !info.dli_fname) return "";
    const int fd = open(info.dli_fname, O_RDONLY);
    if (fd < 0) return "";
    struct stat st {};
    std::string out;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size > sizeof(Elf64_Ehdr)) {
        void* m = mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m != MAP_FAILED) {
            const char* base = static_cast<const char*>(m);
            const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
            const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
            const uintptr_t off = a - reinterpret_cast<uintptr_t>(info.dli_fbase);
            for (int i = 0; i < eh->e_shnum && out.empty(); ++i) {
                if (sh[i].sh_type != SHT_SYMTAB) continue;
                const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
                const char* names = base + sh[sh[i].sh_link].sh_offset;
                for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k) {
                    const Elf64_Sym& y = syms[k];
                    if (ELF64_ST_TYPE(y.st_info) != STT_OBJECT || off < y.st_value || off >= y.st_value + y.st_size)
                        continue;
                    int status = 0;
                    char* dem = abi::__cxa_demangle(names + y.st_name, nullptr, nullptr, &status);
                    char buf[64];
                    snprintf(buf, sizeof buf, " + byte %zu", (size_t)(off - y.st_value));
                    out = std::string("static __shared__ ") + (status == 0 && dem ? dem : names + y.st_name) + buf;
                    free(dem);
                    break;
                }
            }
            munmap(m, st.st_size);
        }
    }
    close(fd);
    return out;
}

std::string where(uintptr_t a) {
    char buf[160];
    if (g.dyn.has(a)) {
        snprintf(buf, sizeof buf, "dynamic shared memory + byte %zu (of %zu)", (size_t)(a - g.dyn.lo),
                 (size_t)(g.dyn.hi - g.dyn.lo));
        return buf;
    }
    std::string s = static_symbol(a);
    if (!s.empty()) return s;
    snprintf(buf, sizeof buf, "static __shared__ data at %p", reinterpret_cast<void*>(a));
    return buf;
}

std::string thread_name(int lin) {
    char buf[96];
    const unsigned x = lin % g.bdim.x, y = (lin / g.bdim.x) % g.bdim.y, z = lin / (g.bdim.x * g.bdim.y);
    snprintf(buf, sizeof buf, "thread %d (%u,%u,%u; warp %d lane %d)", lin, x, y, z, lin / 32, lin % 32);
    return buf;
}

int collect_writable(struct dl_phdr_info* info, size_t, void* data) {
    const auto self = reinterpret_cast<uintptr_t>(&g);
    std::vector<Range> w;
    bool mine = false;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        const Range r{info->dlpi_addr + ph.p_vaddr, info->dlpi_addr + ph.p_vaddr + ph.p_memsz};
        mine |= r.has(self);
        if (ph.p_flags & PF_W) w.push_back(r);
    }
    if (!mine) return 0;
    *static_cast<std::vector<Range>*>(data) = w;
    return 1;
}

}  // namespace

void rc_block_begin(const char* kernel, uint3 block, dim3 block_dim, int nthreads, const char* dyn, size_t smem) {
    if (g.statics.empty()) {
        dl_iterate_phdr(collect_writable, &g.statics);
        auto add_skip = [](const void* p, size_t n) {
            g.skip.push_back(Range{reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + n});
        };
        add_skip(&g_thread_idx, sizeof g_thread_idx);
        add_skip(&g_block_idx, sizeof g_block_idx);
        add_skip(&g_block_dim, sizeof g_block_dim);
        add_skip(&g_grid_dim, sizeof g_grid_dim);
    }
    g.in_block = true;
    g.thr = -1;
    g.atomic_depth = 0;
    g.kernel = kernel;
    g.block = block;
    g.bdim = block_dim;
    g.nthreads = nthreads;
    g.dyn = Range{reinterpret_cast<uintptr_t>(dyn), reinterpret_cast<uintptr_t>(dyn) + smem};
    g.vc.assign((size_t)((nthreads + 31) / 32) * 32 * 32, 0u);
    reset_clocks();
    g.recs.clear();
    g.reports.clear();
    g.n_races = 0;
}

void rc_set_thread(int lin) { g.thr = g.in_block ? lin : -1; }

void rc_barrier() {
    g.recs.clear();
    reset_clocks();
}

void rc_syncwarp(int warp, unsigned mask) {
    uint32_t joined[32] = {};
    uint32_t* rows = &g.vc[(size_t)warp * 32 * 32];
    for (int i = 0; i < 32; ++i)
        if (mask & (1u << i))
            for (int j = 0; j < 32; ++j) joined[j] = std::max(joined[j], rows[i * 32 + j]);
    for (int i = 0; i < 32; ++i) {
        if (!(mask & (1u << i))) continue;
        for (int j = 0; j < 32; ++j) rows[i * 32 + j] = joined[j];
        rows[i * 32 + i] = joined[i] + 1;  // accesses after the __syncwarp are not covered by it
    }
}

void rc_block_end() {
    g.in_block = false;
    g.thr = -1;
    if (g.n_races == 0) return;
    fprintf(stderr,
            "pq_emu racecheck: shared-memory races in kernel %s, block (%u,%u,%u) of %d threads (%zu conflicting "
            "byte accesses, %zu%s distinct word/kind/thread-pair reports):\n",
            g.kernel, g.block.x, g.block.y, g.block.z, g.nthreads, g.n_races, g.reports.size(),
            g.reports.size() >= kMaxKept ? "+" : "");
    for (size_t i = 0; i < g.reports.size() && i < kMaxShown; ++i) {
        const Report& r = g.reports[i];
        fprintf(stderr, "  %s race on %s (address %p): %s, then %s, with no barrier between them\n", r.kind,
                where(r.addr).c_str(), reinterpret_cast<void*>(r.addr), thread_name(r.first).c_str(),
                thread_name(r.second).c_str());
    }
    if (g.reports.size() > kMaxShown) fprintf(stderr, "  ... and %zu more\n", g.reports.size() - kMaxShown);
    fflush(stderr);
    abort();  // like every emulator finding: a race must never look like a passing run
}

RcAtomicScope::RcAtomicScope() { ++g.atomic_depth; }
RcAtomicScope::~RcAtomicScope() { --g.atomic_depth; }

}  // namespace pq_emu

// ---- the instrumentation's entry points ----------------------------------------------------------------
// Visible default so that every object of the module resolves to these (the module is linked without
// libtsan). Atomic builtins in instrumented code (libstdc++'s shared_ptr counts, ...) are host-side:
// performed as the builtins would, and not recorded.
#define PQ_RC_EXPORT extern "C" __attribute__((visibility("default")))
#define PQ_RC_RW(N)                                                                                      \
    PQ_RC_EXPORT void __tsan_read##N(void* p) { pq_emu::on_access_hook(p, N, false); }                  \
    PQ_RC_EXPORT void __tsan_write##N(void* p) { pq_emu::on_access_hook(p, N, true); }                  \
    PQ_RC_EXPORT void __tsan_unaligned_read##N(void* p) { pq_emu::on_access_hook(p, N, false); }        \
    PQ_RC_EXPORT void __tsan_unaligned_write##N(void* p) { pq_emu::on_access_hook(p, N, true); }        \
    PQ_RC_EXPORT void __tsan_volatile_read##N(void* p) { pq_emu::on_access_hook(p, N, false); }         \
    PQ_RC_EXPORT void __tsan_volatile_write##N(void* p) { pq_emu::on_access_hook(p, N, true); }         \
    PQ_RC_EXPORT void __tsan_unaligned_volatile_read##N(void* p) { pq_emu::on_access_hook(p, N, false); } \
    PQ_RC_EXPORT void __tsan_unaligned_volatile_write##N(void* p) { pq_emu::on_access_hook(p, N, true); }

namespace pq_emu {
void on_access_hook(const void* p, size_t n, bool write) { on_access(p, n, write); }
}  // namespace pq_emu

PQ_RC_RW(1)
PQ_RC_RW(2)
PQ_RC_RW(4)
PQ_RC_RW(8)
PQ_RC_RW(16)
PQ_RC_EXPORT void __tsan_read_range(void* p, unsigned long n) { pq_emu::on_access_hook(p, n, false); }
PQ_RC_EXPORT void __tsan_write_range(void* p, unsigned long n) { pq_emu::on_access_hook(p, n, true); }
PQ_RC_EXPORT void __tsan_init() {}
PQ_RC_EXPORT void __tsan_func_entry(void*) {}
PQ_RC_EXPORT void __tsan_func_exit() {}
PQ_RC_EXPORT void __tsan_vptr_update(void**, void*) {}
PQ_RC_EXPORT void __tsan_vptr_read(void**) {}

// Atomic builtins of instrumented host code (e.g. shared_ptr's counts): done, not recorded.
#define PQ_RC_ATOMICS(N, T)                                                                                 \
    PQ_RC_EXPORT T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
    PQ_RC_EXPORT void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
    PQ_RC_EXPORT T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                 \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                \
    }                                                                                                      \
    PQ_RC_EXPORT T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                                      \
    PQ_RC_EXPORT T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                                      \
    PQ_RC_EXPORT T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                                      \
    PQ_RC_EXPORT T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                 \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                  \
    }                                                                                                      \
    PQ_RC_EXPORT T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                                      \
    PQ_RC_EXPORT int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {     \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);            \
    }                                                                                                      \
    PQ_RC_EXPORT int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {       \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);            \
    }                                                                                                      \
    PQ_RC_EXPORT T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {           \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
        return c;                                                                                          \
    }
PQ_RC_ATOMICS(8, char)
PQ_RC_ATOMICS(16, short)
PQ_RC_ATOMICS(32, int)
PQ_RC_ATOMICS(64, long)
PQ_RC_EXPORT void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
PQ_RC_EXPORT void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#endif  // PQ_EMU_RACECHECK
