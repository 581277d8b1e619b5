"""Anthropic Messages API (/v1/messages) on the live server with the demo model, driven by the real
`anthropic` SDK. References: the OpenAI endpoint's answer to the same greedy request (the reply stream's
own reasoning/content split), the chat template and tokenizer for token counts, and scripted replies
(see agent_api_util) where the demo model would not produce a thinking/text split or a tool call."""

from __future__ import annotations

import json

import pytest

from agent_api_util import (API_KEY, SCRIPTED_ANSWER, SCRIPTED_CALL, WEATHER_SCHEMA, expected_reuse, live_server,
                            openai_reference, prompt_ids)

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                  "parameters": WEATHER_SCHEMA}}]
GREEDY = {"temperature": 0}     # this SDK no longer has a temperature argument; the server still reads it


@pytest.fixture(scope="module")
def server():
    with live_server() as s:
        s["client"] = anthropic.Anthropic(base_url=s["url"], api_key=API_KEY, max_retries=0, timeout=120)
        yield s


def raw_events(server, body, headers=None):
    """(event name, data) pairs of a streamed request, as sent on the wire."""
    h = {"x-api-key": API_KEY, **(headers or {})}
    r = requests.post(server["url"] + "/v1/messages", json=dict(body, stream=True), headers=h, timeout=120,
                      stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    out, name = [], None
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name      # the event name and the data's type agree
            out.append((name, data))
    return out


def blocks(msg):
    return [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None) or getattr(b, "input", None))
            for b in msg.content]


# ---- real model output against the OpenAI endpoint's split ------------------------------------------------

@pytest.mark.parametrize("thinking", [False, True])
def test_same_reply_as_openai_endpoint(server, thinking):
    msgs = [{"role": "user", "content": "Tell me about lists."}]
    ref = openai_reference(server, msgs, max_tokens=24, thinking=thinking)
    choice = ref["choices"][0]
    kw = dict(model="demo", max_tokens=24, messages=msgs, extra_body=GREEDY)
    if thinking:
        kw["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    r = server["client"].messages.create(**kw)
    want = []
    if choice["message"].get("reasoning_content"):
        want.append(("thinking", choice["message"]["reasoning_content"]))
    if choice["message"]["content"]:
        want.append(("text", choice["message"]["content"]))
    assert want and blocks(r) == want
    assert r.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[choice["finish_reason"]]
    assert r.usage.output_tokens == ref["usage"]["completion_tokens"]
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == ref["usage"]["prompt_tokens"]
    assert r.role == "assistant" and r.type == "message" and r.id.startswith("msg")
    # The SDK's stream helper accumulates the events into the same message.
    with server["client"].messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert blocks(final) == want and final.stop_reason == r.stop_reason
    assert text == (choice["message"]["content"] or "")
    assert final.usage.output_tokens == r.usage.output_tokens


def test_stream_event_order(server):
    evs = raw_events(server, {"model": "demo", "max_tokens": 12, "temperature": 0,
                              "thinking": {"type": "enabled", "budget_tokens": 2000},
                              "messages": [{"role": "user", "content": "Hi"}]})
    names = [n for n, _ in evs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and evs[1][1]["content_block"]["type"] == "thinking"
    assert set(names[2:-3]) == {"content_block_delta"} and names[-3] == "content_block_stop"
    assert all(d["delta"]["type"] == "thinking_delta" and d["index"] == 0 for n, d in evs if n == "content_block_delta")
    md = evs[-2][1]
    assert md["delta"]["stop_reason"] == "max_tokens" and md["usage"]["output_tokens"] == 12
    assert evs[0][1]["message"]["usage"]["input_tokens"] == len(
        prompt_ids(server["model"], [{"role": "user", "content": "Hi"}], thinking=True))


def test_thinking_off_by_default(server):
    """No `thinking` field: the API's default (no thinking), so the prompt closes the think block."""
    s = server["script"]
    s.push("Only text.")
    r = server["client"].messages.create(model="demo", max_tokens=30, messages=[{"role": "user", "content": "x"}])
    assert blocks(r) == [("text", "Only text.")] and r.stop_reason == "end_turn"
    assert server["model"].detokenize(s.records[-1][0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_stop_sequences(server):
    msgs = [{"role": "user", "content": "Count for me."}]
    base = openai_reference(server, msgs, max_tokens=20, thinking=False)["choices"][0]["message"]["content"]
    assert len(base) > 8
    stop = base[4:7]
    r = server["client"].messages.create(model="demo", max_tokens=20, messages=msgs, stop_sequences=["@@none", stop],
                                         extra_body=GREEDY)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert blocks(r) == [("text", base[:base.index(stop)])]


# ---- scripted replies: thinking + text + tool_use, and the tool_result round trip -------------------------

def test_tool_use_round_trip(server):
    s, m, c = server["script"], server["model"], server["client"]
    msgs = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    think = {"type": "enabled", "budget_tokens": 1024}
    s.push(SCRIPTED_CALL)
    r = c.messages.create(model="demo", max_tokens=200, messages=msgs, tools=TOOLS, thinking=think,
                          metadata={"user_id": "anthropic-tools"})
    assert blocks(r) == [("thinking", "The user wants weather."), ("text", "Let me check."),
                         ("tool_use", {"city": "Paris", "days": 3})]
    assert r.stop_reason == "tool_use"
    use = r.content[2]
    assert use.name == "get_weather" and use.id
    # The same scripted reply streamed: the SDK rebuilds the tool input from input_json_delta.
    s.push(SCRIPTED_CALL)
    with c.messages.stream(model="demo", max_tokens=200, messages=msgs, tools=TOOLS, thinking=think,
                           metadata={"user_id": "anthropic-tools-2"}) as st:
        final = st.get_final_message()
    assert blocks(final) == blocks(r) and final.stop_reason == "tool_use"
    # Send the whole assistant turn back (the SDK's own objects) with the tool's result.
    msgs2 = msgs + [{"role": "assistant", "content": r.content},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                  "content": [{"type": "text", "text": "Sunny, 24C"}]}]}]
    s.push(SCRIPTED_ANSWER)
    r2 = c.messages.create(model="demo", max_tokens=200, messages=msgs2, tools=TOOLS, thinking=think,
                           metadata={"user_id": "anthropic-tools"})
    assert blocks(r2) == [("thinking", "Done checking."), ("text", "Sunny in Paris.")] and r2.stop_reason == "end_turn"
    prompt = m.detokenize(s.records[-1][0])
    assert "<tool_response>\nSunny, 24C\n</tool_response>" in prompt
    assert "<parameter=days>\n3\n</parameter>" in prompt
    # Turn 2 reused turn 1 (the same session): it prefilled only the tool result and the new header.
    new = m.detokenize(s.records[-1][0][r2.usage.cache_read_input_tokens:])
    assert new.startswith("<|im_start|>user\n<tool_response>"), new
    assert r2.usage.cache_read_input_tokens + r2.usage.input_tokens == len(s.records[-1][0])
    # The same conversation through the OpenAI endpoint renders the same prompt.
    oa = [msgs[0], {"role": "assistant", "content": "Let me check.", "reasoning_content": "The user wants weather.",
                    "tool_calls": [{"id": use.id, "type": "function", "function": {
                        "name": "get_weather", "arguments": json.dumps(use.input)}}]},
          {"role": "tool", "tool_call_id": use.id, "content": "Sunny, 24C"}]
    s.push(SCRIPTED_ANSWER)
    openai_reference(server, oa, max_tokens=200, thinking=True, tools=OPENAI_TOOLS)
    assert s.records[-1][0] == s.records[-2][0]


# ---- sessions ---------------------------------------------------------------------------------------------

def test_second_turn_prefills_only_the_new_message(server):
    m, c = server["model"], server["client"]
    turn1 = [{"role": "user", "content": "Name a Python keyword."}]
    r1 = c.messages.create(model="demo", max_tokens=8, messages=turn1, metadata={"user_id": "anthropic-session"},
                           extra_body=GREEDY)
    text = r1.content[0].text
    turn2 = turn1 + [{"role": "assistant", "content": text}, {"role": "user", "content": "And another one?"}]
    r2 = c.messages.create(model="demo", max_tokens=8, messages=turn2, metadata={"user_id": "anthropic-session"},
                           extra_body=GREEDY)
    n2, shared = expected_reuse(m, turn1, {"role": "assistant", "content": text}, turn2, thinking=False)
    assert r2.usage.input_tokens + r2.usage.cache_read_input_tokens == n2
    assert r2.usage.cache_read_input_tokens == shared and r2.usage.input_tokens == n2 - shared
    # A fresh session (X-Session-Id wins over metadata) prefills everything and answers the same.
    r3 = c.messages.create(model="demo", max_tokens=8, messages=turn2, metadata={"user_id": "anthropic-session"},
                           extra_body=GREEDY, extra_headers={"X-Session-Id": "anthropic-fresh"})
    assert r3.usage.cache_read_input_tokens == 0 and r3.usage.input_tokens == n2
    assert blocks(r3) == blocks(r2)


# ---- auth and errors in the API's own shape ----------------------------------------------------------------

def test_auth(server):
    bad = anthropic.Anthropic(base_url=server["url"], api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="demo", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401 and e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    r = requests.post(server["url"] + "/v1/messages", json={"model": "d", "max_tokens": 2, "temperature": 0,
                                                           "messages": [{"role": "user", "content": "x"}]},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 2
    assert requests.post(server["url"] + "/v1/messages", json={}, timeout=60).status_code == 401


@pytest.mark.parametrize("body,needle", [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "sometimes"}}, "thinking"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]}, "input_schema"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool", "name": "nope"}},
     "tool_choice"),
])
def test_bad_requests(server, body, needle):
    r = requests.post(server["url"] + "/v1/messages", json=dict(body, model="demo"), timeout=60,
                      headers={"x-api-key": API_KEY})
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert needle in err["error"]["message"]
    if "max_tokens" in body and "temperature" not in body:    # the SDK raises its own class for the shape
        with pytest.raises(anthropic.BadRequestError) as e:
            server["client"].messages.create(model="demo", **body)
        assert e.value.body == err


def test_malformed_body(server):
    for raw in (b"{not json", b"[1, 2]", b""):
        r = requests.post(server["url"] + "/v1/messages", data=raw, timeout=60,
                          headers={"x-api-key": API_KEY, "content-type": "application/json"})
        assert r.status_code == 400
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_count_tokens(server):
    msgs = [{"role": "user", "content": "How many tokens is this?"}]
    n = server["client"].messages.count_tokens(model="demo", messages=msgs, system="Be brief.")
    want = prompt_ids(server["model"], [{"role": "system", "content": "Be brief."}] + msgs, thinking=False)
    assert n.input_tokens == len(want)


# ---- the stream translator on reply events ----------------------------------------------------------------

def test_event_writer_blocks():
    from pyqwen.server.api_anthropic import EventWriter

    w = EventWriter("msg-1", "m", 10)
    evs = w.start()
    for d in ({"reasoning_content": "a"}, {"reasoning_content": "b", "content": "c"}, {"content": "d"},
              {"tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
              {"tool_calls": [{"id": "t2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}):
        evs += w.delta(d)
    evs += w.finish({"finish_reason": "tool_calls", "usage": {"prompt_tokens": 10, "completion_tokens": 7,
                                                              "prompt_tokens_details": {"cached_tokens": 4}}})
    seq = [(n, d.get("index"), (d.get("content_block") or d.get("delta") or {}).get("type")) for n, d in evs]
    assert seq == [("message_start", None, None),
                   ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
                   ("content_block_delta", 0, "thinking_delta"), ("content_block_stop", 0, None),
                   ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
                   ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
                   ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
                   ("content_block_stop", 2, None),
                   ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
                   ("content_block_stop", 3, None),
                   ("message_delta", None, None), ("message_stop", None, None)]
    assert evs[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # The message the events add up to is the non-streaming body of the same reply.
    from pyqwen.tool_calls import ToolCall

    result = {"finish_reason": "tool_calls", "reasoning_content": "ab", "content": "cd",
              "tool_calls": [ToolCall("f", {"x": 1}, id="t1"), ToolCall("g", {}, id="t2")],
              "usage": {"prompt_tokens": 10, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4}}}
    whole = EventWriter("msg-1", "m", 10).whole(result)
    assert w.message() == whole
    assert [b["type"] for b in whole["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert whole["content"][2]["input"] == {"x": 1} and whole["stop_reason"] == "tool_use"
    assert evs[-2][1]["usage"] == {"input_tokens": 6, "output_tokens": 7, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 4}
