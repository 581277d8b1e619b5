"""cuda/kernels/tile_load.cuh against the PTX ISA: ldmatrix.x4 / .x4.trans and cp.async, through the
one-warp probe (ops_attention.h tile_load_probe), on the emulator and (where one is present) on a GPU.

The expected registers are written from the ISA's definition of ldmatrix (m8n8, b16), independently of
the twin: lane 8i + r supplies the address of row r of matrix i; lane l (gid = l // 4, tig = l % 4)
receives M_i[gid][2tig], M_i[gid][2tig + 1] (low half first), and with .trans M_i[2tig][gid],
M_i[2tig + 1][gid]. On a GPU this checks that the twin's mapping is the hardware's.
"""

from __future__ import annotations

import numpy as np
import pytest


def _isa_ldmatrix(smem: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[32, 8] uint32: per lane the x4 then the x4.trans registers, from the ISA's element mapping."""
    out = np.zeros((32, 8), np.uint32)
    for lane in range(32):
        gid, tig = lane // 4, lane % 4
        for i in range(4):
            rows = [smem[offsets[8 * i + r]: offsets[8 * i + r] + 8] for r in range(8)]  # matrix i, row by row
            lo, hi = rows[gid][2 * tig], rows[gid][2 * tig + 1]
            out[lane, i] = int(lo) | (int(hi) << 16)
            lo, hi = rows[2 * tig][gid], rows[2 * tig + 1][gid]
            out[lane, 4 + i] = int(lo) | (int(hi) << 16)
    return out


def _tile(rng, ld: int) -> np.ndarray:
    # distinct fp16 values, so any element taken from the wrong place shows
    vals = rng.permutation(16 * ld).astype(np.float16) / np.float16(4)
    return vals.reshape(16, ld)


@pytest.mark.parametrize("ld", [16, 24, 40, 64])
def test_ldmatrix_fragments_follow_the_isa(ops, ld):
    rng = np.random.default_rng(ld)
    tile = _tile(rng, ld)
    bits = tile.view(np.uint16).reshape(-1)
    # the callers' patterns (A of m16n8k16: rows 0-15 x column halves; B of .trans) and random row addresses
    mi, mr = np.arange(32) // 8, np.arange(32) % 8
    patterns = [
        (mr + 8 * (mi % 2)) * ld + 8 * (mi // 2),
        (mr + 8 * (mi // 2)) * ld + 8 * (mi % 2),
        rng.integers(0, 16, 32) * ld + 8 * rng.integers(0, ld // 8, 32),
    ]
    for offsets in patterns:
        offsets = offsets.astype(np.int32)
        got = ops.tile_load_probe(tile, offsets)
        np.testing.assert_array_equal(got, _isa_ldmatrix(bits, offsets))


def test_fragments_feed_the_mma_as_a_matrix_product(ops):
    """The A pattern of the prefill kernel reads the 16x16 tile as m16n8k16's A: a[0..3] = (rows 0-7 |
    8-15) x (cols 0-7 | 8-15); register j of lane l holds A[gid + 8 (j % 2)][2 tig + 8 (j // 2) + {0, 1}]."""
    tile = _tile(np.random.default_rng(1), 16)
    bits = tile.view(np.uint16)
    mi, mr = np.arange(32) // 8, np.arange(32) % 8
    got = ops.tile_load_probe(tile, ((mr + 8 * (mi % 2)) * 16 + 8 * (mi // 2)).astype(np.int32))
    for lane in range(32):
        gid, tig = lane // 4, lane % 4
        for j in range(4):
            r, c = gid + 8 * (j % 2), 2 * tig + 8 * (j // 2)
            assert got[lane, j] == int(bits[r, c]) | (int(bits[r, c + 1]) << 16)


def test_probe_rejects_bad_offsets(ops):
    tile = np.zeros((16, 16), np.float16)
    with pytest.raises(ValueError):
        ops.tile_load_probe(tile, np.full(32, 4, np.int32))        # not 16-byte aligned
    with pytest.raises(ValueError):
        ops.tile_load_probe(tile, np.full(32, 16 * 16, np.int32))  # past the tile
    with pytest.raises(ValueError):
        ops.tile_load_probe(np.zeros((16, 12), np.float16), np.zeros(32, np.int32))


def test_emulated_cp_async_lands_only_at_its_wait(emu_ops):
    """Planted bug: reading the tile without cp.async.wait_group. The emulator defers every copy to the wait
    that covers it, so the read sees the 0xFFFF fill instead of the data (on a GPU the outcome would be
    timing-dependent: exactly the bug the emulated tests must catch)."""
    tile = _tile(np.random.default_rng(2), 16)
    offsets = (np.arange(32) % 16 * 16).astype(np.int32)
    waited = emu_ops.testing.tile_load_probe(tile, offsets)
    stale = emu_ops.testing.tile_load_probe(tile, offsets, skip_wait=True)
    assert (waited != 0xFFFFFFFF).all()
    assert (stale == 0xFFFFFFFF).all()
