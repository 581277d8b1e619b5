"""ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version) on the live server with
the demo model, driven by ollama's own Python client. References: the OpenAI endpoints' answers to the same
greedy requests, the gguf package's reading of the model file, the chat template and tokenizer for
token counts, and scripted replies (agent_api_util) for the thinking split and tool calls."""

from __future__ import annotations

import pytest

from agent_api_util import (API_KEY, SCRIPTED_ANSWER, SCRIPTED_CALL, WEATHER_SCHEMA, expected_reuse, live_server,
                            openai_reference, prompt_ids)

ollama = pytest.importorskip("ollama")
pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": WEATHER_SCHEMA}}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def server():
    with live_server() as s:
        yield s


def client(server, session=None, key=API_KEY):
    h = {"Authorization": f"Bearer {key}"}
    if session:
        h["X-Session-Id"] = session
    return ollama.Client(host=server["url"], headers=h, timeout=120)


# ---- real model output against the OpenAI endpoints ------------------------------------------------------

@pytest.mark.parametrize("think", [False, True])
def test_chat_same_reply_as_openai_endpoint(server, think):
    msgs = [{"role": "user", "content": "Tell me about sets."}]
    ref = openai_reference(server, msgs, max_tokens=20, thinking=think, session=f"ollama-ref-{think}")
    want = ref["choices"][0]["message"]
    c = client(server, session=f"ollama-chat-{think}")
    r = c.chat(model="demo", messages=msgs, think=think, options={**GREEDY, "num_predict": 20}, stream=False)
    assert r.message.role == "assistant" and r.done is True
    assert (r.message.content, r.message.thinking) == (want["content"] or "", want.get("reasoning_content") or None)
    assert r.done_reason == {"length": "length", "stop": "stop"}[ref["choices"][0]["finish_reason"]]
    assert r.eval_count == ref["usage"]["completion_tokens"]
    assert r.prompt_eval_count == ref["usage"]["prompt_tokens"]     # a fresh session evaluates all of it
    assert r.total_duration >= r.eval_duration > 0
    parts = list(client(server, session=f"ollama-stream-{think}").chat(
        model="demo", messages=msgs, think=think, options={**GREEDY, "num_predict": 20}, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == r.done_reason
    assert "".join(p.message.content or "" for p in parts) == r.message.content
    assert "".join(p.message.thinking or "" for p in parts) == (r.message.thinking or "")
    assert parts[-1].eval_count == r.eval_count and parts[-1].prompt_eval_count == r.prompt_eval_count


def test_generate(server):
    c = client(server)
    opts = {**GREEDY, "num_predict": 12}
    # Templated: a one-turn chat with the system prompt.
    ref = openai_reference(server, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                           max_tokens=12, thinking=False)
    r = c.generate(model="demo", prompt="Hi", system="Be brief.", think=False, options=opts)
    assert r.response == ref["choices"][0]["message"]["content"] and r.eval_count == 12 and r.done_reason == "length"
    streamed = list(c.generate(model="demo", prompt="Hi", system="Be brief.", think=False, options=opts, stream=True))
    assert "".join(p.response for p in streamed) == r.response and streamed[-1].done
    # Raw: the prompt as-is, as the library's own greedy generation continues it.
    r = c.generate(model="demo", prompt="def parse(", raw=True, options=opts)
    want = "".join(ch.text for ch in server["model"].generate("def parse(", max_tokens=12, temperature=0))
    assert r.response == want and r.eval_count == 12
    streamed = list(c.generate(model="demo", prompt="def parse(", raw=True, options=opts, stream=True))
    assert "".join(p.response for p in streamed) == want
    # An empty prompt is ollama's "load the model" request: answered at once.
    r = c.generate(model="demo", prompt="")
    assert r.done and r.done_reason == "load" and r.response == ""


def test_options_reach_the_sampler(server):
    """num_predict, stop and seed: the same results as the OpenAI endpoint with the same settings."""
    msgs = [{"role": "user", "content": "Count for me."}]
    base = openai_reference(server, msgs, max_tokens=20, thinking=False)["choices"][0]["message"]["content"]
    assert len(base) > 8
    stop = base[4:7]
    c = client(server)
    r = c.chat(model="demo", messages=msgs, think=False, options={**GREEDY, "num_predict": 20, "stop": [stop]})
    assert r.message.content == base[:base.index(stop)] and r.done_reason == "stop"
    seeded = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 77, "num_predict": 10}
    a = c.chat(model="demo", messages=msgs, think=False, options=seeded).message.content
    b = c.chat(model="demo", messages=msgs, think=False, options=seeded).message.content
    assert a == b


# ---- scripted replies: thinking + tool calls, and the tool result round trip -------------------------------

def test_tool_call_round_trip(server):
    s, m = server["script"], server["model"]
    c = client(server, session="ollama-tools")
    msgs = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    s.push(SCRIPTED_CALL)
    r = c.chat(model="demo", messages=msgs, tools=TOOLS, think=True)
    assert r.message.thinking == "The user wants weather." and r.message.content == "Let me check."
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and dict(call.function.arguments) == {"city": "Paris", "days": 3}
    # Streamed: the call arrives whole in one chunk.
    s.push(SCRIPTED_CALL)
    parts = list(client(server).chat(model="demo", messages=msgs, tools=TOOLS, think=True, stream=True))
    calls = [tc for p in parts for tc in p.message.tool_calls or []]
    assert [(tc.function.name, dict(tc.function.arguments)) for tc in calls] == [("get_weather", {"city": "Paris",
                                                                                                "days": 3})]
    msgs2 = msgs + [r.message.model_dump(exclude_none=True),
                    {"role": "tool", "content": "Sunny, 24C", "tool_name": "get_weather"}]
    s.push(SCRIPTED_ANSWER)
    r2 = c.chat(model="demo", messages=msgs2, tools=TOOLS, think=True)
    assert (r2.message.thinking, r2.message.content) == ("Done checking.", "Sunny in Paris.")
    ids = s.records[-1][0]
    prompt = m.detokenize(ids)
    assert "<tool_response>\nSunny, 24C\n</tool_response>" in prompt and "<parameter=days>\n3\n</parameter>" in prompt
    # Only what follows turn 1 was evaluated.
    assert m.detokenize(ids[len(ids) - r2.prompt_eval_count:]).startswith("<|im_start|>user\n<tool_response>")


def test_python_function_as_tool(server):
    """ollama's client turns a documented Python function into a tool schema; the prompt carries it."""

    def get_weather(city: str, days: int) -> str:
        """Weather for a city.

        Args:
          city: The city
          days: How many days
        """
        return "Sunny"

    s = server["script"]
    s.push(SCRIPTED_CALL)
    r = client(server).chat(model="demo", messages=[{"role": "user", "content": "Paris?"}], tools=[get_weather],
                            think=True)
    assert dict(r.message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 3}
    assert '"name": "get_weather"' in server["model"].detokenize(s.records[-1][0])


# ---- sessions -------------------------------------------------------------------------------------------

def test_second_turn_evaluates_only_the_new_message(server):
    m = server["model"]
    c = client(server, session="ollama-session")
    opts = {**GREEDY, "num_predict": 8}
    turn1 = [{"role": "user", "content": "Name a Python keyword."}]
    r1 = c.chat(model="demo", messages=turn1, think=False, options=opts)
    reply = {"role": "assistant", "content": r1.message.content}
    turn2 = turn1 + [reply, {"role": "user", "content": "Another?"}]
    r2 = c.chat(model="demo", messages=turn2, think=False, options=opts)
    n2, shared = expected_reuse(m, turn1, reply, turn2, thinking=False)
    assert r1.prompt_eval_count == len(prompt_ids(m, turn1, thinking=False))
    assert r2.prompt_eval_count == n2 - shared


# ---- model listing ----------------------------------------------------------------------------------------

def test_tags_show_ps_version(server):
    import gguf

    m = server["model"]
    reader = gguf.GGUFReader(str(m.path))
    size = sum(int(t.n_bytes) for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    c = client(server)
    (entry,) = c.list().models
    assert entry.model == server["engine"].model_name and entry.size == size
    assert entry.details.format == "gguf" and entry.details.family == "qwen35"
    info = c.show(entry.model)
    assert info.modelinfo["general.architecture"] == "qwen35"
    assert info.modelinfo["general.parameter_count"] == n_params
    assert info.modelinfo["qwen35.context_length"] == reader.fields["qwen35.context_length"].contents()
    assert {"completion", "tools", "thinking"} <= set(info.capabilities)
    assert info.template == reader.fields["tokenizer.chat_template"].contents()
    (running,) = c.ps().models
    assert running.model == entry.model and running.context_length == m.n_ctx
    v = requests.get(server["url"] + "/api/version", timeout=30).json()["version"]
    assert [int(x) for x in v.split(".")] >= [0, 9, 0]


# ---- auth and errors in ollama's shape --------------------------------------------------------------------

def test_auth(server):
    with pytest.raises(ollama.ResponseError) as e:
        client(server, key="wrong").chat(model="demo", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401 and "API key" in e.value.error
    assert requests.get(server["url"] + "/api/tags", timeout=30).status_code == 401
    assert requests.get(server["url"] + "/api/version", timeout=30).status_code == 200   # like /health


@pytest.mark.parametrize("path,body,needle", [
    ("/api/chat", {"model": "d"}, "messages"),
    ("/api/chat", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "think": "maybe"}, "think"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "options": {"num_predict": "lots"}}, "num_predict"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "options": {"temperature": 7}},
     "options.temperature"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ("/api/generate", {"prompt": "x", "context": [1, 2, 3]}, "context"),
    ("/api/generate", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/api/generate", {"prompt": 5}, "prompt"),
])
def test_bad_requests(server, path, body, needle):
    r = requests.post(server["url"] + path, json=dict(body, stream=body.get("stream", False)), timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and needle in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as e:
        client(server)._request_raw("POST", path, json=body)
    assert e.value.status_code == 400 and needle in e.value.error


def test_malformed_body(server):
    for raw in (b"{nope", b"[]", b""):
        r = requests.post(server["url"] + "/api/chat", data=raw, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 400 and isinstance(r.json()["error"], str)
