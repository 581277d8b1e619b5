#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PQ_PAUSE() _mm_pause()
#else
#define PQ_PAUSE() std::this_thread::yield()
#endif

namespace pq {

// How long an idle worker spins before it sleeps: about a millisecond of pause instructions, longer than
// the gap between two parallel_for calls of a forward pass (and between decode steps), far shorter than
// a human's pause between requests.
static constexpr int kSpinIterations = 1 << 14;

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_.store(true);
    }
    cv_start_.notify_all();
    for (auto& t : workers_) t.join();
}

static inline void part_range(int64_t n, int parts, int i, int64_t* b, int64_t* e) {
    *b = n * i / parts;
    *e = n * (i + 1) / parts;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    const int parts = (int)(n < n_threads_ ? n : n_threads_);
    if (parts == 1) {
        fn(0, n, 0);
        return;
    }
    job_ = &fn;
    job_n_ = n;
    job_parts_ = parts;
    pending_.store((int)workers_.size(), std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(mu_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleeping_.load(std::memory_order_seq_cst) > 0) cv_start_.notify_all();
    int64_t b, e;
    part_range(n, parts, 0, &b, &e);
    fn(b, e, 0);
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < kSpinIterations) PQ_PAUSE();
        else std::this_thread::yield();  // a worker descheduled by a busy machine: give it the core
    }
    job_ = nullptr;
}

void ThreadPool::worker(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = generation_.load(std::memory_order_acquire)) == seen) {
            if (stop_.load(std::memory_order_relaxed)) return;
            if (++spins < kSpinIterations) {
                PQ_PAUSE();
                continue;
            }
            std::unique_lock<std::mutex> lock(mu_);
            sleeping_.fetch_add(1, std::memory_order_seq_cst);
            cv_start_.wait(lock, [&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; });
            sleeping_.fetch_sub(1, std::memory_order_seq_cst);
            spins = 0;
        }
        seen = g;
        const int parts = job_parts_;
        if (index < parts) {
            int64_t b, e;
            part_range(job_n_, parts, index, &b, &e);
            (*job_)(b, e, index);
        }
        pending_.fetch_sub(1, std::memory_order_release);
    }
}

}  // namespace pq
