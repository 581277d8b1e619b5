"""Speculative decoding on the CPU backend: exact rollback, batch-invariant verification, the MTP draft
chain, and generation whose output is that of plain decoding (greedy: the same tokens; sampling: the
same distribution).

The models are the tiny transformers fixtures with a random MTP head added (tests/mtp_fixture.py),
converted by our converter to F32, Q8_0 and Q4_K_M GGUF files.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

import pyqwen
from mtp_fixture import with_mtp
from pq_testutil import check_rollback_refusals, corrupted_truth_draft, same_law_pvalue
from pyqwen.speculative import policy


@pytest.fixture(scope="module")
def mtp_gguf(tmp_path_factory):
    """(fixture, type) -> GGUF path of that fixture with an MTP head, converted to that type."""
    from pyqwen.convert import convert

    root = tmp_path_factory.mktemp("mtp")
    done = {}

    def get(name: str, out_type: str = "f32"):
        if (name, out_type) not in done:
            hf = root / f"{name}-hf"
            if not hf.exists():
                with_mtp(name, hf)
            done[name, out_type] = convert(hf, root / f"{name}-{out_type}.gguf", out_type, progress=False)
        return done[name, out_type]

    return get


def load(path, **kw):
    kw.setdefault("threads", 1)
    kw.setdefault("backend", "cpu")
    return pyqwen.Model.load(path, **kw)


def feed(m, st, ids, logits="last"):
    return m.forward(st, ids, logits=logits)


PROMPT = [int(x) for x in np.random.default_rng(5).integers(0, 2400, 24)]


# ---- the core: rollback, verification, drafting ------------------------------------------------------

@pytest.mark.parametrize("out_type", ["f32", "q8_0", "q4_k_m"])
@pytest.mark.parametrize("name", ["qwen35-r2-untied", "qwen35-r3-tied"])
def test_rollback_is_bit_identical_to_feeding_only_the_kept_tokens(mtp_gguf, name, out_type):
    m = load(mtp_gguf(name, out_type), spec="mtp")
    batch = [11, 400, 7, 1999, 64, 5, 812]
    after = [33, 1024]
    for kv in ("f32", "f16", "q8_0,q4_0"):
        for keep in range(1, len(batch) + 1):
            a = m._core.new_state(64, kv, mtp=True)
            b = m._core.new_state(64, kv, mtp=True)
            feed(m, a, PROMPT, "none")
            feed(m, b, PROMPT[:10], "none")
            feed(m, b, PROMPT[10:], "none")  # a different chunking of the prompt: the same state
            m.verify(a, batch)
            m.rollback(a, keep)
            feed(m, b, batch[:keep], "none")
            assert a.pos == b.pos == len(PROMPT) + keep
            # The next steps see every part of the state: SSM, conv window, KV rows, the MTP's input.
            assert np.array_equal(m.mtp_draft(a, after[0]), m.mtp_draft(b, after[0])), (kv, keep)
            assert np.array_equal(feed(m, a, after, "all"), feed(m, b, after, "all")), (kv, keep)


@pytest.mark.parametrize("out_type", ["f32", "q8_0", "q4_k_m"])
def test_verification_rows_equal_one_token_steps(mtp_gguf, out_type):
    """A verify batch of k+1 tokens gives, bit for bit, the logits of feeding them one at a time: what makes
    greedy speculative decoding reproduce plain decoding exactly (no tie can flip)."""
    m = load(mtp_gguf("qwen35-r2-untied", out_type))
    toks = [5, 17, 900, 2001, 3, 77, 1500, 8, 9, 2300, 41, 600]  # past 8 tokens: the k-quant GEMM path
    for n in range(1, len(toks) + 1):
        a, b = m.new_state(64), m.new_state(64)
        feed(m, a, PROMPT, "none")
        feed(m, b, PROMPT, "none")
        rows = m.verify(a, toks[:n])
        steps = np.stack([feed(m, b, [t]) for t in toks[:n]])
        assert rows.shape == (n, m.n_vocab)
        assert np.array_equal(rows, steps), n


def test_rollback_errors_are_clear(mtp_gguf):
    m = load(mtp_gguf("qwen35-r2-untied"), spec="mtp")
    st = m.new_state(64)
    feed(m, st, PROMPT, "none")
    check_rollback_refusals(m, st)
    m.rollback(st, 2)
    with pytest.raises(ValueError, match="verify forward"):
        m.rollback(st, 1)  # one rollback per verification
    with pytest.raises(ValueError, match="at most 16"):
        m.verify(st, list(range(17)))
    with pytest.raises(pyqwen.ContextOverflowError):
        m.verify(st, list(range(64 - st.pos + 1)))


def test_mtp_draft_chain_and_eval_mtp_agree(mtp_gguf):
    m = load(mtp_gguf("qwen35-r3-tied"), kv_type="f32", spec="mtp")
    ids = PROMPT + [3, 9, 27, 81]
    ev = m.eval_mtp(ids)
    assert ev.shape == (len(ids) - 1, m.n_vocab) and ev.dtype == np.float32
    for t in (0, 1, 7, len(ids) - 2):
        st = m.new_state(64)
        feed(m, st, ids[:t + 1], "none")
        # The first step pairs token t+1 with the hidden state of token t: row t of eval_mtp.
        assert np.array_equal(m.mtp_draft(st, ids[t + 1]), ev[t]), t
    # A chained step after the first is not a row of eval_mtp (it reads the MTP's own hidden state, not
    # the main model's), and each chain restarts after a forward.
    st = m.new_state(64)
    feed(m, st, ids[:5], "none")
    m.mtp_draft(st, ids[5])
    chained = m.mtp_draft(st, ids[6])
    assert not np.allclose(chained, ev[5])
    feed(m, st, [ids[5]], "none")
    assert np.array_equal(m.mtp_draft(st, ids[6]), ev[5])


def test_a_file_without_mtp_loads_and_refuses_spec_mtp_clearly(gguf_cache):
    path = gguf_cache("qwen35-r2-untied", "f32")
    m = load(path)  # auto: no head -> lookup only
    assert not m.has_mtp and m.spec.mode == "auto" and not m.mtp_states
    with pytest.raises(ValueError, match="no MTP head"):
        load(path, spec="mtp")
    with pytest.raises(ValueError, match="no MTP head"):
        m.eval_mtp([1, 2, 3])
    with pytest.raises(ValueError, match="no MTP head"):
        m.generate([1, 2, 3], spec="mtp", max_tokens=2)
    with pytest.raises(ValueError, match="spec must be one of"):
        load(path, spec="eagle")
    with pytest.raises(ValueError, match="draft must be"):
        load(path, draft=0)


def test_snapshot_restore_carries_the_mtp_input(mtp_gguf):
    m = load(mtp_gguf("qwen35-r2-untied"), spec="mtp")
    a = m.new_state(64)
    feed(m, a, PROMPT, "none")
    snap = m.snapshot(a)
    want = m.mtp_draft(a, 7)
    feed(m, a, [1, 2, 3], "none")
    m.restore(a, snap)
    assert np.array_equal(m.mtp_draft(a, 7), want)
    with pytest.raises(ValueError, match="MTP"):
        m.restore(m.new_state(64, mtp=False), snap)


# ---- generation: the output is plain decoding's --------------------------------------------------------

def plain_then_spec(m, prompt, n, **kw):
    g0 = m.generate(prompt, max_tokens=n, spec="off", **kw)
    list(g0)
    g1 = m.generate(prompt, max_tokens=n, **kw)
    list(g1)
    return g0, g1


class OracleDrafter(policy.Drafter):
    """Drafts the plain greedy continuation, corrupted at random draft positions: every accept length,
    from none to all, happens many times."""

    truth: list[int] = []
    rng = random.Random(0)

    def propose(self, token, history, limit):
        return corrupted_truth_draft(self.truth, len(history) - self.prompt_len, limit, self.rng, 6)


@pytest.mark.parametrize("out_type", ["f32", "q4_k_m"])
def test_greedy_output_is_plain_decoding_with_every_accept_length(mtp_gguf, monkeypatch, out_type):
    m = load(mtp_gguf("qwen35-r2-untied", out_type), spec="mtp")
    rng = np.random.default_rng(1)
    total = {}
    for trial in range(6):
        prompt = [int(x) for x in rng.integers(0, 2400, int(rng.integers(3, 40)))]
        g0 = m.generate(prompt, max_tokens=40, spec="off", temperature=0)
        list(g0)
        OracleDrafter.truth = list(g0.tokens)
        OracleDrafter.prompt_len = len(prompt)
        monkeypatch.setattr(policy, "Drafter", OracleDrafter)
        g1 = m.generate(prompt, max_tokens=40, temperature=0, repetition_penalty=1.0 + 0.1 * (trial % 2))
        list(g1)
        monkeypatch.undo()
        if trial % 2 == 0:
            assert g1.tokens == g0.tokens and g1.text == g0.text and g1.finish_reason == g0.finish_reason
        for i, a in enumerate(g1.stats.accepted_at):
            total[i] = total.get(i, 0) + a
        assert g1.stats.verify_steps > 0
    assert len(total) >= 4 and all(v > 0 for v in list(total.values())[:4])


@pytest.mark.parametrize("draft", [1, 2, 4])
def test_greedy_mtp_generation_is_plain_decoding(mtp_gguf, draft):
    m = load(mtp_gguf("qwen35-r3-tied", "q8_0"), spec="mtp", draft=draft)
    rng = np.random.default_rng(draft)
    for _ in range(4):
        prompt = [int(x) for x in rng.integers(0, 2400, int(rng.integers(2, 30)))]
        g0, g1 = plain_then_spec(m, prompt, 48, temperature=0, stop=["ab"])
        assert (g1.tokens, g1.text, g1.finish_reason) == (g0.tokens, g0.text, g0.finish_reason)
        assert g1.stats.spec == "mtp" and g1.stats.verify_steps > 0
        assert g1.stats.draft_tokens <= draft * g1.stats.verify_steps


def test_the_state_after_a_speculative_generation_holds_what_was_fed(mtp_gguf, monkeypatch):
    """Stops inside an accepted run of drafts (max_tokens, end of generation) leave the state holding
    exactly prompt + generated tokens but the last, as plain decoding does."""
    m = load(mtp_gguf("qwen35-r2-untied"), spec="mtp", kv_type="f32")
    prompt = PROMPT[:12]
    g0 = m.generate(prompt, max_tokens=30, spec="off", temperature=0)
    list(g0)
    OracleDrafter.truth = list(g0.tokens)
    OracleDrafter.prompt_len = len(prompt)
    OracleDrafter.rng = random.Random(3)
    monkeypatch.setattr(policy, "Drafter", OracleDrafter)
    for n in (1, 2, 5, 9, 17):
        st = m.new_state(64)
        g = m.generate(prompt, max_tokens=n, temperature=0, state=st)
        list(g)
        assert g.tokens == g0.tokens[:n] and g.finish_reason == "length"
        assert st.pos == len(prompt) + n - 1
        ref = m.new_state(64)
        feed(m, ref, prompt + g.tokens[:-1], "none")
        assert np.array_equal(feed(m, st, [g.tokens[-1]]), feed(m, ref, [g.tokens[-1]]))
        assert np.array_equal(m.mtp_draft(st, 5), m.mtp_draft(ref, 5))


def test_sampling_with_drafts_keeps_the_distribution(mtp_gguf, monkeypatch):
    """Temperature > 0: the joint distribution of the first generated tokens with drafting equals plain
    sampling's (two-sample chi-square over 1,500 generations each), with drafts that are often right."""
    m = load(mtp_gguf("qwen35-r2-untied"), spec="mtp")
    prompt = PROMPT[:8]
    kw = dict(temperature=1.3, top_k=3, top_p=1.0, min_p=0.0)

    class SampledDrafter(policy.Drafter):
        """Drafts from the main model's own distribution (so many are accepted), with q reported."""

        def propose(self, token, history, limit):
            st = m.new_state(64, mtp=False)
            feed(m, st, history[:-1], "none")
            d, q = [], []
            tok = token
            for _ in range(min(2, limit)):
                ids, probs = self._sampler.distribution(feed(m, st, [tok]), history + d)
                probs = 0.5 * probs + 0.5 / len(probs)    # a q that differs from p: rejections happen
                nxt = int(ids[self._sampler.rng.choice(len(ids), p=probs)])
                d.append(nxt)
                q.append((ids, probs))
                tok = nxt
            return "mtp", d, q

    def joint(spec_on: bool, seeds):
        out = {}
        if spec_on:
            monkeypatch.setattr(policy, "Drafter", SampledDrafter)
        for s in seeds:
            g = m.generate(prompt, max_tokens=3, seed=s, spec="mtp" if spec_on else "off", **kw)
            list(g)
            key = tuple(g.tokens)
            out[key] = out.get(key, 0) + 1
        monkeypatch.undo()
        return out

    a = joint(False, range(1500))
    b = joint(True, range(10_000, 11_500))
    p, rows, n_kept = same_law_pvalue(a, b)      # rare outcomes pooled (a fair expected count per cell)
    assert n_kept >= 5
    assert p > 1e-3, (p, rows)


# ---- the MTP head against an independent reference (PyTorch, as vLLM defines it) ----------------------

@pytest.mark.parametrize("name", ["qwen35-r2-untied", "qwen35-r3-tied"])
def test_eval_mtp_matches_the_pytorch_head(mtp_gguf, name, tmp_path):
    """eval_mtp against tools/torch_mtp.py (transformers' Qwen3.5 decoder layer with the checkpoint's
    mtp.* weights, the head vLLM runs), on the same checkpoint our converter turned into the GGUF; and
    the greedy draft chain against the reference's chained drafting."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import torch_mtp

    hf = with_mtp(name, tmp_path / "hf")
    m = load(mtp_gguf(name, "f32"), kv_type="f32", spec="mtp")
    ids = PROMPT + [3, 9, 27, 81, 243]
    ours = m.eval_mtp(ids)
    model, head = torch_mtp.load_checkpoint(hf)
    main, ref = (t.float().numpy() for t in torch_mtp.mtp_logits(model, head, ids))
    scale = np.abs(ref).max()
    # Main logits first: the hidden states the head reads agree as closely (F32 GGUF of the same weights).
    np.testing.assert_allclose(m.eval(ids), main, rtol=0, atol=2e-4 * np.abs(main).max())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4 * scale)
    assert (ours.argmax(1) == ref.argmax(1)).all()
    # Greedy chained drafting: the main model's next token, then 3 MTP drafts fed their own outputs.
    want = torch_mtp.chained_draft(model, head, ids[:20], 3)
    st = m.new_state(64)
    nxt = int(np.argmax(feed(m, st, ids[:20])))
    got = [nxt]
    for _ in range(3):
        got.append(int(np.argmax(m.mtp_draft(st, got[-1]))))
    assert got == want


def test_bench_reports_speculative_rows(mtp_gguf):
    """`pyqwen bench --spec`: a tgN+MODE row per mode beside tgN+off, with the acceptance counted."""
    from pyqwen.bench import format_markdown, run_bench

    rep = run_bench(mtp_gguf("qwen35-r2-untied"), n_prompt=0, n_gen=12, reps=1, threads=1, spec=["mtp", "lookup"])
    tests = [r.test for r in rep.rows]
    assert {"tg12", "tg12+off", "tg12+mtp", "tg12+lookup"} <= set(tests)
    assert all(len(r.samples) == 1 and r.samples[0] > 0 for r in rep.rows)
    assert re.match(r"\d+/\d+ drafts accepted", rep.spec_notes["tg12+mtp"])
    drafted = int(rep.spec_notes["tg12+mtp"].split("/")[1].split()[0])
    assert drafted >= 11  # every verification drafts (2 by default) until the budget
    assert "tg12+mtp:" in format_markdown(rep)


def test_demo_model_greedy_output_is_plain_decoding_in_every_mode():
    """The trained demo model (real MTP head, real acceptance): long greedy generations from varied
    prompts give the same tokens with every drafter as without one, and the drafts are often right."""
    m = pyqwen.Model.load(threads=2, backend="cpu")
    if not m.has_mtp:
        pytest.skip("the demo model in this installation has no MTP head")
    prompts = [
        "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(",
        "import os\nimport sys\n\n\nclass Cache:\n    def __init__(self, path):\n",
        "The module provides functions for working with",
        "for i in range(10):\n    for j in range(10):\n        print(i, j)\n" * 2,
    ]
    accepted = 0
    for i, p in enumerate(prompts):
        n = 400 if i == 0 else 120
        g0 = m.generate(p, max_tokens=n, temperature=0, spec="off")
        list(g0)
        for mode, draft in (("mtp", 3), ("mtp", 1), ("lookup", None), ("auto", 4)):
            g = m.generate(p, max_tokens=n, temperature=0, spec=mode, draft=draft)
            list(g)
            assert g.tokens == g0.tokens and g.text == g0.text, (i, mode, draft)
            accepted += g.stats.accepted_tokens
            assert g.stats.verify_steps > 0 or mode == "lookup", (i, mode)  # lookup needs a repeat
    assert accepted > 100
