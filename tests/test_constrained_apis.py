"""Structured output through the agent APIs, each with its own client library: they translate into the
chat path, so ollama's `format`, the Responses API's `text.format` and Anthropic's `output_config.format`
and forced `tool_choice` are enforced by the same grammar mask (pyqwen.constrain). Checked with jsonschema
on the trained demo model, thinking off, sampled."""

from __future__ import annotations

import json

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pytest.importorskip("fastapi")

from agent_api_util import API_KEY, live_server  # noqa: E402
from test_constrained import PARAMS, SCHEMA, TOOLS  # noqa: E402

QUESTION = "Describe a pet as JSON."


@pytest.fixture(scope="module")
def server():
    with live_server() as s:
        yield s


def test_ollama_format_schema(server):
    ollama = pytest.importorskip("ollama")
    c = ollama.Client(host=server["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    r = c.chat(model="m", messages=[{"role": "user", "content": QUESTION}], format=SCHEMA, think=False,
               options={"temperature": 1.0, "seed": 2, "num_predict": 150})
    jsonschema.validate(json.loads(r.message.content), SCHEMA)
    r = c.generate(model="m", prompt="settings = ", format="json", raw=True, options={"temperature": 0,
                                                                                    "num_predict": 150})
    assert isinstance(json.loads(r.response), dict)


def test_responses_text_format(server):
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    r = c.responses.create(model="m", input=QUESTION, reasoning={"effort": "none"}, max_output_tokens=150,
                           temperature=1.0, text={"format": {"type": "json_schema", "name": "pet", "schema": SCHEMA,
                                                             "strict": True}})
    jsonschema.validate(json.loads(r.output_text), SCHEMA)
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    r = c.responses.create(model="m", input=QUESTION, reasoning={"effort": "none"}, max_output_tokens=200,
                           tools=tools, tool_choice={"type": "function", "name": "get_weather"},
                           parallel_tool_calls=False)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0].arguments), PARAMS["get_weather"])


def test_anthropic_output_format_and_forced_tool(server):
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=server["url"], api_key=API_KEY, max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": QUESTION}]
    r = c.messages.create(model="m", max_tokens=150, messages=msgs,
                          extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}})
    jsonschema.validate(json.loads("".join(b.text for b in r.content if b.type == "text")), SCHEMA)
    tools = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS]
    r = c.messages.create(model="m", max_tokens=200, messages=msgs, tools=tools,
                          tool_choice={"type": "tool", "name": "set_alarm", "disable_parallel_tool_use": True})
    uses = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and [u.name for u in uses] == ["set_alarm"]
    jsonschema.validate(uses[0].input, PARAMS["set_alarm"])
