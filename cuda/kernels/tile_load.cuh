// tile_load.cuh: moving tiles into shared memory and tensor-core fragments out of it, asynchronously where
// the hardware can: cp.async (sm_80+) and ldmatrix (sm_75+), each with a portable twin the emulator runs.
//
// cp.async copies 16 bytes global -> shared without passing through registers, so the next tile streams in
// while the current one is multiplied (the flash prefill kernel overlaps V's copy with Q K^T and the next
// K's copy with the softmax and P V). ldmatrix gives each lane of a warp its fragment of up to four 8x8
// fp16 matrices in one instruction, instead of 2-8 scattered 16/32-bit shared loads per fragment.
//
// The twins keep the hardware's contract, not just its results:
//   - AsyncCopies defers every copy until a wait_group that covers it (or until the queue is full, when a
//     real copy could also have landed): a kernel that reads a tile before waiting for it reads stale data
//     under the emulator, as it may on a GPU, so a missing wait fails the emulated tests.
//   - ldmatrix_* gather the row addresses from the lanes that supply them (lane 8i + r gives row r of
//     matrix i) with shuffles, exactly as the PTX ISA defines the instruction, so the callers' address
//     bookkeeping is what the emulated tests check (tests/cuda/test_tile_load.py compares both against the
//     ISA's element mapping, on the emulator and on a GPU).
#pragma once

#include "../compat.cuh"
#include "reduce.cuh"  // kFullMask

namespace pq::cuda {

#if PQ_HAVE_PTX && PQ_DEVICE_ARCH >= 800
#define PQ_TILE_PTX 1
#else
#define PQ_TILE_PTX 0
#endif

#if PQ_TILE_PTX
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

#if !PQ_TILE_PTX
// The row address lane `src` supplies (pointers travel through a 64-bit shuffle).
__device__ __forceinline__ const uint16_t* lane_row(const uint16_t* row, int src) {
    return reinterpret_cast<const uint16_t*>(
        __shfl_sync(kFullMask, (unsigned long long)reinterpret_cast<uintptr_t>(row), src));
}
#endif

// ---- ldmatrix ------------------------------------------------------------------------------------------
// x4: four 8x8 b16 matrices; lane 8i + r supplies the (16-byte aligned) address of row r of matrix i.
// Result r[i] of lane l (gid = l / 4, tig = l % 4): M_i[gid][2tig] (low half) and M_i[gid][2tig + 1];
// with .trans: M_i[2tig][gid] (low half) and M_i[2tig + 1][gid] -- the transpose's non-trans fragment.
// These are the m16n8k16 A fragments (a[0..3] = rows 0-7/8-15 x cols 0-7/8-15) and B fragments
// (b[0], b[1] = k 0-7 / 8-15) that mma_m16n8k16 takes (attention_common.cuh).

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row) {
#if PQ_TILE_PTX
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
#else
    const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint16_t* p = lane_row(row, 8 * i + gid);
        r[i] = *reinterpret_cast<const uint32_t*>(p + 2 * tig);
    }
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* row) {
#if PQ_TILE_PTX
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
#else
    const int lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint16_t* p0 = lane_row(row, 8 * i + 2 * tig);
        const uint16_t* p1 = lane_row(row, 8 * i + 2 * tig + 1);
        r[i] = (uint32_t)p0[gid] | ((uint32_t)p1[gid] << 16);
    }
#endif
}

// ---- cp.async ------------------------------------------------------------------------------------------
// One thread's outstanding 16-byte global -> shared copies, in commit groups (cp.async.commit_group /
// wait_group). On the GPU the object is empty (the hardware tracks the groups); in the twin it queues up
// to kMax copies and performs them when a wait covers them. `valid == false` zero-fills the 16 bytes and
// reads nothing (cp.async's src-size 0), so a tile's tail past the data needs no second code path.
template <int kMax>
struct AsyncCopies {
#if PQ_TILE_PTX
    __device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                     "r"(valid ? 16 : 0));
    }
    __device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }
    // Wait until at most `kPending` of the committed groups are still in flight (the newest ones).
    template <int kPending>
    __device__ __forceinline__ void wait() {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
    }
#else
    struct Copy {
        void* dst;
        const void* src;
        int group;
    };
    Copy q_[kMax];
    int n_ = 0;      // queued copies, oldest first
    int group_ = 0;  // the group new copies join (the number of commits so far)

    __device__ void copy16(void* dst, const void* src, bool valid) {
        if (n_ == kMax) run(1);  // a full queue: the oldest copy has landed (legal on the GPU too)
        q_[n_++] = Copy{dst, valid ? src : nullptr, group_};
    }
    __device__ void commit() { ++group_; }
    template <int kPending>
    __device__ void wait() {
        int done = 0;
        while (done < n_ && q_[done].group < group_ - kPending) ++done;
        run(done);
    }

  private:
    __device__ void run(int count) {
        for (int i = 0; i < count; ++i) {
            if (q_[i].src)
                memcpy(q_[i].dst, q_[i].src, 16);
            else
                memset(q_[i].dst, 0, 16);
        }
        for (int i = count; i < n_; ++i) q_[i - count] = q_[i];
        n_ -= count;
    }
#endif
};

}  // namespace pq::cuda
