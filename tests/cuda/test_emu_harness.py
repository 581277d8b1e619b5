"""Self-tests of the CPU CUDA emulator (cuda/emu/): it must give CUDA's answers for correct kernels and
make incorrect ones fail loudly -- wrong results for a missing barrier, an abort for undefined behaviour.
The kernels are in selftest_kernels.cu."""

from __future__ import annotations

import signal

import numpy as np
import pytest

SEEDS = [1, 2, 3, 0xBEEF]


# ---- barriers and shared memory -------------------------------------------------------------------------
def _chunk_sums(x: np.ndarray, block: int) -> np.ndarray:
    return np.add.reduceat(x, np.arange(0, len(x), block)).astype(np.float32)


@pytest.mark.parametrize("seed", SEEDS)
def test_block_sum_exact(selftest, seed):
    selftest.set_seed(seed)
    x = (np.arange(3000) % 23).astype(np.float32)  # integer-valued: any summation order is exact
    np.testing.assert_array_equal(selftest.block_sum(x), _chunk_sums(x, 256))


@pytest.mark.parametrize("seed", SEEDS)
def test_missing_barrier_gives_wrong_result(selftest, seed):
    """The same kernel compiled with -DPQ_SELFTEST_NO_BARRIER: the random resume order must expose it."""
    selftest.set_seed(seed)
    x = (np.arange(3000) % 23).astype(np.float32)
    got = selftest.block_sum(x, barrier=False)
    assert not np.array_equal(got, _chunk_sums(x, 256))


@pytest.mark.parametrize("block", [32, 64, 256, 1024])
def test_dynamic_shared_memory(selftest, block):
    x = (np.arange(5000) % 7).astype(np.float32)
    np.testing.assert_array_equal(selftest.dyn_block_sum(x, block), _chunk_sums(x, block))


@pytest.mark.parametrize("seed", SEEDS)
def test_missing_barrier_dynamic_shared_reads_nan(selftest, seed):
    """Fresh dynamic shared memory is NaN, so reading a slot before its writer ran poisons the sum."""
    selftest.set_seed(seed)
    x = (np.arange(5000) % 7).astype(np.float32)
    got = selftest.dyn_block_sum(x, 256, barrier=False)
    assert np.isnan(got).any() or not np.array_equal(got, _chunk_sums(x, 256))


def test_barrier_votes(selftest):
    x = np.array([1, 0, 3, -4] * 24, dtype=np.int32)
    count, all_, any_ = selftest.barrier_votes(x).reshape(3, -1)
    assert (count == 48).all() and (all_ == 0).all() and (any_ == 1).all()
    x = np.ones(96, dtype=np.int32)
    count, all_, any_ = selftest.barrier_votes(x).reshape(3, -1)
    assert (count == 96).all() and (all_ == 1).all() and (any_ == 1).all()


def test_3d_block_forms_warps_from_linear_ids(selftest):
    out = selftest.block_3d().reshape(-1, 2)
    lin = np.arange(64)
    np.testing.assert_array_equal(out[:, 0], lin)
    np.testing.assert_array_equal(out[:, 1], lin // 32 * 32)


# ---- warp intrinsics ------------------------------------------------------------------------------------
def _expected_warp_ops(x: np.ndarray) -> np.ndarray:
    exp = np.full((13, 64), -2, dtype=np.int64)
    for w in range(2):
        v = x[32 * w : 32 * w + 32].astype(np.int64)
        for lane in range(32):
            t = 32 * w + lane
            exp[0, t] = v[:16].sum() if lane < 16 else v[16:].sum()
            exp[1, t] = v[(lane & ~7) + 3]
            exp[2, t] = v[lane] if lane - (lane & ~15) < 2 else v[lane - 2]
            exp[3, t] = v[lane] if lane + 3 >= 32 else v[lane + 3]
            exp[4, t] = v[lane ^ 5]
            lanes = range(lane % 2, 32, 2)
            exp[5, t] = sum(1 << j for j in lanes if v[j] & 1)
            if lane < 16:
                exp[6, t] = int((v[:16] > 90).any())
                exp[7, t] = int((v[:16] >= 0).all())
                exp[8, t] = -1  # source lane outside the mask: the emulator's poison
            exp[9, t] = v[lane] if lane == 31 else v[lane + 1]
            if lane % 2:
                exp[10, t] = v[1::2].sum()
            exp[11, t] = v[lane ^ 1]
            exp[12, t] = 1
    return exp.astype(np.uint32).view(np.int32)  # ballots wrap to int32 like the kernel's store


@pytest.mark.parametrize("seed", SEEDS)
def test_warp_shuffles_and_votes(selftest, seed):
    selftest.set_seed(seed)
    x = np.random.default_rng(seed).integers(0, 100, 64).astype(np.int32)
    got = selftest.warp_ops(x).reshape(selftest.WARP_TESTS, 64)
    exp = _expected_warp_ops(x)
    for row in range(selftest.WARP_TESTS):
        np.testing.assert_array_equal(got[row], exp[row], err_msg=f"warp test {row}")


# ---- atomics, integer dot products, 16-bit floats -------------------------------------------------------
def test_atomics(selftest):
    vals = np.random.default_rng(5).integers(0, 1000, 2000).astype(np.int32)
    nbins = 11
    out = selftest.atomics(vals, nbins)
    np.testing.assert_array_equal(out[:nbins], np.bincount(vals % nbins, minlength=nbins))
    assert out[nbins] == vals.max()
    assert out[nbins + 1] == vals.sum()  # float sum through an atomicCAS loop; exact below 2^24
    u64 = int((vals.astype(np.uint64) << np.uint64(20)).sum())
    assert out[nbins + 2] == u64 & 0xFFFFFFFF and out[nbins + 3] == u64 >> 32


@pytest.mark.parametrize("is_unsigned", [False, True])
def test_dp4a(selftest, is_unsigned):
    rng = np.random.default_rng(7)
    n = 1000
    a, b, c = (rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32) for _ in range(3))
    bt = np.uint8 if is_unsigned else np.int8
    prod = (a.view(bt).reshape(n, 4).astype(np.int64) * b.view(bt).reshape(n, 4).astype(np.int64)).sum(1)
    cc = c.view(np.uint32).astype(np.int64) if is_unsigned else c.astype(np.int64)
    exp = ((prod + cc) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    np.testing.assert_array_equal(selftest.dp4a(a, b, c, is_unsigned), exp)


def _special_floats() -> np.ndarray:
    rng = np.random.default_rng(11)
    edge = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e5, 6.1e-5, 6.0e-8, 5.96e-8, 2.98e-8, 2.99e-8,
            1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 3.0e38, 1e-40, np.inf, -np.inf, np.nan]
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([np.array(edge, np.float32), rng.normal(0, 3, 5000).astype(np.float32),
                           (rng.normal(0, 1, 2000) * 1e-6).astype(np.float32), bits])


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def test_half_and_bf16_conversions_match_numpy(selftest):
    x = _special_floats()
    n = len(x)
    h, b = selftest.to_16bit(x).reshape(2, n)
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        ref_h = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(h[~nan], ref_h[~nan])
    assert np.isnan(h[nan].view(np.float16)).all()
    np.testing.assert_array_equal(b[~nan], _bf16_bits(x[~nan]))
    assert np.isnan((b[nan].astype(np.uint32) << 16).view(np.float32)).all()
    # and back: every finite half / bf16 value converts to float exactly
    back = h[~nan].view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(back, ref_h[~nan].view(np.float16).astype(np.float32))


def test_half_arithmetic_matches_numpy(selftest):
    rng = np.random.default_rng(13)
    a = (rng.normal(0, 8, 4000)).astype(np.float32)
    b = (rng.normal(0, 8, 4000)).astype(np.float32)
    n = len(a)
    add, mul, sub, fma = selftest.half_ops(a, b).reshape(4, n).view(np.float16)
    ha, hb = a.astype(np.float16), b.astype(np.float16)
    np.testing.assert_array_equal(add, ha + hb)
    np.testing.assert_array_equal(mul, ha * hb)
    np.testing.assert_array_equal(sub, ha - hb)
    exact = (ha.astype(np.float64) * hb.astype(np.float64) + ha.astype(np.float64)).astype(np.float16)
    ulps = np.abs(fma.view(np.int16).astype(np.int32) - exact.view(np.int16).astype(np.int32))
    assert ulps.max() <= 1


# ---- launch validation and undefined behaviour ----------------------------------------------------------
def test_invalid_launches_set_last_error(selftest):
    too_many_threads, bad_grid, smem_no_optin, smem_optin, ran = selftest.launch_errors()
    assert too_many_threads == 9 and bad_grid == 9  # cudaErrorInvalidConfiguration
    assert smem_no_optin == 1  # cudaErrorInvalidValue
    assert smem_optin == 0 and ran == 0


ABORTS = [
    ("divergent_exit", "divergent __syncthreads"),
    ("divergent_sites", "wait at different barriers"),
    ("shfl_lane_exits", "a lane named in mask never arrives"),
    ("shfl_vs_barrier", "waits at __syncthreads"),
    ("shfl_not_in_mask", "does not include itself"),
    ("shfl_mask_mismatch", "deadlock"),
    ("shfl_missing_lanes", "lanes that do not exist"),
    ("smem_overflow", "past the end of dynamic shared memory"),
    ("trap", "__trap()"),
    # memcheck (cuda/emu/emu_runtime.cpp): guard pages behind every cudaMalloc, freed blocks kept unmapped
    ("oob_read", "memcheck: invalid read of global memory"),
    ("use_after_free", "use after cudaFree"),
]


@pytest.mark.parametrize("fn,message", ABORTS, ids=[a[0] for a in ABORTS])
def test_undefined_behaviour_aborts_with_message(run_aborting, fn, message):
    rc, err = run_aborting(fn)
    assert rc == -signal.SIGABRT, err
    assert "pq_emu: error:" in err and message in err, err
    assert "in kernel " in err  # the message names the kernel and the block


def test_streams_run_queued_work_when_the_host_waits(selftest):
    """Async copies and launches run at the sync, in order: a pinned source is read then (the host's later
    write wins, as a GPU's DMA would see it), a pageable one at the call; nothing ran before the sync."""
    before, pinned, pageable = selftest.stream_order()
    assert before == -1      # still the 0xff fill: the queued copy and kernel had not run
    assert pinned == 2 + 1   # the value the host wrote after queueing, + the kernel's 1
    assert pageable == 1 + 1  # the value at the call


def test_events_order_two_streams(selftest):
    """cudaStreamWaitEvent orders a consumer stream after a producer's record, and a producer after the
    consumer has read a buffer it reuses (two buffers, two streams: the prefill fallback's pattern)."""
    not_ready, ready, *seen = selftest.event_pipeline(0)
    assert (not_ready, ready) == (1, 1)
    assert seen == [0, 1, 2, 3, 4, 5]


def test_events_missing_consumer_wait_reads_stale_buffer(selftest):
    """Planted bug: without the consumer's wait, the emulator runs the consumer first (the producer's stream
    is deferred until something waits for it): every step sees the unwritten buffer (0xff bytes = -1)."""
    seen = selftest.event_pipeline(1)[2:]
    assert seen == [-1] * 6


def test_events_missing_producer_wait_overwrites_buffer(selftest):
    """Planted bug: without the producer's wait for the consumer, the producer, once run, runs ahead and
    refills both buffers before the consumer read them: the consumer sees the last steps' values."""
    seen = selftest.event_pipeline(2)[2:]
    assert seen == [4, 5, 4, 5, 4, 5]


def test_event_wait_takes_the_record_at_the_call(selftest):
    assert selftest.event_rerecord() == [1, 2]


def test_graph_capture_replays_arguments_by_value(selftest):
    """CUDA graphs (cuda/emu/emu_graph.h): nothing runs at capture; a replay sees the kernel arguments of
    the capture (by value) and reads a pinned copy source when it runs; cudaGraphExecUpdate patches the
    arguments of a graph of the same topology and refuses another one; pageable copies cannot be
    captured."""
    r = list(selftest.graph_semantics())
    assert r == [-1, 2, 5, 11, 0, 9, 910, 2, 9, 900], r


def test_no_leaked_allocations(selftest):
    selftest.block_sum(np.ones(10, np.float32))
    assert selftest.live_allocations() == 0
