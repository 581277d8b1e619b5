"""`pyqwen bench` harness additions: several pp rows, the interleaved peer, the bandwidth probe and the
27B-shaped slice's configuration (its build takes minutes, so only its config is checked here)."""

from __future__ import annotations

import re

import pytest

from pyqwen.cli import main

core = pytest.importorskip("pyqwen._core")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_several_prompt_sizes_and_bandwidth(capsys):
    # The built-in demo model (no -m): one pp row per -p value, in order, then tg.
    rc, out, err = run(capsys, "bench", "-p", "4,8", "-n", 2, "-r", 1, "-t", 1, "--bandwidth")
    assert rc == 0, err
    tests = [ln.split("|")[6].strip() for ln in out.splitlines()[2:] if ln.startswith("|")]
    assert tests == ["pp4", "pp8", "tg2"]
    assert re.search(r"tg2 \(CPU\): [\d.]+ GB/s achieved .*% of the [\d.]+ GB/s measured read bandwidth", out), out


def test_read_bandwidth_probe():
    assert core.read_bandwidth(1, 1 << 24, 1) > 1e8  # bytes/s; any machine reads > 100 MB/s


def test_slice_config_is_the_27b_at_4_layers():
    from pyqwen.bench_slice import SLICE_CONFIG
    from pyqwen.convert.qwen35 import params_from_config

    p = params_from_config(SLICE_CONFIG)
    assert (p.n_embd, p.n_layer, p.n_vocab) == (5120, 4, 32768)
    assert [p.is_recurrent(i) for i in range(4)] == [True, True, True, False]
    c = SLICE_CONFIG
    assert c["intermediate_size"] == 17408
    assert (c["linear_num_key_heads"], c["linear_num_value_heads"], c["linear_key_head_dim"]) == (16, 48, 128)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (24, 4, 256)
    assert sum(c["rope_parameters"]["mrope_section"]) * 2 == 256 * c["rope_parameters"]["partial_rotary_factor"]
