// quants.cpp: the quant_traits table and the multi-threaded whole-tensor entry points.
#include "quants.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "quants_internal.h"

namespace pq {

namespace {

using namespace qi;

// Activation formats follow ggml's CPU backend (vec_dot_type): Q8_K for the 256-blocks, Q8_0 for
// the 32-blocks. vec_dot starts as the reference and may be upgraded in build_table().
const QuantTraits kRefTraits[] = {
    {T_Q8_0, "q8_0", QK8_0, sizeof(block_q8_0), q8_0_to_float, q8_0_from_float, T_Q8_0, q8_0_from_float,
     q8_0_vec_dot, q8_0_vec_dot},
    // Legacy formats (llama.cpp's fallbacks for rows not a multiple of 256): as on ggml's CPU backend,
    // Q4_0/Q5_0 dot with Q8_0 activations, Q4_1/Q5_1 with Q8_1 (its s folds in the weight's min).
    {T_Q4_0, "q4_0", QK4_0, sizeof(block_q4_0), q4_0_to_float, q4_0_from_float, T_Q8_0, q8_0_from_float,
     q4_0_vec_dot, q4_0_vec_dot},
    {T_Q4_1, "q4_1", QK4_1, sizeof(block_q4_1), q4_1_to_float, q4_1_from_float, T_Q8_1, q8_1_from_float,
     q4_1_vec_dot, q4_1_vec_dot},
    {T_Q5_0, "q5_0", QK5_0, sizeof(block_q5_0), q5_0_to_float, q5_0_from_float, T_Q8_0, q8_0_from_float,
     q5_0_vec_dot, q5_0_vec_dot},
    {T_Q5_1, "q5_1", QK5_1, sizeof(block_q5_1), q5_1_to_float, q5_1_from_float, T_Q8_1, q8_1_from_float,
     q5_1_vec_dot, q5_1_vec_dot},
    {T_Q4_K, "q4_K", QK_K, sizeof(block_q4_K), q4_k_to_float, q4_k_from_float, T_Q8_K, q8_k_from_float,
     q4_k_vec_dot, q4_k_vec_dot},
    {T_Q5_K, "q5_K", QK_K, sizeof(block_q5_K), q5_k_to_float, q5_k_from_float, T_Q8_K, q8_k_from_float,
     q5_k_vec_dot, q5_k_vec_dot},
    {T_Q6_K, "q6_K", QK_K, sizeof(block_q6_K), q6_k_to_float, q6_k_from_float, T_Q8_K, q8_k_from_float,
     q6_k_vec_dot, q6_k_vec_dot},
    {T_IQ4_NL, "iq4_nl", QK4_NL, sizeof(block_iq4_nl), iq4_nl_to_float, nullptr, T_Q8_0, q8_0_from_float,
     iq4_nl_vec_dot, iq4_nl_vec_dot},
    {T_IQ4_XS, "iq4_xs", QK_K, sizeof(block_iq4_xs), iq4_xs_to_float, nullptr, T_Q8_K, q8_k_from_float,
     iq4_xs_vec_dot, iq4_xs_vec_dot},
    // Activation-only formats.
    {T_Q8_K, "q8_K", QK_K, sizeof(block_q8_K), q8_k_to_float, q8_k_from_float, -1, nullptr, nullptr, nullptr},
    {T_Q8_1, "q8_1", QK8_0, sizeof(block_q8_1), q8_1_to_float, q8_1_from_float, -1, nullptr, nullptr, nullptr},
};
constexpr int kNumTraits = (int)(sizeof(kRefTraits) / sizeof(kRefTraits[0]));

bool use_avx2() {
#if defined(PQ_HAVE_AVX2_KERNELS) && (defined(__x86_64__) || defined(__i386__))
    const char* env = std::getenv("PYQWEN_SIMD");
    if (env && (!std::strcmp(env, "off") || !std::strcmp(env, "ref"))) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

struct Table {
    QuantTraits traits[kNumTraits];
    const char* simd = "ref";
};

Table build_table() {
    Table t;
    for (int i = 0; i < kNumTraits; ++i) t.traits[i] = kRefTraits[i];
#if defined(PQ_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        t.simd = "avx2";
        for (QuantTraits& q : t.traits) {
            switch (q.type) {
                case T_Q8_0: q.vec_dot = q8_0_vec_dot_avx2; break;
                case T_Q4_K: q.vec_dot = q4_k_vec_dot_avx2; break;
                case T_Q5_K: q.vec_dot = q5_k_vec_dot_avx2; break;
                case T_Q6_K: q.vec_dot = q6_k_vec_dot_avx2; break;
                case T_Q4_0: q.vec_dot = q4_0_vec_dot_avx2; break;
                case T_Q4_1: q.vec_dot = q4_1_vec_dot_avx2; break;
                case T_Q5_0: q.vec_dot = q5_0_vec_dot_avx2; break;
                case T_Q5_1: q.vec_dot = q5_1_vec_dot_avx2; break;
                default: break;
            }
        }
    }
#endif
    return t;
}

const Table& table() {
    static const Table t = build_table();  // thread-safe one-time init
    return t;
}

int resolve_threads(int n_threads, int64_t work_items) {
    int n = n_threads > 0 ? n_threads : (int)std::thread::hardware_concurrency();
    n = std::min(std::max(n, 1), 256);
    return (int)std::max<int64_t>(1, std::min<int64_t>(n, work_items));
}

// Run fn(begin, end) on contiguous slices of [0, n): the calling thread takes the first slice.
// fn must not throw (exceptions cannot cross std::thread).
template <class Fn>
void parallel_for(int64_t n, int n_threads, Fn fn) {
    const int nt = resolve_threads(n_threads, n);
    if (nt <= 1) {
        if (n > 0) fn((int64_t)0, n);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(nt - 1);
    const int64_t chunk = (n + nt - 1) / nt;
    for (int t = 1; t < nt; ++t) {
        const int64_t b = t * chunk, e = std::min(n, b + chunk);
        if (b >= e) continue;
        try {
            pool.emplace_back([=] { fn(b, e); });
        } catch (const std::system_error&) {  // out of threads: do this slice here instead
            fn(b, e);
        }
    }
    fn((int64_t)0, std::min(n, chunk));
    for (auto& th : pool) th.join();
}

const QuantTraits& require_traits(int type) {
    const QuantTraits* t = quant_traits(type);
    if (!t) throw std::invalid_argument("unsupported quantized type " + std::to_string(type));
    return *t;
}

void require_blocks(const QuantTraits& t, int64_t n, const char* what) {
    if (n < 0 || n % t.block_size != 0) {
        throw std::invalid_argument(std::string(what) + " = " + std::to_string(n) + " is not a non-negative multiple of " +
                                    std::to_string(t.block_size) + " (block size of " + t.name + ")");
    }
}

}  // namespace

const QuantTraits* quant_traits(int type) {
    for (const QuantTraits& t : table().traits) {
        if (t.type == type) return &t;
    }
    return nullptr;
}

const char* quant_simd_name() { return table().simd; }

int64_t find_nonfinite(const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(x[i])) return i;
    }
    return -1;
}

void quantize_rows(int type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, int n_threads) {
    const QuantTraits& t = require_traits(type);
    if (!t.from_float_ref) throw std::invalid_argument(std::string("no reference quantizer for ") + t.name);
    require_blocks(t, n_per_row, "n_per_row");
    if (nrows < 0) throw std::invalid_argument("nrows must be >= 0");

    // Check every row first (in parallel) so that a non-finite value anywhere rejects the whole
    // tensor before any work is done; report the lowest bad index for a stable message.
    std::atomic<int64_t> first_bad{INT64_MAX};
    parallel_for(nrows, n_threads, [&](int64_t r0, int64_t r1) {
        const int64_t k = find_nonfinite(src + r0 * n_per_row, (r1 - r0) * n_per_row);
        if (k < 0) return;
        int64_t cur = first_bad.load();
        const int64_t idx = r0 * n_per_row + k;
        while (idx < cur && !first_bad.compare_exchange_weak(cur, idx)) {
        }
    });
    if (first_bad.load() != INT64_MAX) {
        const int64_t b = first_bad.load();
        throw std::invalid_argument("cannot quantize non-finite value (NaN/Inf) at row " + std::to_string(b / n_per_row) +
                                    ", column " + std::to_string(b % n_per_row));
    }

    const size_t rb = row_bytes(type, n_per_row);
    parallel_for(nrows, n_threads, [&](int64_t r0, int64_t r1) {
        t.from_float_ref(src + r0 * n_per_row, (uint8_t*)dst + (size_t)r0 * rb, (r1 - r0) * n_per_row);
    });
}

void dequantize(int type, const void* src, float* dst, int64_t n, int n_threads) {
    const QuantTraits& t = require_traits(type);
    require_blocks(t, n, "n");
    const int64_t nblocks = n / t.block_size;
    // Split by blocks in coarse chunks; dequantization is memory-bound so few threads suffice.
    parallel_for(nblocks, resolve_threads(n_threads, std::max<int64_t>(1, nblocks / 1024)), [&](int64_t b0, int64_t b1) {
        t.to_float((const uint8_t*)src + (size_t)b0 * t.block_bytes, dst + b0 * t.block_size, (b1 - b0) * t.block_size);
    });
}

void quant_matmul_ref(int type, const void* w, int64_t n_in, int64_t n_out, const float* x, int64_t T, float* y,
                      int n_threads) {
    const QuantTraits& t = require_traits(type);
    if (!t.vec_dot) throw std::invalid_argument(std::string(t.name) + " is not a weight format (no vec_dot)");
    require_blocks(t, n_in, "n_in");
    if (n_out < 0 || T < 0) throw std::invalid_argument("n_out and T must be >= 0");

    // Quantize every activation row once into the weight's vec_dot_type.
    const size_t xrb = row_bytes(t.vec_dot_type, n_in);
    std::vector<uint8_t> xq((size_t)T * xrb);
    parallel_for(T, n_threads, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) t.quantize_act(x + r * n_in, xq.data() + (size_t)r * xrb, n_in);
    });

    // Parallel over weight rows: each weight row is read once and dotted with all T activations.
    const size_t wrb = row_bytes(type, n_in);
    parallel_for(n_out, n_threads, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
            const uint8_t* wr = (const uint8_t*)w + (size_t)o * wrb;
            for (int64_t r = 0; r < T; ++r) y[r * n_out + o] = t.vec_dot(n_in, wr, xq.data() + (size_t)r * xrb);
        }
    });
}

}  // namespace pq
