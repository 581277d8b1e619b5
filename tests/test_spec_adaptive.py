"""Adaptive MTP depth (SpecConfig.p_first / p_min): the draft chain stops before a draft whose own top
softmax probability is below the threshold.

- Model.mtp_draft_greedy(..., p_first, p_min) is the argmax chain of mtp_draft cut exactly there;
- greedy generations with an adaptive chain are plain decoding, and the fused path (one core call for the
  chain) drafts and accepts exactly what the generic path (one mtp_draft call per draft) does, over many
  prompts of the trained demo model;
- with temperature > 0 the stopping rule only looks at the drafts, so the output keeps plain sampling's
  distribution (two-sample chi-square with the real MTP drafter and a threshold that cuts often).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import pyqwen
from pq_testutil import prefilled_pair, same_law_pvalue
from pyqwen.speculative import policy

from test_spec_fused import PROMPTS, demo, fused_is_generic_and_plain  # noqa: F401  (demo: the fixture)
from test_speculative import feed, load, mtp_gguf  # noqa: F401  (mtp_gguf: the fixture)


def _top(logits):
    x = np.asarray(logits, np.float64)
    return float(1.0 / np.exp(x - x.max()).sum())


def test_the_core_chain_stops_where_the_head_is_unsure(mtp_gguf):  # noqa: F811
    m = pyqwen.Model.load(mtp_gguf("qwen35-r3-tied", "q8_0"), threads=1, backend="cpu", spec="mtp")
    rng = np.random.default_rng(5)
    lengths = set()
    for trial in range(16):
        prompt = [int(x) for x in rng.integers(0, 2400, int(rng.integers(1, 20)))]
        a, b = prefilled_pair(m, prompt, 64)
        tok, chain, tops = int(rng.integers(0, 2400)), [], []
        for _ in range(6):
            lg = m.mtp_draft(a, chain[-1] if chain else tok)
            tops.append(_top(lg))
            chain.append(int(np.argmax(lg)))
        # thresholds between the chain's own probabilities, so cuts land at every depth
        p_first = tops[0] * (0.5 if trial % 3 else 2.0)
        p_min = 0.0 if trial % 4 == 3 else float(np.sort(tops[1:])[trial % 5]) * (1 + 1e-9)
        want = 0 if tops[0] < p_first else next((i for i in range(1, 6) if tops[i] < p_min), 6)
        got = m.mtp_draft_greedy(b, tok, 6, p_first, p_min)
        assert got == chain[:want], (trial, tops, p_first, p_min)
        lengths.add(len(got))
    assert len(lengths) >= 3   # no cut, a cut before the first draft, cuts inside the chain


def test_bad_thresholds_are_clear_errors():
    for bad in (-0.1, 1.0, float("nan"), "x"):
        with pytest.raises(ValueError):
            policy.SpecConfig(p_min=bad).validate()
        with pytest.raises(ValueError):
            policy.SpecConfig(p_first=bad).validate()


@pytest.mark.parametrize("spec,draft,p_first,p_min", [("mtp", 4, 0.0, 0.3), ("auto", 4, 0.0, 0.4),
                                                      ("mtp", 6, 0.15, 0.35), ("auto", 3, 0.3, 0.5)])
def test_adaptive_greedy_generation_is_plain_decoding_fused_and_generic(demo, spec, draft, p_first, p_min):
    saved = demo.spec
    demo.spec = replace(saved, p_first=p_first, p_min=p_min)
    try:
        cut = 0
        for i, p in enumerate(PROMPTS):
            gf, _ = fused_is_generic_and_plain(demo, p, spec, draft, 160 if i < 2 else 90, (i, spec, draft))
            st = gf.stats
            cut += st.drafted_at[0] - (st.drafted_at[draft - 1] if len(st.drafted_at) >= draft else 0)
        assert cut > 0   # the chain did stop early (else this tests nothing adaptive)
    finally:
        demo.spec = saved


def test_adaptive_sampling_keeps_the_distribution(mtp_gguf):  # noqa: F811
    """The real MTP drafter with temperature > 0 and a stopping threshold at the head's median top
    probability: the first generated tokens' joint law equals plain sampling's."""
    m = load(mtp_gguf("qwen35-r2-untied"), spec="mtp")
    prompt = [3, 17, 400, 9, 81, 5, 1200, 44]
    st = m.new_state(64)
    feed(m, st, prompt, "none")
    tops, tok = [], 7
    for _ in range(8):
        lg = m.mtp_draft(st, tok)
        tops.append(_top(lg))
        tok = int(np.argmax(lg))
    med = float(np.median(tops))
    m.spec = replace(m.spec, draft=3, p_first=med * 0.5, p_min=med)
    kw = dict(temperature=1.3, top_k=3, top_p=1.0, min_p=0.0)

    def joint(spec, seeds):
        out, drafted = {}, 0
        for s in seeds:
            g = m.generate(prompt, max_tokens=3, seed=s, spec=spec, **kw)
            list(g)
            out[tuple(g.tokens)] = out.get(tuple(g.tokens), 0) + 1
            drafted += g.stats.draft_tokens
        return out, drafted

    a, _ = joint("off", range(1500))
    b, drafted = joint("mtp", range(20_000, 21_500))
    assert drafted > 300      # drafts were made (and cut: draft=3 would give 3 per verification)
    p, rows, n_kept = same_law_pvalue(a, b)
    assert n_kept >= 5
    assert p > 1e-3, (p, rows)
