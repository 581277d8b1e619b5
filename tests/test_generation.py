"""The one generation loop (pyqwen.generation) on the CPU backend: the backend contract, and the tokens
of Model.generate / the server's session turns against a hand-written forward + Sampler loop."""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen
from pyqwen.backend import Backend, CpuCore
from pyqwen.sampling import Sampler, SamplingParams

PROMPT = [1, 5, 17, 300, 42, 7, 99, 1000]


@pytest.fixture(scope="module")
def model(gguf_cache):
    return pyqwen.Model.load(str(gguf_cache("qwen35-r2-untied", "f32")), n_ctx=64, threads=1, backend="cpu")


def manual_tokens(m, prompt, params: SamplingParams, n: int) -> list[int]:
    """forward + Sampler by hand: prefill, draw, feed back, ... (end-of-generation tokens stop it)."""
    st = m.new_state()
    logits = m.forward(st, prompt)
    s = Sampler(params)
    hist, out = list(prompt), []
    while len(out) < n:
        t = s.sample(logits, hist)
        if t in m.tokenizer.eog_ids:
            break
        out.append(t)
        hist.append(t)
        logits = m.forward(st, [t])
    return out


def test_cpu_core_satisfies_the_backend_contract(model):
    core = model._core
    assert isinstance(core, CpuCore) and isinstance(core, Backend)
    assert core.device_sampling is False and model.device_sampling is False
    # decode(): feed one token, the next chosen from its logits (greedy = argmax of a twin state's forward)
    a, b = model.new_state(), model.new_state()
    model.forward(a, PROMPT)
    model.forward(b, PROMPT)
    want = int(np.argmax(model.forward(b, [33])))
    assert model.decode(a, 33) == want and a.pos == b.pos == len(PROMPT) + 1
    p = SamplingParams(temperature=0.9, top_k=0, top_p=0.9, min_p=0.0, seed=4)
    snap = model.snapshot(a)
    t1 = model.decode(a, want, p, counter=2)
    model.restore(a, snap)
    assert model.decode(a, want, p, counter=2) == t1 and 0 <= t1 < model.n_vocab


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=0.8, top_k=0, seed=1),
                                dict(temperature=1.2, top_k=5, top_p=0.9, min_p=0.0, seed=9),
                                dict(temperature=0.7, repetition_penalty=1.3, presence_penalty=0.5, seed=2)])
def test_generate_is_the_host_loop_on_the_cpu(model, kw):
    gen = model.generate(PROMPT, max_tokens=6, **kw)
    list(gen)
    assert gen.on_device is False
    assert gen.tokens == manual_tokens(model, PROMPT, SamplingParams(**kw), 6)


def test_session_turn_uses_the_same_loop(model):
    from pyqwen.session import SessionCache

    cache = SessionCache(model, cache_ram_mib=64, piece_tokens=3)
    params = SamplingParams(temperature=0.8, top_k=0, seed=5)
    with cache.open("k", PROMPT, [(4, "user")]) as turn:
        gen = turn.generate(Sampler(params), 5, model.tokenizer.eog_ids, [], model.tokenizer.stream_decoder())
        list(gen)
        assert gen.on_device is False
        # prefill in pieces with a checkpoint between; the state holds prompt + all tokens but the last
        assert turn.session.tokens == PROMPT + gen.tokens[:-1] == gen.fed_tokens
        assert [c.pos for c in turn.session.checkpoints] == [4]
    assert gen.tokens == manual_tokens(model, PROMPT, params, 5)
