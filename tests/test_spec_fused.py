"""The fused greedy speculative path of the CPU core (Model.verify_greedy, Model.mtp_draft_greedy and the
generation loop's use of them) against the generic host path it replaces for greedy decoding without
penalties: verify() rows + pyqwen.speculative.accept, one mtp_draft call per draft.

- verify_greedy's (n_acc, next) is accept_greedy's over verify()'s rows, and the state it leaves (then
  rolled back) is bit-identical to the generic one's;
- mtp_draft_greedy is the argmax chain of mtp_draft;
- generations through the fused path give the tokens, text, finish and acceptance counts of the generic
  path and of plain decoding, over many prompts and long outputs of the trained demo model;
- a stop string, an end-of-generation token or max_tokens landing inside an accepted run leaves the text
  and the state (prompt + generated tokens but the last) of plain decoding.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen
from pq_testutil import prefilled_pair
from pyqwen.generation import Generation, GenerationStats, StateSequence
from pyqwen.sampling import Sampler, SamplingParams
from pyqwen.speculative import policy
from pyqwen.speculative.accept import accept_greedy

from test_speculative import mtp_gguf  # noqa: F401  (the fixture: tiny models with a random MTP head)


@pytest.fixture(scope="module")
def demo():
    m = pyqwen.Model.load(threads=2, backend="cpu", spec="auto", n_ctx=2048)
    if not m.has_mtp:
        pytest.skip("the demo model in this installation has no MTP head")
    return m


class Recorder(StateSequence):
    """A StateSequence that can hide the fused calls (the generic path) and records what the loop did."""

    def __init__(self, model, state, fused: bool):
        super().__init__(model, state)
        self.fused = fused
        self.verifies: list[tuple[int, int]] = []   # (tokens verified, drafts accepted)
        self.rollbacks: list[int] = []

    @property
    def fused_greedy_spec(self):
        return self.fused and super().fused_greedy_spec

    def verify_greedy(self, tokens):
        assert self.fused
        n_acc, nxt = super().verify_greedy(tokens)
        self.verifies.append((len(tokens), n_acc))
        return n_acc, nxt

    def rollback(self, n_keep):
        self.rollbacks.append(n_keep)
        super().rollback(n_keep)


def generate(m, prompt, *, fused, spec="auto", draft=None, max_tokens=96, stop=(), eog=None, n_ctx=1024):
    """A greedy generation over a Recorder; returns (generation, recorder) after running it."""
    ids = m.tokenize(prompt, parse_special=False) if isinstance(prompt, str) else list(prompt)
    st = m.new_state(n_ctx)
    seq = Recorder(m, st, fused)
    g = Generation(seq, ids, ids, Sampler(SamplingParams(temperature=0.0)), max_tokens,
                   m.tokenizer.eog_ids if eog is None else eog, list(stop), m.tokenizer.stream_decoder(),
                   GenerationStats(prompt_tokens=len(ids)), spec=m.spec_for(spec, draft),
                   spec_mtp=bool(st.has_mtp))
    list(g)
    return g, seq


def assert_state_holds(m, st, ids):
    """st holds exactly `ids` (bit-identical logits and MTP draft after one more token)."""
    assert st.pos == len(ids)
    ref = m.new_state(st.n_ctx)
    m.forward(ref, ids, logits="none")
    assert np.array_equal(m.forward(st, [7]), m.forward(ref, [7]))
    assert np.array_equal(m.mtp_draft(st, 9), m.mtp_draft(ref, 9))


# ---- the core calls -----------------------------------------------------------------------------------

@pytest.mark.parametrize("out_type", ["f32", "q4_k_m"])
def test_verify_greedy_is_verify_then_greedy_acceptance(mtp_gguf, out_type):  # noqa: F811
    m = pyqwen.Model.load(mtp_gguf("qwen35-r2-untied", out_type), threads=1, backend="cpu", spec="mtp",
                          kv_type="f32")
    greedy = Sampler(SamplingParams(temperature=0.0))
    rng = np.random.default_rng(7)
    seen = set()
    for trial in range(24):
        prompt = [int(x) for x in rng.integers(0, 2400, int(rng.integers(2, 30)))]
        a, b = prefilled_pair(m, prompt, 128)
        # drafts that follow the model's own greedy continuation for a while, then go astray
        g = m.generate(prompt, max_tokens=16, temperature=0, spec="off")
        list(g)
        truth = g.tokens
        k = int(rng.integers(1, 15))
        n_good = int(rng.integers(0, k + 1))
        drafts = truth[1:1 + n_good] + [int(x) for x in rng.integers(0, 2400, k)]
        tokens = [truth[0]] + drafts[:k]
        rows = m.verify(a, tokens)
        want = accept_greedy(greedy, rows, tokens[1:], prompt + tokens[:1])
        got = m.verify_greedy(b, tokens)
        assert got == want, (trial, tokens)
        seen.add(got[0])
        keep = got[0] + 1 - (trial % 2) * (got[0] > 0)   # sometimes fewer (a stop inside the run)
        m.rollback(a, keep)
        m.rollback(b, keep)
        assert np.array_equal(m.forward(a, [5]), m.forward(b, [5]))
        assert np.array_equal(m.mtp_draft(a, 3), m.mtp_draft(b, 3))
    assert len(seen) >= 4   # short and long accepted runs both happened


def test_verify_greedy_errors_are_clear(mtp_gguf):  # noqa: F811
    m = pyqwen.Model.load(mtp_gguf("qwen35-r2-untied"), threads=1, backend="cpu", spec="mtp")
    st = m.new_state(8)
    m.forward(st, [1, 2, 3], logits="none")
    with pytest.raises(pyqwen.ContextOverflowError):
        m.verify_greedy(st, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="at most 16"):
        m.verify_greedy(m.new_state(64), list(range(17)))
    with pytest.raises((ValueError, IndexError), match="outside the vocabulary"):
        m.verify_greedy(st, [1, 10 ** 6])
    with pytest.raises(ValueError, match="0..15"):
        m.mtp_draft_greedy(st, 1, 16)
    assert m.mtp_draft_greedy(st, 1, 0) == []


def test_mtp_draft_greedy_is_the_argmax_chain(mtp_gguf):  # noqa: F811
    m = pyqwen.Model.load(mtp_gguf("qwen35-r3-tied", "q8_0"), threads=1, backend="cpu", spec="mtp")
    rng = np.random.default_rng(3)
    for _ in range(6):
        prompt = [int(x) for x in rng.integers(0, 2400, int(rng.integers(1, 20)))]
        a, b = prefilled_pair(m, prompt, 64)
        tok, chain = int(rng.integers(0, 2400)), []
        for _ in range(5):
            chain.append(int(np.argmax(m.mtp_draft(a, chain[-1] if chain else tok))))
        assert m.mtp_draft_greedy(b, tok, 5) == chain


# ---- generation: the fused path is the generic path is plain decoding ----------------------------------

PROMPTS = [
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(",
    "import os\nimport sys\n\n\nclass Cache:\n    def __init__(self, path):\n",
    "The module provides functions for working with",
    "for i in range(10):\n    for j in range(10):\n        print(i, j)\n" * 2,
    "Return a new list containing all items from the iterable in ascending order.\n\n",
    "    def __repr__(self):\n        return '<%s %r>' % (self.__class__.__name__, self.name)\n\n    def",
]


def fused_is_generic_and_plain(demo, prompt, spec, draft, n, where):
    """Greedy generation of `prompt` three ways -- no speculation, the fused speculative loop, the generic
    one -- asserted to give the same reply, the fused and generic loops the same drafts accepted the same
    way (`where` labels a failure). Returns the fused (generation, recorder)."""
    g0, _ = generate(demo, prompt, fused=False, spec="off", max_tokens=n)
    gf, sf = generate(demo, prompt, fused=True, spec=spec, draft=draft, max_tokens=n)
    gg, _ = generate(demo, prompt, fused=False, spec=spec, draft=draft, max_tokens=n)
    assert gf.tokens == g0.tokens == gg.tokens and gf.text == g0.text, where
    assert gf.finish_reason == g0.finish_reason
    assert gf.fed_tokens == gg.fed_tokens
    for f in ("verify_steps", "draft_tokens", "accepted_tokens", "drafted_at", "accepted_at"):
        assert getattr(gf.stats, f) == getattr(gg.stats, f), (*where, f)
    return gf, sf


@pytest.mark.parametrize("spec,draft", [("mtp", 1), ("mtp", 3), ("lookup", None), ("auto", 2), ("auto", 4)])
def test_fused_generation_is_the_generic_path_and_plain_decoding(demo, spec, draft):
    for i, p in enumerate(PROMPTS):
        gf, sf = fused_is_generic_and_plain(demo, p, spec, draft, 200 if i < 2 else 100, (i, spec, draft))
        assert len(sf.verifies) == gf.stats.verify_steps


def ends_inside_a_run(seq) -> bool:
    """The last verification accepted drafts and the loop kept fewer tokens than it accepted plus one."""
    return bool(seq.verifies) and seq.rollbacks[-1] < seq.verifies[-1][1] + 1


class TruthDrafter(policy.Drafter):
    """Drafts the plain greedy continuation, 7 tokens at a time: every draft is accepted, so the accepted
    runs are long and an end can be placed anywhere inside one."""

    truth: list[int] = []
    prompt_len = 0

    def propose(self, token, history, limit):
        n_gen = len(history) - self.prompt_len
        d = list(self.truth[n_gen:n_gen + min(limit, 7)])
        return ("lookup", d, None) if d else ("none", [], None)


def test_stops_inside_an_accepted_run_end_as_plain_decoding(demo, monkeypatch):
    """A stop string, an end-of-generation token and max_tokens placed at every position of long accepted
    runs: text, tokens, finish and the state are plain decoding's. (max_tokens caps the drafts, so it
    always ends a run at its last token; the other two end inside runs.)"""
    prompt = demo.tokenize(PROMPTS[2], parse_special=False)
    g0, _ = generate(demo, prompt, fused=False, spec="off", max_tokens=60)
    assert len(g0.tokens) == 60
    TruthDrafter.truth, TruthDrafter.prompt_len = list(g0.tokens), len(prompt)
    monkeypatch.setattr(policy, "Drafter", TruthDrafter)
    inside = {"stop": 0, "eog": 0}
    for j in range(1, 48):
        g, s = generate(demo, prompt, fused=True, spec="lookup", max_tokens=j)
        assert g.tokens == g0.tokens[:j] and g.finish_reason == "length"
        assert_state_holds(demo, s.state, prompt + g.tokens[:-1])
        tok = g0.tokens[j]
        if tok not in g0.tokens[:j]:   # an end-of-generation token first met at position j
            g, s = generate(demo, prompt, fused=True, spec="lookup", max_tokens=60, eog={tok})
            r, _ = generate(demo, prompt, fused=False, spec="off", max_tokens=60, eog={tok})
            assert g.tokens == r.tokens == g0.tokens[:j] and g.finish_reason == r.finish_reason == "stop"
            assert g.text == r.text and g.fed_tokens == r.fed_tokens
            assert_state_holds(demo, s.state, prompt + g0.tokens[:j])
            inside["eog"] += ends_inside_a_run(s)
        stop = demo.detokenize(g0.tokens[j:j + 2])
        if stop.strip():
            g, s = generate(demo, prompt, fused=True, spec="lookup", max_tokens=60, stop=[stop])
            r, _ = generate(demo, prompt, fused=False, spec="off", max_tokens=60, stop=[stop])
            assert (g.tokens, g.text, g.finish_reason, g.stop_string) == (r.tokens, r.text, r.finish_reason,
                                                                           r.stop_string)
            assert g.fed_tokens == r.fed_tokens
            assert_state_holds(demo, s.state, prompt + g.tokens[:-1])
            inside["stop"] += ends_inside_a_run(s)
    assert inside["eog"] >= 3 and inside["stop"] >= 10, inside


def test_session_turns_take_the_fused_path(demo):
    """The server's session cache (pyqwen.session.Turn) drives the fused calls with its bookkeeping: the
    tokens it records are what the state holds, and a follow-up turn reuses them."""
    from pyqwen.session import SessionCache

    cache = SessionCache(demo, cache_ram_mib=512)
    ids = demo.tokenize(PROMPTS[3], parse_special=False)
    ref, _ = generate(demo, ids, fused=False, spec="off", max_tokens=60)
    stop = next(t for t in (demo.detokenize(ref.tokens[j:j + 2]) for j in range(25, 60)) if t.strip())
    calls = []
    orig = type(demo).verify_greedy

    def spy(self, state, tokens):
        calls.append(len(tokens))
        return orig(self, state, tokens)

    type(demo).verify_greedy = spy
    try:
        with cache.open("k", ids) as turn:
            g = turn.generate(Sampler(SamplingParams(temperature=0.0)), 60, demo.tokenizer.eog_ids, [stop],
                              demo.tokenizer.stream_decoder(), spec="lookup")
            list(g)
    finally:
        type(demo).verify_greedy = orig
    g0, _ = generate(demo, ids, fused=False, spec="off", max_tokens=60, stop=[stop])
    assert calls and g.tokens == g0.tokens and g.text == g0.text and g.finish_reason == "stop"
    s = cache.sessions["k"]
    assert s.tokens == g.fed_tokens == ids + g.tokens[:len(g.fed_tokens) - len(ids)]
    assert s.verify_len == 0
    assert_state_holds(demo, s.state, s.tokens)
