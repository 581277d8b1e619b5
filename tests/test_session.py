"""Session state reuse (pyqwen.session) and multi-turn agent conversations through the live server.

Correctness first: whatever the cache reuses (live state, restored checkpoint), the logits must equal
those of a fresh prefill of the whole prompt, bit for bit, with f32 and f16 KV caches.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import pyqwen
from pyqwen.session import Cancelled, SessionCache, chat_checkpoints, common_prefix
from pyqwen.tool_calls import messages_for_template

openai = None  # imported by the live-server fixture (the cache tests need no server packages)



@pytest.fixture(scope="module", params=["f32", "f16", "q8_0,q4_0"])
def model(request):
    return pyqwen.Model.load(kv_type=request.param, threads=1, n_ctx=512)


def fresh_logits(m, ids, which="last"):
    return m.forward(m.new_state(max(len(ids), 1)), ids, logits=which)


# ---- the cache itself --------------------------------------------------------------------------------

def test_reuse_is_exact_under_random_edits(model):
    """Extend, truncate-and-branch and repeat prompts at random; every prefill equals a fresh one."""
    m = model
    cache = SessionCache(m, cache_ram_mib=256)
    rng = random.Random(1)
    V = m.n_vocab - 64
    cur = [rng.randrange(V) for _ in range(30)]
    reused = 0
    for _ in range(25):
        r = rng.random()
        if r < 0.45:
            cur = cur + [rng.randrange(V) for _ in range(rng.randrange(1, 20))]
        elif r < 0.85:
            cur = cur[:rng.randrange(1, len(cur) + 1)] + [rng.randrange(V) for _ in range(rng.randrange(1, 10))]
        cps = [(p, "x") for p in rng.sample(range(1, len(cur) + 1), min(3, len(cur)))]
        logits, n = cache.prefill("k", cur, cps)
        assert 0 <= n < len(cur)
        reused += n
        assert np.array_equal(logits, fresh_logits(m, cur)), f"mismatch after reusing {n} of {len(cur)} tokens"
        s = cache.sessions["k"]
        assert s.state.pos == len(s.tokens) == len(cur)
    assert reused > 0 and cache.stats.checkpoints_restored > 0


def test_generation_on_a_reused_state_matches_fresh(model):
    m = model
    cache = SessionCache(m, cache_ram_mib=256)
    tok = m.tokenizer
    a = m.tokenize("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n<think>\n")
    from pyqwen.sampling import Sampler, SamplingParams

    def run(prompt, cps=()):
        with cache.open("g", prompt, cps) as turn:
            gen = turn.generate(Sampler(SamplingParams(temperature=0)), 12, tok.eog_ids, [], tok.stream_decoder())
            list(gen)
            return gen.tokens, turn.n_cached

    t1, n1 = run(a, [(len(a) - 2, "gen"), (len(a), "prompt_end")])
    assert n1 == 0
    ref = m.generate(a, max_tokens=12, temperature=0)
    list(ref)
    assert t1 == ref.tokens
    # Regenerate (same prompt): the checkpoint before <think> is restored.
    t2, n2 = run(a)
    assert t2 == t1 and n2 == len(a) - 2
    # Follow-up that extends the history: the live state continues.
    b = a + t1[:5] + m.tokenize("<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n<think>\n")
    t3, n3 = run(b)
    ref = m.generate(b, max_tokens=12, temperature=0)
    list(ref)
    assert t3 == ref.tokens
    assert n3 >= len(a)


def test_chat_checkpoint_positions():
    m = pyqwen.Model.load(threads=1, n_ctx=512)
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"}, {"role": "user", "content": "Q2"}]
    text = m.render_chat(msgs)
    ids = m.tokenize(text)
    cps = dict((k, p) for p, k in chat_checkpoints(text, ids, m.tokenize, "user"))
    assert set(cps) == {"user", "query"}  # no separate one 2 tokens later at the end of the prompt
    # Just after "<|im_start|>assistant\n", before "<think>\n": where history without reasoning diverges.
    assert m.detokenize(ids[cps["query"]:]) == "<think>\n"
    assert m.detokenize(ids[cps["user"]:]).startswith("<|im_start|>user\nQ2")
    assert dict((k, p) for p, k in chat_checkpoints(text, ids, m.tokenize, "tool"))["gen"] == cps["query"]
    text = m.render_chat(msgs, enable_thinking=False)
    ids = m.tokenize(text)
    gen = dict((k, p) for p, k in chat_checkpoints(text, ids, m.tokenize, "user"))["query"]
    assert m.detokenize(ids[gen:]) == "<think>\n\n</think>\n\n"
    raw = "just some text without a chat header"
    assert chat_checkpoints(raw, m.tokenize(raw), m.tokenize) == [(len(m.tokenize(raw)), "prompt_end")]
    # With preserve_thinking unset, the next user turn re-renders A1 without its reasoning: the prompt
    # of that turn shares exactly the tokens before the previous "<think>".
    first = m.tokenize(m.render_chat(msgs[:2]))
    second = m.tokenize(m.render_chat(msgs))
    assert common_prefix(first, second) == len(first) - 2


def test_budget_evicts_lru_sessions_and_never_the_active_one():
    m = pyqwen.Model.load(threads=1, n_ctx=128)
    one = m.new_state().nbytes
    snap = m.snapshot(m.new_state()).nbytes
    cache = SessionCache(m, cache_ram_mib=(2 * one + 4 * snap) / 2 ** 20)
    rng = random.Random(2)
    prompts = {k: [rng.randrange(2000) for _ in range(20)] for k in "abcd"}
    for k in "abcd":
        cache.prefill(k, prompts[k], [(10, "x"), (20, "y")])
        assert cache.nbytes <= cache.budget
        assert cache.sessions[k].state is not None
    assert set(cache.sessions) == {"c", "d"}  # a and b went, least recently used first
    assert cache.stats.evicted_sessions == 2
    # An evicted session comes back with a fresh (exact) prefill. Room comes from the least recently
    # used items: c's checkpoints go before c's state, and before anything of d.
    logits, n = cache.prefill("a", prompts["a"] + [5, 6])
    assert n == 0 and np.array_equal(logits, fresh_logits(m, prompts["a"] + [5, 6]))
    assert cache.nbytes <= cache.budget
    assert len(cache.sessions["d"].checkpoints) == 2
    assert not cache.sessions.get("c") or not cache.sessions["c"].checkpoints
    # A budget below one state: the active session still runs (alone).
    tiny = SessionCache(m, cache_ram_mib=0.01)
    for k in "ab":
        logits, _ = tiny.prefill(k, prompts[k])
        assert np.array_equal(logits, fresh_logits(m, prompts[k]))
    assert len(tiny.sessions) <= 1


def test_per_session_checkpoint_cap_keeps_newest_of_each_kind():
    m = pyqwen.Model.load(threads=1, n_ctx=256)
    cache = SessionCache(m, cache_ram_mib=256, max_checkpoints=4)
    ids = list(range(100, 200))
    cache.prefill("s", ids[:10], [(3, "query")])
    cache.prefill("s", ids, [(p, "gen") for p in range(20, 100, 10)])
    s = cache.sessions["s"]
    assert len(s.checkpoints) == 4
    kinds = {c.kind: c.pos for c in s.checkpoints}
    assert kinds["query"] == 3 and max(c.pos for c in s.checkpoints) == 90


def test_cancel_during_prefill_leaves_a_consistent_state():
    m = pyqwen.Model.load(threads=1, n_ctx=512)
    cache = SessionCache(m, cache_ram_mib=256, piece_tokens=16)
    ids = [(7 * i) % 2000 for i in range(100)]
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    from pyqwen.sampling import Sampler, SamplingParams

    with cache.open("c", ids, [(50, "x")], cancel=cancel) as turn:
        gen = turn.generate(Sampler(SamplingParams(temperature=0)), 4, m.tokenizer.eog_ids, [],
                            m.tokenizer.stream_decoder())
        with pytest.raises(Cancelled):
            list(gen)
    s = cache.sessions["c"]
    assert s.state.pos == len(s.tokens) == 48 and s.tokens == ids[:48]
    logits, n = cache.prefill("c", ids)
    assert n == 48 and np.array_equal(logits, fresh_logits(m, ids))


def test_anonymous_requests_pick_the_session_with_their_prefix():
    m = pyqwen.Model.load(threads=1, n_ctx=256)
    cache = SessionCache(m, cache_ram_mib=256, max_anonymous=2)
    a = list(range(100, 160))
    b = list(range(300, 360))
    cache.prefill(None, a)
    cache.prefill(None, b)            # unrelated: a second anonymous session
    assert len(cache.sessions) == 2
    _, n = cache.prefill(None, a + [1, 2, 3])
    assert n == len(a)
    _, n = cache.prefill(None, b + [4])
    assert n == len(b)


# ---- multi-turn agent through the live server ----------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv"]


def call_xml(city: str, days: int) -> str:
    return (f"<tool_call>\n<function=get_weather>\n<parameter=city>\n{city}\n</parameter>\n"
            f"<parameter=days>\n{days}\n</parameter>\n</function>\n</tool_call>")


def scripted_reply(q: int, step: int) -> str | None:
    """Replies of a 5-query x 4-request agent run: 3 tool-call turns, then an answer. Some answers are
    left to the (random) model itself, greedy, to cover replies that do not re-render identically."""
    city = CITIES[q]
    if step == 0:
        return f"I need the weather for {city}.\n</think>\n\n" + call_xml(city, 1)
    if step == 1:
        return f"Check tomorrow too.\n</think>\n\nLooking further ahead.\n\n" + call_xml(city, 2)
    if step == 2:
        return f"Compare.\n</think>\n\n" + call_xml(city, 3) + "\n" + call_xml(CITIES[(q + 1) % 5], 1)
    if q not in (2, 4):
        return f"Enough data.\n</think>\n\nIt will be sunny in {city}."
    return None


@pytest.fixture(scope="module")
def agent_servers():
    global openai
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import Script, serve_in_thread

    out = {}
    import contextlib

    with contextlib.ExitStack() as stack:
        for kv in ("f32", "f16"):
            m = pyqwen.Model.load(kv_type=kv, threads=1, n_ctx=4096)
            script = Script(m)
            engine = Engine(m, sampler_factory=script.factory, cache_ram_mib=512)
            url = stack.enter_context(serve_in_thread(create_app(engine)))
            out[kv] = (m, script, engine, url)
        yield out
        for _, _, engine, _ in out.values():
            engine.shutdown()


def run_agent(m, script, url, preserve: bool, session: str):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    kwargs = {"preserve_thinking": preserve}
    msgs = [{"role": "system", "content": "You are a weather agent."}]
    turns = []
    for q in range(5):
        msgs.append({"role": "user", "content": f"Weather in {CITIES[q]}?"})
        for step in range(4):
            text = scripted_reply(q, step)
            if text is not None:
                script.push(text)
            n_records = len(script.records)
            resp = client.chat.completions.create(
                model="demo", messages=msgs, tools=TOOLS, max_tokens=200 if text else 10, temperature=0,
                extra_body={"session_id": session, "chat_template_kwargs": kwargs})
            assert len(script.records) == n_records + 1
            prompt_ids, sampler = script.records[-1]
            # The server's prompt is the official template's rendering of what we sent.
            assert prompt_ids == m.tokenize(m.render_chat(messages_for_template(msgs), tools=TOOLS, **kwargs))
            msg = resp.choices[0].message
            a = {"role": "assistant", "content": msg.content}
            if getattr(msg, "reasoning_content", None) is not None:
                a["reasoning_content"] = msg.reasoning_content
            if msg.tool_calls:
                a["tool_calls"] = [tc.model_dump(exclude_none=True) for tc in msg.tool_calls]
            if text is not None and step < 3:
                assert resp.choices[0].finish_reason == "tool_calls"
                assert len(msg.tool_calls) == (2 if step == 2 else 1)
                args = json.loads(msg.tool_calls[0].function.arguments)
                assert args == {"city": CITIES[q], "days": step + 1}
            # What the state must hold for the next turn to reuse it all: history + reply, re-rendered.
            canon = m.tokenize(m.render_chat(messages_for_template(msgs + [a]), tools=TOOLS,
                                             add_generation_prompt=False, **kwargs))
            turns.append({"q": q, "step": step, "prompt": prompt_ids, "sampler": sampler,
                          "cached": resp.usage.prompt_tokens_details.cached_tokens,
                          "prompt_tokens": resp.usage.prompt_tokens, "canon": canon, "scripted": text is not None})
            msgs.append(a)
            for tc in msg.tool_calls or []:
                city = json.loads(tc.function.arguments).get("city", "?")
                msgs.append({"role": "tool", "tool_call_id": tc.id, "content": f"{city}: 21C, clear"})
    return turns


def check_logits_against_fresh(m, turns):
    """Every logits vector any sampler saw equals a fresh prefill's (one forward per chain of turns whose
    token sequences extend each other)."""
    seqs = []
    for t in turns:
        fed = [x for x in t["sampler"].tokens if x not in m.tokenizer.eog_ids]
        seqs.append(t["prompt"] + fed)
    i = 0
    checked = 0
    while i < len(turns):
        j = i
        while j + 1 < len(turns) and seqs[j + 1][:len(seqs[j])] == seqs[j]:
            j += 1
        full = fresh_logits(m, seqs[j], "all")
        for k in range(i, j + 1):
            L = len(turns[k]["prompt"])
            for step, lg in enumerate(turns[k]["sampler"].logits):
                assert np.array_equal(lg, full[L - 1 + step]), f"turn {k} step {step} differs from fresh"
                checked += 1
        i = j + 1
    return checked


@pytest.mark.parametrize("preserve,kv", [(True, "f16"), (False, "f32")])
def test_agent_conversation_reuses_state(agent_servers, preserve, kv):
    m, script, engine, url = agent_servers[kv]
    turns = run_agent(m, script, url, preserve, session=f"agent-{preserve}")
    assert len(turns) == 20
    report = []
    for k in range(1, len(turns)):
        prev, t = turns[k - 1], turns[k]
        lcp = common_prefix(t["prompt"], prev["canon"])
        report.append((k, t["prompt_tokens"], t["cached"], lcp))
        # Exactly the reusable prefix is reused: no re-prefill of anything the state could have kept.
        assert t["cached"] == min(lcp, len(t["prompt"]) - 1), report
        if preserve or t["step"] > 0:
            # Only the new messages are prefilled: the whole previous prompt and reply are reused.
            assert t["cached"] >= len(prev["canon"]) - 0, report
            assert t["cached"] >= len(prev["prompt"])
        else:
            # A new user query without preserve_thinking: earlier reasoning is dropped from history, so
            # the reuse stops at the first assistant turn after the previous query, at its "<think>".
            first = next(x for x in turns if x["q"] == t["q"] - 1)
            assert t["cached"] == len(first["prompt"]) - 2, report
            assert m.detokenize(first["prompt"][t["cached"]:]) == "<think>\n"
    # ... and reuse changes nothing: every logits vector equals a fresh prefill's.
    assert check_logits_against_fresh(m, turns) > 100
    print(f"\npreserve_thinking={preserve} kv={kv}: (turn, prompt, cached, lcp) {report}")
