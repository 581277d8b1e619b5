"""CI smoke of the bounded loopback soak (tools/server_soak.py): 100 requests from 16 concurrent clients
(streams with random hang-ups, session turns, edits and retries, completions, malformed and oversized
bodies). Every valid request is answered, every bad one gets its 4xx, /metrics counts every request the
clients sent to the two generation endpoints (the warm-up and the reuse checks included) and its
statuses add up, memory outside the session cache stays flat after warm-up, sessions reused after the soak give the
tokens and logprobs of a fresh prefill; and `pyqwen serve` SIGKILLed mid-stream restarts cleanly on the
same port with no stale files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("requests")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import server_soak  # noqa: E402

N = 100


def test_soak_smoke():
    rep = server_soak.run(N, 16, seed=3, max_tokens=4, reuse_checks=4)
    assert rep["requests"] == N
    assert rep["failures"] == 0, rep["failure_examples"]
    assert set(rep["by_kind"]) == {k for k, _ in server_soak.KINDS}
    # every chat/completion request the clients sent, plus the warm-up and the reuse checks, is in /metrics
    assert rep["metrics_requests_total"] == N + 1 + rep["reuse"]["sessions"], rep
    assert rep["reuse"]["sessions"] == 4 and rep["reuse"]["reused"] > 0, rep["reuse"]
    assert rep["reuse"]["mismatches"] == 0, rep["reuse"]
    assert all(rep["checks"].values()), rep["checks"]


def test_sigkill_mid_stream_then_restart():
    kr = server_soak.kill_restart()
    assert kr["killed_mid_stream"], kr
    assert kr["stale_files_after_kill"] == [] and kr["stale_files_after_restart"] == [], kr
    assert kr["restart_s"] is not None and kr["restart_serves"], kr
