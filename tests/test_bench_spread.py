"""`pyqwen bench --peer-llama-cpp` on a loaded machine (issue 14, item 6): the two engines' repetitions are
taken in turns, the ratio is shown with the range its repetitions allow, and a range too wide to mean
anything is a warning (a loaded machine once showed pyqwen at "16.28x" llama.cpp's decode)."""

from __future__ import annotations

import json

from pyqwen.bench import BenchReport, BenchRow, ModelDesc, format_markdown


def test_repetitions_alternate_between_the_engines(monkeypatch):
    import pyqwen
    from pyqwen import bench

    order = []

    class Fake:
        def __init__(self, name):
            self.name, self.extra_bufts = name, True

        def pp(self, n):
            order.append((self.name, "pp", n))
            return 1.0

        def tg(self, n):
            order.append((self.name, "tg", n))
            return 1.0

        def close(self):
            pass

    monkeypatch.setattr(bench, "PyqwenRunner", lambda model: Fake("ours"))
    monkeypatch.setattr(bench, "LlamaCppRunner", lambda *a, **k: Fake("peer"))
    monkeypatch.setattr(bench, "llama_cpp_available", lambda: None)
    bench.run_bench(model=pyqwen.Model.load(), n_prompt=8, n_gen=4, reps=3, threads=1, peer_llama_cpp=True)
    # one warm-up each, then turns; pp first, then tg
    assert order == [("ours", "pp", 8), ("peer", "pp", 8)] * 4 + [("ours", "tg", 4), ("peer", "tg", 4)] * 4


def _report(ours, peer):
    r = BenchReport(ModelDesc("qwen35 ?B F16", 1 << 20, 1000), "m.gguf", 256)
    r.rows = [BenchRow("pyqwen", "CPU", 2, "tg4", 4, ours), BenchRow("llama.cpp", "CPU", 2, "tg4", 4, peer)]
    return r


def test_steady_samples_give_a_ratio_with_its_range_and_no_warning():
    r = _report([10.0, 11.0, 10.5], [20.0, 21.0, 20.0])
    lo, hi = r.ratio_range("tg4")
    assert (lo, hi) == (10.0 / 21.0, 11.0 / 20.0)
    assert r.warnings() == []
    md = format_markdown(r)
    assert f"{r.ratio('tg4'):.2f} ({lo:.2f}-{hi:.2f})" in md and "warning" not in md


def test_a_collapsing_peer_is_flagged():
    # llama.cpp at 20 t/s, then 1.2 t/s when other load made its spinning threads lose their cores.
    r = _report([10.0, 10.0, 9.0], [20.0, 1.2, 19.0])
    lo, hi = r.ratio_range("tg4")
    assert hi / lo > 10
    (w,) = r.warnings()
    assert w.startswith("warning: tg4:") and f"{lo:.2f} to {hi:.2f}" in w
    assert w in format_markdown(r)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["warnings"] == [w] and d["ratio_ranges"]["tg4"] == [lo, hi]
