"""Helpers shared by the tests (a uniquely named module: tests/ and tests/cuda/ both have a conftest)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
# The tiny transformers-made models (tests/fixtures/make_references.py) with reference outputs.
HF_MODELS = sorted(p.name for p in (FIXTURES / "hf").iterdir() if (p / "reference.npz").exists())


def load_reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "hf" / name / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def gpu_module():
    """pyqwen._cuda when it is built and sees a CUDA device, else None (the tests/gpu/ files skip)."""
    try:
        from pyqwen import _cuda
    except ImportError:
        return None
    if not hasattr(_cuda, "CudaModel") or _cuda.device_count() <= 0:
        return None
    return _cuda


def prefilled_pair(m, prompt: list[int], n_ctx: int):
    """Two fresh states of model `m` with `prompt` prefilled (no logits kept): one for the call under test,
    one for the reference it is compared with."""
    a, b = m.new_state(n_ctx), m.new_state(n_ctx)
    m.forward(a, prompt, logits="none")
    m.forward(b, prompt, logits="none")
    return a, b


def check_rollback_refusals(m, st) -> None:
    """The rollback refusals every backend shares (`m`: a Model or a core, `st` a prefilled state of it):
    none before a verify forward; after verifying 3 tokens, keeping 4 or 0 of them. Leaves 3 verified."""
    import pytest

    with pytest.raises(ValueError, match="verify forward"):
        m.rollback(st, 1)
    m.verify(st, [1, 2, 3])
    with pytest.raises(ValueError, match="keeps 1..3"):
        m.rollback(st, 4)
    with pytest.raises(ValueError, match="keeps 1..3"):
        m.rollback(st, 0)


def corrupted_truth_draft(truth: list[int], n_gen: int, limit: int, rng, max_k: int):
    """An oracle drafter's proposal: 1..min(limit, max_k) tokens of the plain greedy continuation `truth`
    from generated position `n_gen`, one of them replaced at random 60% of the time, so every accept
    length happens. Returns what Drafter.propose returns (`rng`: a random.Random)."""
    k = rng.randint(1, min(limit, max_k))
    d = list(truth[n_gen:n_gen + k])
    if d and rng.random() < 0.6:
        d[rng.randrange(len(d))] = rng.randrange(2000)
    return ("mtp", d, None) if d else ("none", [], None)


def same_law_pvalue(a: dict, b: dict, min_count: int = 20) -> tuple[float, np.ndarray, int]:
    """Two-sample chi-square homogeneity test of two samples given as {outcome: count}. Outcomes seen fewer
    than `min_count` times in both samples together are pooled into one cell, so every cell has a fair
    expected count. -> (p-value, the 2 x cells table, how many outcomes kept their own cell)."""
    from scipy.stats import chi2_contingency

    keys = sorted(set(a) | set(b), key=lambda k: -(a.get(k, 0) + b.get(k, 0)))
    head = [k for k in keys if a.get(k, 0) + b.get(k, 0) >= min_count]
    rows = np.array([[a.get(k, 0) for k in head] + [sum(v for k, v in a.items() if k not in head)],
                     [b.get(k, 0) for k in head] + [sum(v for k, v in b.items() if k not in head)]])
    rows = rows[:, rows.sum(0) > 0]
    return float(chi2_contingency(rows).pvalue), rows, len(head)


@contextlib.contextmanager
def scripted_server(model=None, *, api_key: str | None = None, n_ctx: int = 1024, cache_ram_mib: int = 256):
    """A live server on loopback for `model` (default: the demo model, F32 KV, one thread) whose sampler is
    the TEST-ONLY Script hook (pyqwen.server.testing): yields {"model", "script", "engine", "url"}."""
    import pyqwen
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import Script, serve_in_thread

    m = model if model is not None else pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=n_ctx)
    script = Script(m)
    engine = Engine(m, sampler_factory=script.factory, cache_ram_mib=cache_ram_mib)
    try:
        with serve_in_thread(create_app(engine, api_key=api_key)) as url:
            yield {"model": m, "script": script, "engine": engine, "url": url}
    finally:
        engine.shutdown()


def has_module(name: str) -> bool:
    """Whether `name` is importable (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None
