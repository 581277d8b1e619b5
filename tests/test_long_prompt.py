"""Long prompts: prefill in pieces with a progress callback, cancel between pieces, the same logits as one
call; the session cache reports a whole feed's progress; the CLI's bar."""

from __future__ import annotations

import io

import numpy as np
import pytest

import pyqwen
from pyqwen import model as model_mod


@pytest.fixture(scope="module")
def m():
    return pyqwen.Model.load(threads=2, n_ctx=1024, n_batch=16, spec="off")


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(model_mod, "PREFILL_PIECE", 64)


IDS = [int(x) for x in np.random.default_rng(11).integers(3, 2000, 300)]


@pytest.mark.parametrize("which", ["last", "all"])
def test_pieces_give_the_logits_of_one_call(m, small_pieces, which):
    calls = []
    a = m.forward(m.new_state(), IDS, logits=which)
    b = m.forward(m.new_state(), IDS, logits=which, progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(a, b)  # pieces of 64 split where the core's 16-token chunks do anyway
    assert calls == [(0, 300), (64, 300), (128, 300), (192, 300), (256, 300), (300, 300)]


def test_progress_returning_false_cancels_between_pieces(m, small_pieces):
    st = m.new_state()
    with pytest.raises(pyqwen.PrefillCancelled) as e:
        m.forward(st, IDS, progress=lambda d, t: d < 128)
    assert (e.value.done, e.value.total, st.pos) == (128, 300, 128)
    # the state holds exactly the pieces fed: continuing gives the one-call logits
    rest = m.forward(st, IDS[128:])
    assert np.array_equal(rest, m.forward(m.new_state(), IDS))


def test_generation_prefill_uses_the_models_callback(m, small_pieces):
    seen = []
    m.progress = lambda d, t: seen.append(d) or True
    try:
        text = "".join(c.text for c in m.generate(IDS, max_tokens=4, temperature=0))
    finally:
        m.progress = None
    assert seen[0] == 0 and seen[-1] == 300
    assert text == "".join(c.text for c in m.generate(IDS, max_tokens=4, temperature=0))


def test_session_cache_reports_the_whole_feed(m):
    from pyqwen.session import SessionCache

    seen = []
    m.progress = lambda d, t: seen.append((d, t)) or True
    try:
        cache = SessionCache(m, cache_ram_mib=64, piece_tokens=100)
        cache.prefill("s", IDS)
    finally:
        m.progress = None
    assert seen == [(0, 300), (100, 300), (200, 300), (300, 300)]


def test_prefill_bar_shows_only_for_slow_prefills():
    from pyqwen.prefill_progress import PrefillBar

    quiet = io.StringIO()
    bar = PrefillBar(quiet, show_after_s=60)
    for d in (0, 100, 200):
        assert bar(d, 200)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    bar = PrefillBar(shown, show_after_s=0)
    for d in (0, 100, 200):
        assert bar(d, 200)
    assert "prefill" in shown.getvalue() and "200" in shown.getvalue()
