"""Model.chat and the server pass every chat-template option through: the prompt they feed the model is
transformers' apply_chat_template rendering of the same messages, tools and options (the real Qwen3.6
template carried by the demo model), tokenized.

test_chat_template.py shows ChatTemplate.render equals transformers; this file shows the callers do not
drop or rewrite an option on the way (a `Model.chat(preserve_thinking=...)` that is ignored, or server
`chat_template_kwargs` lost, pass every other test).
"""

from __future__ import annotations

import copy
import json

import pytest

import pyqwen
from pq_testutil import scripted_server


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "reasoning_content": "thinking about Q1", "content": "A1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "reasoning_content": "thinking about Q2", "content": "A2"},
    {"role": "user", "content": "Q3"},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

# Every option the template reads, alone and combined; each changes the rendering of HISTORY (asserted).
OPTIONS = [
    {}, {"enable_thinking": False}, {"enable_thinking": True}, {"preserve_thinking": True},
    {"preserve_thinking": True, "enable_thinking": False}, {"preserve_thinking": False},
]


@pytest.fixture(scope="module")
def model():
    return pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=2048)


def hf_prompt(hf, tools, opts) -> str:
    return hf.apply_chat_template(copy.deepcopy(HISTORY), tools=tools, tokenize=False,
                                  add_generation_prompt=True, **opts)


def test_the_options_change_the_rendering(hf):
    """Otherwise the tests below could not see an option dropped."""
    base = hf_prompt(hf, None, {})
    assert hf_prompt(hf, None, {"enable_thinking": False}) != base
    assert hf_prompt(hf, None, {"preserve_thinking": True}) != base
    assert hf_prompt(hf, TOOLS, {}) != base


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_model_chat_prompt_is_the_template_rendering(model, hf, tools, opts):
    want = model.tokenize(hf_prompt(hf, tools, opts))
    seen = []
    real = model._generate        # where chat() hands its prompt to the generation loop

    def spy(prompt, *a, **kw):
        seen.append(prompt)
        return real(prompt, *a, **kw)

    model._generate = spy         # instance attribute: this module's model only
    try:
        reply = model.chat(copy.deepcopy(HISTORY), tools=tools, max_tokens=1, sampling={"temperature": 0}, **opts)
        list(reply)
    finally:
        del model._generate
    assert len(seen) == 1
    got = model.tokenize(seen[0]) if isinstance(seen[0], str) else list(seen[0])
    assert got == want
    assert reply.stats.prompt_tokens == len(want)


def test_model_chat_passes_unknown_template_kwargs(model, hf):
    """Options beyond the named two reach the template too (templates may read any variable)."""
    src = model.chat_template.source
    assert "enable_thinking" in src
    text = model.render_chat(HISTORY, enable_thinking=False)
    assert text == hf_prompt(hf, None, {"enable_thinking": False})


# ---- the server --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(model):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    with scripted_server(model, cache_ram_mib=64) as s:
        yield s


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_server_prompt_is_the_template_rendering(server, model, hf, tools, opts):
    requests = pytest.importorskip("requests")
    body = {"model": "demo", "messages": HISTORY, "max_tokens": 1, "temperature": 0}
    if tools:
        body["tools"] = tools
    if opts:
        body["chat_template_kwargs"] = opts
    server["script"].push("ok")
    r = requests.post(server["url"] + "/v1/chat/completions", data=json.dumps(body),
                      headers={"Content-Type": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text
    prompt_ids, _ = server["script"].records[-1]
    assert prompt_ids == model.tokenize(hf_prompt(hf, tools, opts))
