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
