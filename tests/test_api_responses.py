"""OpenAI Responses API (/v1/responses) on the live server with the demo model, driven by the real `openai`
SDK. References: the chat endpoint's answer to the same greedy request, the chat template and tokenizer
for token counts, and scripted replies (agent_api_util) for the reasoning/text split and function calls."""

from __future__ import annotations

import json

import pytest

from agent_api_util import (API_KEY, SCRIPTED_ANSWER, SCRIPTED_CALL, WEATHER_SCHEMA, expected_reuse, live_server,
                            openai_reference)

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                  "parameters": WEATHER_SCHEMA}}]


@pytest.fixture(scope="module")
def server():
    with live_server() as s:
        s["client"] = openai.OpenAI(base_url=s["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        yield s


def items(resp):
    out = []
    for it in resp.output:
        if it.type == "reasoning":
            out.append(("reasoning", "".join(c.text for c in it.content)))
        elif it.type == "message":
            out.append(("message", "".join(c.text for c in it.content)))
        else:
            out.append((it.type, it.name, json.loads(it.arguments)))
    return out


def collect(events):
    """Rebuild the output from the raw stream events; checks the sequence numbers and item bookkeeping."""
    events = list(events)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    text: dict[int, str] = {}
    added, done = [], []
    for e in events:
        if e.type == "response.output_item.added":
            added.append(e.output_index)
        elif e.type == "response.output_item.done":
            done.append(e.output_index)
        elif e.type in ("response.output_text.delta", "response.reasoning_text.delta",
                        "response.function_call_arguments.delta"):
            text[e.output_index] = text.get(e.output_index, "") + e.delta
    assert added == done == list(range(len(added)))
    return events[-1], text


# ---- real model output against the chat endpoint's split ---------------------------------------------------

@pytest.mark.parametrize("effort", ["none", "medium"])
def test_same_reply_as_chat_endpoint(server, effort):
    thinking = effort != "none"
    ref = openai_reference(server, [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Tell me about dicts."}], max_tokens=20, thinking=thinking)
    msg = ref["choices"][0]["message"]
    want = ([("reasoning", msg["reasoning_content"])] if msg.get("reasoning_content") else []) + \
        ([("message", msg["content"])] if msg["content"] else [])
    kw = dict(model="demo", instructions="Be brief.", input="Tell me about dicts.", max_output_tokens=20,
              temperature=0, reasoning={"effort": effort})
    r = server["client"].responses.create(**kw)
    assert want and items(r) == want
    assert r.object == "response" and r.id.startswith("resp")
    if ref["choices"][0]["finish_reason"] == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed"
    assert r.output_text == (msg["content"] or "")
    assert r.usage.output_tokens == ref["usage"]["completion_tokens"]
    assert r.usage.input_tokens == ref["usage"]["prompt_tokens"]
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    last, text = collect(server["client"].responses.create(stream=True, **kw))
    assert last.type == {"completed": "response.completed", "incomplete": "response.incomplete"}[r.status]
    assert items(last.response) == want and [text[i] for i in sorted(text)] == [w[1] for w in want]
    assert last.response.usage.output_tokens == r.usage.output_tokens


# ---- scripted replies: reasoning + message + function call, and the output round trip ----------------------

def test_function_call_round_trip(server):
    s, m, c = server["script"], server["model"], server["client"]
    first = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    s.push(SCRIPTED_CALL)
    r = c.responses.create(model="demo", input=first, tools=TOOLS, max_output_tokens=200, prompt_cache_key="resp-tools")
    assert items(r) == [("reasoning", "The user wants weather."), ("message", "Let me check."),
                        ("function_call", "get_weather", {"city": "Paris", "days": 3})]
    assert r.status == "completed"
    call = r.output[2]
    assert call.call_id and call.id and call.status == "completed"
    # Streamed through the SDK's helper: the same items, arguments from the delta events.
    s.push(SCRIPTED_CALL)
    with c.responses.stream(model="demo", input=first, tools=TOOLS, max_output_tokens=200) as st:
        final = st.get_final_response()
    assert items(final) == items(r)
    # Round trip: the previous output items as input, plus the function's output.
    follow = first + [it.model_dump(exclude_none=True) for it in r.output] + \
        [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"}]
    s.push(SCRIPTED_ANSWER)
    r2 = c.responses.create(model="demo", input=follow, tools=TOOLS, max_output_tokens=200, prompt_cache_key="resp-tools")
    assert items(r2) == [("reasoning", "Done checking."), ("message", "Sunny in Paris.")]
    ids = s.records[-1][0]
    prompt = m.detokenize(ids)
    assert "<tool_response>\nSunny, 24C\n</tool_response>" in prompt and "<parameter=days>\n3\n</parameter>" in prompt
    cached = r2.usage.input_tokens_details.cached_tokens
    assert m.detokenize(ids[cached:]).startswith("<|im_start|>user\n<tool_response>")
    # The chat endpoint renders the same conversation to the same tokens.
    s.push(SCRIPTED_ANSWER)
    openai_reference(server, first + [
        {"role": "assistant", "content": "Let me check.", "reasoning_content": "The user wants weather.",
         "tool_calls": [{"id": call.call_id, "type": "function",
                         "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 24C"}], max_tokens=200, thinking=True,
        tools=OPENAI_TOOLS)
    assert s.records[-1][0] == ids
    # previous_response_id: only the new item is sent; the stored conversation makes the same prompt.
    s.push(SCRIPTED_ANSWER)
    r3 = c.responses.create(model="demo", previous_response_id=r.id, tools=TOOLS, max_output_tokens=200,
                            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"}])
    assert s.records[-1][0] == ids and r3.previous_response_id == r.id
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="demo", previous_response_id="resp-nope", input="x")
    assert e.value.body["param"] == "previous_response_id"


# ---- sessions -------------------------------------------------------------------------------------------

def test_second_turn_prefills_only_the_new_message(server):
    m, c = server["model"], server["client"]
    no_think = {"effort": "none"}
    turn1 = [{"role": "user", "content": "Name a Python keyword."}]
    r1 = c.responses.create(model="demo", input=turn1, max_output_tokens=8, temperature=0, reasoning=no_think,
                            prompt_cache_key="resp-session")
    turn2 = turn1 + [{"role": "assistant", "content": r1.output_text}, {"role": "user", "content": "Another?"}]
    r2 = c.responses.create(model="demo", input=turn2, max_output_tokens=8, temperature=0, reasoning=no_think,
                            prompt_cache_key="resp-session")
    n2, shared = expected_reuse(m, turn1, {"role": "assistant", "content": r1.output_text}, turn2, thinking=False)
    assert r2.usage.input_tokens == n2 and r2.usage.input_tokens_details.cached_tokens == shared
    r3 = c.responses.create(model="demo", input=turn2, max_output_tokens=8, temperature=0, reasoning=no_think,
                            extra_headers={"X-Session-Id": "resp-fresh"})
    assert r3.usage.input_tokens_details.cached_tokens == 0 and items(r3) == items(r2)


# ---- auth and errors ------------------------------------------------------------------------------------

def test_auth(server):
    bad = openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.responses.create(model="demo", input="x", max_output_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    assert requests.post(server["url"] + "/v1/responses", json={"input": "x"}, timeout=60).status_code == 401


@pytest.mark.parametrize("body,param", [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "temperature": -1}, "temperature"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
])
def test_bad_requests(server, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        server["client"].post("/responses", body=dict(body, model="demo"), cast_to=object)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == param


def test_malformed_body(server):
    for raw in (b"{oops", b"12", b""):
        r = requests.post(server["url"] + "/v1/responses", data=raw, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


# ---- the stream translator on reply events ----------------------------------------------------------------

def test_writer_events_and_whole_body_agree():
    from pyqwen.server.api_responses import ResponseWriter
    from pyqwen.tool_calls import ToolCall

    extra = {"echo": {"instructions": None, "max_output_tokens": None, "previous_response_id": None,
                      "temperature": None, "top_p": None, "model": "m"}, "tools": [], "tool_choice": "auto",
             "reasoning": None, "store": False, "metadata": {}}
    call = ToolCall("f", {"x": 1}, id="call_1")
    result = {"finish_reason": "tool_calls", "reasoning_content": "ab", "content": "c", "tool_calls": [call],
              "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                        "prompt_tokens_details": {"cached_tokens": 2}}}
    w = ResponseWriter("m", extra)
    evs = w.start()
    for d in ({"reasoning_content": "a"}, {"reasoning_content": "b", "content": "c"},
              {"tool_calls": [call.to_openai(index=0)]}):
        evs += w.delta(d)
    evs += w.finish(result)
    assert [e["type"] for e in evs] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    streamed = evs[-1]["response"]
    whole = ResponseWriter("m", extra).whole(result)
    strip = lambda r: [{k: v for k, v in it.items() if k != "id"} for it in r["output"]]  # noqa: E731
    assert strip(streamed) == strip(whole)
    assert streamed["usage"] == whole["usage"] == {
        "input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
