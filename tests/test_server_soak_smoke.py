"""CI smoke of the bounded loopback soak (tools/server_soak.py): 120 requests from 16 concurrent clients
(streams with random hang-ups, session turns and retries, completions, malformed and oversized bodies).
Every valid request is answered, every bad one gets its 4xx, and /metrics counts every request the
clients sent to the two generation endpoints (the warm-up included)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("requests")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import server_soak  # noqa: E402

N = 120


def test_soak_smoke():
    rep = server_soak.run(N, 16, seed=3, max_tokens=4)
    assert rep["requests"] == N
    assert rep["failures"] == 0, rep["failure_examples"]
    assert set(rep["by_kind"]) == {k for k, _ in server_soak.KINDS}
    # every chat/completion request the clients sent, plus the warm-up, is in /metrics
    sent = N + 1
    assert rep["metrics_requests_total"] == sent, rep
