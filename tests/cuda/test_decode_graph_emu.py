"""The decode graph recorded once per (state, bucket of positions) and replayed (issue 10), under the
emulator's CUDA graphs (cuda/emu/emu_graph.h: a replay runs the recorded kernels with their capture-time
arguments, by value, as a GPU does).

cuda/model/model.cu records the one-token decode body with the position in device memory (the slot's int,
advanced by the body's last node; set by a launch of its own only when the state's position moved
otherwise), and the attention decode grid sized for a bucket of key counts (ops_attention.h
decode_bucket: 1, 2, 4, ... splits of 128 keys). The same scenario runs twice on the same weights --
graphs on, and the direct launches of use_graphs=False (today's path before the graphs) -- and every
logit row must be equal bit for bit: 48 greedy steps across the 128 -> 129 keys bucket boundary, a
verification + rollback, a snapshot restore, a state reset, and two states taking turns. Then the
counters (one capture per bucket, not per token) and a planted bug: graphs recorded with the position
passed by value give other logits when replayed (the emulator keeps the recorded arguments, so the
stale position shows).

Model: tests/fixtures/hf/qwen35-r2-untied as F16 (8 layers, 2 of them attention), n_ctx 160.
"""

from __future__ import annotations

import numpy as np
import pytest

N_CTX = 160
PROMPT = [(7 * i + 3) % 2400 for i in range(100)]  # 100 tokens: the first decode steps attend 101..128 keys
PROMPT_B = [(11 * i + 5) % 2400 for i in range(20)]


def load(emu_ops, path, use_graphs: bool):
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    return CudaCore.from_gguf(GGUFFile.open(path), N_CTX, n_batch=32, module=emu_ops, use_graphs=use_graphs,
                              progress=False)


def greedy(core, st, tok: int, n: int, rows: list) -> int:
    """n one-token steps (forward 'last': the decode body), feeding back the argmax; rows get the logits."""
    for _ in range(n):
        r = core.forward(st, [tok], "last", 256)
        rows.append(r)
        tok = int(r.argmax())
    return tok


def scenario(core) -> tuple[list, list, dict]:
    """Everything a decode graph must survive; returns (logit rows, device-chosen tokens, stats by phase)."""
    rows, toks, stats = [], [], {}
    a = core.new_state(N_CTX)
    core.forward(a, PROMPT, "none", 256)
    # 48 steps: positions 100..147, keys 101..148 -- the bucket boundary at 129 keys on the way
    tok = greedy(core, a, 5, 48, rows)
    stats["after_48"] = dict(core.graph_stats)
    # on-device greedy feedback (decode(-1): the chosen token never leaves the device)
    toks += [core.decode(a, tok)] + [core.decode(a, -1) for _ in range(2)]
    # a verification moves the position by 4, the rollback back to 2 of them; the graph continues
    core.verify(a, [11, 400, 7, 1999])
    core.rollback(a, 2)
    assert a.pos == 100 + 48 + 3 + 2
    tok = greedy(core, a, 33, 3, rows)
    # snapshot, 2 steps, restore, the same 2 steps again (the position goes back under the graph)
    snap = core.snapshot(a, True)
    first = []
    greedy(core, a, tok, 2, first)
    core.restore(a, snap)
    again = []
    greedy(core, a, tok, 2, again)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    rows += first + again
    # reset: the same state from position 0 (a new bucket for it again)
    a.reset()
    core.forward(a, PROMPT_B, "none", 256)
    greedy(core, a, 9, 3, rows)
    # two states taking turns, each with its own graph and position
    b = core.new_state(N_CTX)
    core.forward(b, PROMPT[:30], "none", 256)
    ta, tb = 12, 13
    for _ in range(4):
        ta = greedy(core, a, ta, 1, rows)
        tb = greedy(core, b, tb, 1, rows)
    stats["end"] = dict(core.graph_stats)
    return rows, toks, stats


@pytest.fixture(scope="module")
def runs(emu_ops, tiny_f16):
    direct = load(emu_ops, tiny_f16, use_graphs=False)
    graphed = load(emu_ops, tiny_f16, use_graphs=True)
    assert graphed.graphs_enabled and not direct.graphs_enabled
    return scenario(direct), scenario(graphed)


def test_graph_replays_equal_direct_launches_bit_for_bit(runs):
    (rows_d, toks_d, _), (rows_g, toks_g, stats) = runs
    assert len(rows_d) == len(rows_g) == 48 + 3 + 4 + 3 + 8
    for i, (d, g) in enumerate(zip(rows_d, rows_g)):
        assert np.array_equal(d, g), f"row {i}: max |diff| {np.abs(d - g).max()}"
    assert toks_d == toks_g
    # they were replays: one direct step (the model's first), the rest graph launches
    assert stats["end"]["direct"] == 1
    assert stats["end"]["launches"] == len(rows_g) - 1 + len(toks_g)


def test_one_capture_per_bucket_not_per_token(runs):
    _, (_, _, stats) = runs
    s = stats["after_48"]
    # 48 steps of one state: the first direct, then the buckets of 1 split (<= 128 keys) and of 2 splits
    # (129..160 keys: n_ctx caps the grid): two recordings, 47 launches
    assert s["direct"] == 1 and s["launches"] == 47
    assert s["captures"] == 2 and s["instantiations"] == 2 and s["updates"] == 0
    # each graph's position was set from the host once (before its first replay: every slot has its own
    # int), then only advanced by the graph's last node
    assert s["pos_sets"] == 2
    e = stats["end"]
    # afterwards: the reset state is back in its 1-split bucket (its graph kept: 4 slots, least recently
    # used replaced), the second state records its own; the position is set from the host once after each
    # host-side move (verify + rollback, restore, reset + prefill) and once for the second state's slot --
    # two states taking turns need none (each slot keeps its own position)
    assert e["captures"] == 3 and e["updates"] == 0
    assert e["pos_sets"] == 2 + 4


def test_graph_body_is_the_direct_body_plus_the_position_node(emu_ops, tiny_f16):
    def body_nodes(use_graphs: bool) -> int:
        core = load(emu_ops, tiny_f16, use_graphs)
        st = core.new_state(N_CTX)
        core.forward(st, PROMPT[:4], "none", 256)
        for t in (1, 2):
            core.forward(st, [t], "last", 256)
        assert core.graph_stats["captures"] == (1 if use_graphs else 0)  # after the first (direct) step
        return core.graph_stats["body_nodes"]  # the ledger's count, or the recorded graph's nodes

    assert body_nodes(True) == body_nodes(False) + 1


def test_planted_stale_position_is_caught(emu_ops, tiny_f16):
    """The planted bug: recorded bodies take the capture-time position by value. The first replay of a
    recording runs at its capture position (right), every later one at a stale position -- wrong logits,
    which the emulator shows because its replays keep the recorded arguments."""
    def run(core):
        st = core.new_state(N_CTX)
        core.forward(st, PROMPT[:8], "none", 256)
        rows = []
        greedy(core, st, 5, 5, rows)
        return rows

    ref = run(load(emu_ops, tiny_f16, use_graphs=False))
    emu_ops.testing._set_decode_graph_stale_position(True)
    try:
        bad = run(load(emu_ops, tiny_f16, use_graphs=True))
    finally:
        emu_ops.testing._set_decode_graph_stale_position(False)
    good = run(load(emu_ops, tiny_f16, use_graphs=True))
    assert all(np.array_equal(r, g) for r, g in zip(ref, good))
    # step 0 direct, step 1 the capture's own position: equal; steps 2.. replay a stale position
    assert np.array_equal(ref[1], bad[1])
    assert all(np.abs(r - b).max() > 1e-3 for r, b in zip(ref[2:], bad[2:]))
