"""CI smoke of the structure-aware GGUF fuzzer (tools/gguf_fuzz.py): 240 fixed-seed mutations of a
fixture model, run in subprocess batches under an address-space limit and a per-case timeout. Every case
loads and runs a forward pass, or raises ModelFormatError; none crashes, hangs, allocates by an
unchecked count, or raises an exception outside pyqwen's error family. The 10,000-case campaign is the
same code: python tools/gguf_fuzz.py --seed-gguf MODEL.gguf --cases 10000 (numbers in its report)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pq_testutil import HF_MODELS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import gguf_fuzz  # noqa: E402

N_CASES = 240


def test_mutated_files_load_or_fail_clearly(gguf_cache):
    seed_file = gguf_cache(HF_MODELS[0], "f32")
    rep = gguf_fuzz.run_campaign(str(seed_file), seed=20260, n_cases=N_CASES, jobs=2, batch=40,
                                 mem_bytes=3 << 30, case_timeout=60.0)
    assert rep["cases"] == N_CASES
    assert rep["bugs"] == 0, rep["findings"][:5]
    # the mutations reach both sides of the loader: rejections and files that still run
    assert rep["outcomes"].get("format_error", 0) > N_CASES // 2
    assert rep["outcomes"].get("loaded", 0) > 0


def test_mutations_are_reproducible_and_the_writer_round_trips(gguf_cache):
    seed_bytes = Path(gguf_cache(HF_MODELS[0], "f32")).read_bytes()
    assert gguf_fuzz.serialize(gguf_fuzz.parse(seed_bytes)) == seed_bytes
    assert gguf_fuzz.mutate(seed_bytes, 1, 17) == gguf_fuzz.mutate(seed_bytes, 1, 17)
    assert len({gguf_fuzz.mutate(seed_bytes, 1, i)[0] for i in range(20)}) == 20


@pytest.mark.parametrize("field, value", [("n_kv_override", 1 << 40), ("n_tensors_override", (1 << 64) - 1)])
def test_huge_counts_are_rejected_at_once(gguf_cache, tmp_path, field, value):
    """No allocation or loop by an unchecked count: rejected before gguf's reader runs."""
    import pyqwen

    g = gguf_fuzz.parse(Path(gguf_cache(HF_MODELS[0], "f32")).read_bytes())
    setattr(g, field, value)
    p = tmp_path / "huge.gguf"
    p.write_bytes(gguf_fuzz.serialize(g))
    with pytest.raises(pyqwen.ModelFormatError, match="does not fit in the file"):
        pyqwen.Model.load(p, threads=1)


def test_huge_array_count_is_rejected(gguf_cache, tmp_path):
    import pyqwen

    g = gguf_fuzz.parse(Path(gguf_cache(HF_MODELS[0], "f32")).read_bytes())
    kv = next(kv for kv in g.kvs if kv.key == b"tokenizer.ggml.token_type")
    kv.value.len_override = 0xFFFFFFFF
    p = tmp_path / "arr.gguf"
    p.write_bytes(gguf_fuzz.serialize(g))
    with pytest.raises(pyqwen.ModelFormatError, match="array of 4294967295 values"):
        pyqwen.Model.load(p, threads=1)


FAKE_WORKER = r'''
import json, os, sys, time
tmp, idx = sys.argv[1], [int(i) for i in sys.argv[2].split(",")]
for i in idx:
    if i == 3:                       # dies before announcing its case (as a fuzzer bug once did)
        raise SystemExit("boom")
    if i == 5:                       # announces, then hangs
        print(json.dumps({"start": i}), flush=True); time.sleep(60)
    sys.stderr.write("x" * 100_000)  # more than a pipe holds: must not block the worker
    sys.stderr.flush()
    # the start line and the result in one write: a buffered readline + select would sit on the second
    os.write(1, (json.dumps({"start": i}) + "\n" + json.dumps({"index": i, "outcome": "format_error"}) + "\n").encode())
'''


def test_the_runner_never_stalls(tmp_path):
    """The parent side of a campaign: a worker that dies before announcing a case, one that hangs, a
    chatty stderr and lines that arrive together each end in a recorded outcome, never a re-run loop
    (the first campaign stalled on one batch for these reasons)."""
    w = tmp_path / "worker.py"
    w.write_text(FAKE_WORKER)
    res = gguf_fuzz.run_worker([sys.executable, str(w)], list(range(8)), mem_bytes=1 << 30, case_timeout=3.0,
                               startup_timeout=10.0)
    assert [r["index"] for r in res] == list(range(8))
    assert [r["outcome"] for r in res] == ["format_error"] * 3 + ["worker", "format_error", "hang"] + \
        ["format_error"] * 2


def test_hangs_replayed_alone_are_told_from_starvation():
    res = [{"index": 1, "outcome": "hang", "ops": ["a"]}, {"index": 2, "outcome": "hang", "ops": ["b"]},
           {"index": 3, "outcome": "loaded", "ops": ["a"], "finite": True}]
    replays = [{"index": 1, "replayed_outcome": "format_error", "starved": True},
               {"index": 2, "replayed_outcome": "hang", "starved": False}]
    rep = gguf_fuzz.summarize(res, 0, "x", 0.0, 1, replays)
    assert rep["outcomes"] == {"format_error": 1, "hang": 1, "loaded": 1}
    assert rep["hang_recorded"] == 2 and rep["hang_starved"] == 1 and rep["bugs"] == 1
