"""The memory plan reserves the fp16 prefill fallback's tile pair (cuda/launch/gemm.cu gemm_prefill_n: two
buffers of up to 16M fp16 values, ~64 MB at the 27B's shapes) only when some weight of the file takes that
route (cuda/plan/workspace_sizes.h plan_workspace; the route: mmq_type_ok, else fp16 tiles + cuBLAS).

A Q4_K_M file (every matrix Q4_K / Q6_K: all through the int8 MMQ kernel) gets no tile pair; the same
table with IQ4_XS or BF16 matrices (the fallback's types) gets exactly the pair of its largest-scratch shape
on top; one fallback-typed shape among MMQ ones gets that shape's pair. The expected bytes come from the
documented formula (16M values per buffer, rows a multiple of 64, 256-byte alignment), not from our C++.
No emulator needed: the plan is host code (pyqwen._core includes the same header)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_memory_plan import Q4_K, Q6_K, plan27, qwen36_27b_q4km  # noqa: E402

from pyqwen.memory_plan import plan_for  # noqa: E402

IQ4_XS, BF16 = 23, 30
TILE_VALUES = 16 << 20


def tile_pair(K: int, N: int) -> int:
    rows = max(TILE_VALUES // K // 64 * 64, 64)
    rows = min(rows, N)
    buf = -(-rows * K * 2 // 256) * 256
    return 2 * buf


def retyped(ws: dict, new_type: int, only=lambda name: True) -> dict:
    return {n: ((new_type, ne0, ne1) if t in (Q4_K, Q6_K) and ne1 > 1 and only(n) else (t, ne0, ne1))
            for n, (t, ne0, ne1) in ws.items()}


def scratch(ws: dict, cfg: dict, n_batch: int = 512) -> int:
    return plan_for(cfg, ws, 8192, "f16", None, n_batch=n_batch).workspace["scratch"]


def test_q4km_plan_has_no_tile_pair_and_fallback_types_do():
    cfg, ws = qwen36_27b_q4km()
    q4km = scratch(ws, cfg)
    assert scratch(ws, cfg) == plan27(8192, n_batch=512).workspace["scratch"]
    # the largest matmul scratch of a 512-token chunk: ffn gate/up (K 5120, N 17408): fp16 x hi+lo
    # (2 x 512 x 5120 x 2 bytes) + g and u (2 x 512 x 17408 x 4) + the row scales; MMQ: no tiles
    gate_up = 2 * 512 * 5120 * 2 + 2 * 512 * 17408 * 4 + 512 * 4
    assert q4km >= gate_up and q4km - gate_up < 4096
    for t in (IQ4_XS, BF16):
        fallback = scratch(retyped(ws, t), cfg)
        assert fallback - q4km == tile_pair(5120, 17408) == 66_846_720, t
    # one fallback-typed shape (attn_gate, K 5120 N 6144, IQ4_XS) among MMQ weights: that shape's pair,
    # which with its smaller g/u stays below the gate/up shape's scratch here
    one = scratch(retyped(ws, IQ4_XS, lambda n: n.endswith("attn_gate.weight")), cfg)
    assert one == max(q4km, 2 * 512 * 5120 * 2 + tile_pair(5120, 6144) + 2 * 512 * 6144 * 4 + 512 * 4)


def test_decode_only_batches_never_reserve_tiles():
    """n_batch <= 16 never prefills through tiles (decode kernel passes): the same scratch for every type."""
    cfg, ws = qwen36_27b_q4km()
    assert scratch(ws, cfg, 16) == scratch(retyped(ws, IQ4_XS), cfg, 16)
