// membw.cpp: this machine's DRAM read bandwidth, the roofline a decode step is judged against.
//
// Each thread sums its own contiguous slice of a buffer much larger than the caches (the same access
// pattern as streaming weight rows); the best of reps full passes over all threads is reported.
#include "membw.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace pq {

double read_bandwidth(int n_threads, int64_t n_bytes, int reps) {
    n_threads = std::max(1, n_threads);
    const int64_t n = std::max<int64_t>(n_bytes / 8, 1 << 20);
    std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
    // Touch every page first (from the threads that will read it), so the timing sees no page faults.
    std::vector<uint64_t> sink(n_threads * 8, 0);  // 64 bytes per thread: no false sharing of the results
    auto pass = [&](bool init) {
        std::vector<std::thread> th;
        for (int t = 0; t < n_threads; ++t) {
            th.emplace_back([&, t] {
                const int64_t b = n * t / n_threads, e = n * (t + 1) / n_threads;
                if (init) {
                    for (int64_t i = b; i < e; ++i) buf[i] = (uint64_t)i;
                    return;
                }
                uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int64_t i = b;
                for (; i + 4 <= e; i += 4) {
                    s0 += buf[i];
                    s1 += buf[i + 1];
                    s2 += buf[i + 2];
                    s3 += buf[i + 3];
                }
                for (; i < e; ++i) s0 += buf[i];
                sink[t * 8] += s0 + s1 + s2 + s3;
            });
        }
        for (auto& x : th) x.join();
    };
    pass(true);
    double best = 0;
    for (int r = 0; r < std::max(1, reps); ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        pass(false);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, (double)n * 8 / s);
    }
    volatile uint64_t keep = 0;
    for (uint64_t v : sink) keep = keep + v;
    (void)keep;
    return best;
}

}  // namespace pq
