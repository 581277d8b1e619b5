"""The OpenAI-compatible server, live on loopback with the demo model, driven by the real `openai` client.

The demo model is tiny (trained on Python source only), so tests that need a particular reply (reasoning, tool calls, stop
strings at a known place) queue it with the TEST-ONLY `Script` hook (pyqwen.server.testing): the sampler
then emits that text's tokens. Prompt rendering, prefill, streaming, parsing and sessions all run for
real; everything else uses the model's own (greedy or seeded) sampling.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import numpy as np
import pytest

from pq_testutil import scripted_server

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

API_KEY = "test-key-123"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
        "required": ["city"]}}}]


@pytest.fixture(scope="module")
def server():
    with scripted_server(api_key=API_KEY, n_ctx=1024) as s:
        yield dict(s, client=openai.OpenAI(base_url=s["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120))


def post(server, path, body=None, *, raw=None, headers=None, key=API_KEY, **kw):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    if raw is not None:
        h.setdefault("Content-Type", "application/json")
        return requests.post(server["url"] + path, data=raw, headers=h, timeout=120, **kw)
    return requests.post(server["url"] + path, json=body, headers=h, timeout=120, **kw)


def chat(server, **kw):
    kw.setdefault("model", "demo")
    kw.setdefault("messages", [{"role": "user", "content": "Hello"}])
    return server["client"].chat.completions.create(**kw)


def collect_stream(stream):
    reasoning, content, calls, finish, usage, n = "", "", {}, None, None, 0
    for ch in stream:
        n += 1
        if ch.usage is not None:
            usage = ch.usage
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        reasoning += getattr(d, "reasoning_content", None) or ""
        content += d.content or ""
        for tc in d.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = tc.id or c["id"]
            c["name"] += tc.function.name or ""
            c["arguments"] += tc.function.arguments or ""
        if ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    return {"reasoning": reasoning, "content": content, "calls": [calls[i] for i in sorted(calls)],
            "finish": finish, "usage": usage, "chunks": n}


# ---- basics --------------------------------------------------------------------------------------------

def test_models_health_metrics(server):
    models = server["client"].models.list()
    assert len(models.data) == 1 and models.data[0].id
    r = requests.get(server["url"] + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = requests.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("pyqwen_queue_depth", "pyqwen_tokens_generated_total", "pyqwen_prompt_tokens_cached_total",
                 "pyqwen_cache_hits_total", "pyqwen_decode_tokens_per_second", "pyqwen_prompt_tokens_per_second"):
        assert f"\n{name} " in r.text or f"\n{name}{{" in r.text, name


def test_auth(server):
    assert requests.get(server["url"] + "/v1/models", timeout=10).status_code == 401
    r = requests.get(server["url"] + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert post(server, "/v1/chat/completions", {"messages": []}, key=None).status_code == 401
    assert requests.get(server["url"] + "/metrics", timeout=10).status_code == 401
    assert requests.get(server["url"] + "/health", timeout=10).status_code == 200
    bad = openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}], max_tokens=2)


def test_chat_non_streaming_and_streaming_agree(server):
    msgs = [{"role": "user", "content": "Tell me something."}]
    r = chat(server, messages=msgs, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    s = collect_stream(chat(server, messages=msgs, max_tokens=24, temperature=0, stream=True,
                            stream_options={"include_usage": True}))
    assert s["finish"] == r.choices[0].finish_reason
    assert s["content"] == (r.choices[0].message.content or "")
    assert s["reasoning"] == (getattr(r.choices[0].message, "reasoning_content", None) or "")
    assert s["usage"].completion_tokens == r.usage.completion_tokens
    # Same prompt again without a session key: the anonymous session reuses the prompt.
    assert s["usage"].prompt_tokens_details.cached_tokens > 0


def test_reasoning_split(server):
    server["script"].push("First I think.\nStill thinking.\n</think>\n\nThe answer is 42.")
    r = chat(server, max_tokens=100)
    msg = r.choices[0].message
    assert msg.reasoning_content == "First I think.\nStill thinking."
    assert msg.content == "The answer is 42."
    assert r.choices[0].finish_reason == "stop"
    server["script"].push("First I think.\nStill thinking.\n</think>\n\nThe answer is 42.")
    s = collect_stream(chat(server, max_tokens=100, stream=True))
    assert (s["reasoning"], s["content"], s["finish"]) == (msg.reasoning_content, msg.content, "stop")
    # enable_thinking=false: the prompt closes the think block itself, everything is content.
    server["script"].push("Only content here.")
    r = chat(server, max_tokens=100, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content == "Only content here."
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    prompt_ids, _ = server["script"].records[-1]
    assert server["model"].detokenize(prompt_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tool_call_round_trip(server):
    script, m = server["script"], server["model"]
    msgs = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    script.push("The user wants weather.\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n"
                "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
                "<parameter=metric>\ntrue\n</parameter>\n</function>\n</tool_call>")
    r = chat(server, messages=msgs, tools=TOOLS, max_tokens=200, user="tool-user")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content == "Let me check."
    assert c.message.reasoning_content == "The user wants weather."
    (tc,) = c.message.tool_calls
    assert tc.type == "function" and tc.function.name == "get_weather" and tc.id
    assert json.loads(tc.function.arguments) == {"city": "Paris", "days": 3, "metric": True}
    # Send the call and its result back; the final answer comes from the same session.
    msgs += [{"role": "assistant", "content": c.message.content, "reasoning_content": c.message.reasoning_content,
              "tool_calls": [tc.model_dump(exclude_none=True)]},
             {"role": "tool", "tool_call_id": tc.id, "content": "Sunny, 24C"}]
    script.push("Got it.\n</think>\n\nIt will be sunny and 24C in Paris.")
    r2 = chat(server, messages=msgs, tools=TOOLS, max_tokens=200, user="tool-user")
    assert r2.choices[0].message.content == "It will be sunny and 24C in Paris."
    assert r2.choices[0].finish_reason == "stop"
    prompt = m.detokenize(script.records[-1][0])
    assert "<tool_response>\nSunny, 24C\n</tool_response>" in prompt
    assert "<parameter=days>\n3\n</parameter>" in prompt
    # The whole first exchange was reused: only the tool result and the new header were prefilled.
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached > r.usage.prompt_tokens + r.usage.completion_tokens - 1
    new = m.detokenize(script.records[-1][0][cached:])
    assert new.startswith("<|im_start|>user\n<tool_response>"), new


def test_tool_calls_streaming(server):
    server["script"].push("Two cities.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n"
                          "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n"
                          "<parameter=city>\nOslo\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n"
                          "</tool_call>")
    s = collect_stream(chat(server, tools=TOOLS, max_tokens=200, stream=True))
    assert s["finish"] == "tool_calls"
    assert s["content"] == ""  # no XML leaks into content
    assert [(c["name"], json.loads(c["arguments"])) for c in s["calls"]] == [
        ("get_weather", {"city": "Rome"}), ("get_weather", {"city": "Oslo", "days": 2})]
    assert all(c["id"] for c in s["calls"])
    # tool_choice "none": tools are left out of the prompt and nothing is parsed.
    server["script"].push("x\n</think>\n\n<tool_call>\n<function=get_weather>\n</function>\n</tool_call>")
    r = chat(server, tools=TOOLS, tool_choice="none", max_tokens=100)
    assert r.choices[0].message.tool_calls is None and "<tool_call>" in r.choices[0].message.content
    assert "# Tools" not in server["model"].detokenize(server["script"].records[-1][0])


def test_malformed_tool_call_is_text(server):
    server["script"].push("hm\n</think>\n\nSure <tool_call>\n<function=get_weather>\n<parameter=city>\nX")
    r = chat(server, tools=TOOLS, max_tokens=200)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "Sure <tool_call>\n<function=get_weather>\n<parameter=city>\nX"
    assert r.choices[0].finish_reason == "stop"


def test_stop_strings(server):
    nothink = {"chat_template_kwargs": {"enable_thinking": False}}
    kw = dict(max_tokens=100, extra_body=nothink)
    server["script"].push("alpha beta STOP gamma delta")
    r = chat(server, stop=["STOP"], **kw)
    assert r.choices[0].message.content == "alpha beta " and r.choices[0].finish_reason == "stop"
    server["script"].push("alpha beta STOP gamma delta")
    s = collect_stream(chat(server, stop=["nothing", "gam"], stream=True, **kw))
    assert s["content"] == "alpha beta STOP " and s["finish"] == "stop"
    # Greedy model text: stopping at a piece of what it would say truncates exactly there.
    base = chat(server, max_tokens=20, temperature=0, extra_body=nothink).choices[0].message.content
    if len(base) > 6:
        stop = base[3:6]
        r = chat(server, max_tokens=20, temperature=0, stop=stop, extra_body=nothink)
        assert r.choices[0].message.content == base[:base.index(stop)]


def test_seed_reproducibility(server):
    kw = dict(max_tokens=16, temperature=1.0, top_p=1.0, extra_body={"top_k": 0, "min_p": 0.0},
              messages=[{"role": "user", "content": "Random please"}])
    a = chat(server, seed=1234, **kw)
    b = chat(server, seed=1234, **kw)
    assert a.choices[0].message == b.choices[0].message
    others = {str(chat(server, seed=s, **kw).choices[0].message) for s in (1, 2, 3)}
    assert len(others | {str(a.choices[0].message)}) > 1


def test_completions_endpoint(server):
    c = server["client"]
    r = c.completions.create(model="demo", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    ref = server["model"].generate("The capital of France is", max_tokens=12, temperature=0)
    assert r.choices[0].text == "".join(ch.text for ch in ref)
    text = ""
    for ch in c.completions.create(model="demo", prompt="The capital of France is", max_tokens=12,
                                   temperature=0, stream=True):
        if ch.choices:
            text += ch.choices[0].text
    assert text == r.choices[0].text
    ids = server["model"].tokenize("Hello")
    r = c.completions.create(model="demo", prompt=ids, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    assert c.completions.create(model="demo", prompt="x", temperature=0).usage.completion_tokens <= 16


def test_session_header_routes_to_cached_state(server):
    msgs = [{"role": "system", "content": "S" * 50}, {"role": "user", "content": "one"}]
    r1 = chat(server, messages=msgs, max_tokens=4, temperature=0, extra_headers={"X-Session-Id": "hdr-1"})
    msgs2 = msgs + [{"role": "assistant", "content": r1.choices[0].message.content or "",
                     "reasoning_content": getattr(r1.choices[0].message, "reasoning_content", None) or ""},
                    {"role": "user", "content": "two"}]
    r2 = chat(server, messages=msgs2, max_tokens=4, temperature=0, extra_headers={"X-Session-Id": "hdr-1"})
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 2
    r3 = chat(server, messages=msgs2, max_tokens=4, temperature=0, extra_headers={"X-Session-Id": "hdr-2"})
    assert r3.usage.prompt_tokens_details.cached_tokens == 0
    assert r3.choices[0].message == r2.choices[0].message


# ---- concurrency and disconnects ---------------------------------------------------------------------

def test_concurrent_streams_with_disconnects(server):
    assert not server["script"].queue
    engine, m = server["engine"], server["model"]
    cancelled0 = engine.metrics.cancelled
    n_clients = 32
    health, depth = [], []
    stop_polling = threading.Event()

    def poll():
        while not stop_polling.is_set():
            health.append(requests.get(server["url"] + "/health", timeout=30).status_code)
            depth.append(engine.queue_depth)
            time.sleep(0.05)

    def stay(i):
        s = collect_stream(chat(server, messages=[{"role": "user", "content": f"client {i}"}], max_tokens=12,
                                temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True},
                                extra_body={"session_id": f"c{i}"}))
        return s

    def leave(i):
        r = post(server, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": f"client {i} leaves"}], "max_tokens": 900,
            "stream": True, "session_id": f"c{i}", "temperature": 0.7, "seed": i}, stream=True)
        assert r.status_code == 200
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith(b"data: "):
                got += 1
                if got >= 3:
                    break
        r.close()  # hang up mid-stream
        return got

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with cf.ThreadPoolExecutor(max_workers=n_clients) as ex:
        futs = {i: ex.submit(leave if i % 4 == 3 else stay, i) for i in range(n_clients)}
        results = {i: f.result(timeout=300) for i, f in futs.items()}
    stop_polling.set()
    poller.join(10)
    for i, s in results.items():
        if i % 4 == 3:
            continue
        assert s["finish"] in ("stop", "length"), (i, s)
        assert s["usage"] is not None  # (0 completion tokens is possible: end-of-turn drawn first)
        if s["finish"] == "length":
            assert s["usage"].completion_tokens == 12
    assert health and all(h == 200 for h in health)
    assert max(depth) > 0  # requests really queued behind each other
    # Wait until the worker has drained the cancelled ones; generations of the leavers were cut short.
    deadline = time.time() + 60
    while (engine.queue_depth or engine.processing) and time.time() < deadline:
        time.sleep(0.05)
    assert engine.metrics.cancelled - cancelled0 >= 1
    assert requests.get(server["url"] + "/health", timeout=10).json()["status"] == "ok"
    # A session whose client hung up is consistent: its next prompt gives exactly a fresh prefill's logits.
    # (Done on a quiet server: under the 32 clients above, a leaver's idle state may rightly have been
    # evicted by the LRU budget, which would make the reuse check vacuous.)
    r = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "client dc leaves"}], "max_tokens": 900, "stream": True,
        "session_id": "dc", "temperature": 0.7, "seed": 3}, stream=True)
    got = 0
    for line in r.iter_lines():
        if line.startswith(b"data: "):
            got += 1
            if got >= 3:
                break
    r.close()
    deadline = time.time() + 60
    while (engine.queue_depth or engine.processing) and time.time() < deadline:
        time.sleep(0.05)
    msgs = [{"role": "user", "content": "client dc leaves"}]
    r = chat(server, messages=msgs, max_tokens=2, temperature=0, extra_body={"session_id": "dc"})
    prompt_ids, sampler = server["script"].records[-1]
    assert r.usage.prompt_tokens_details.cached_tokens > 0
    fresh = m.forward(m.new_state(), prompt_ids)
    assert np.array_equal(sampler.logits[0], fresh)


# ---- bad requests ------------------------------------------------------------------------------------------

def err(r, status, param=None, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,param", [
    ({"messages": USER, "max_tokens": 10 ** 9}, "max_tokens"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_tokens": "10"}, "max_tokens"),
    ({"messages": USER, "max_tokens": True}, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": -5}, "max_completion_tokens"),
    ({"messages": USER, "temperature": -0.5}, "temperature"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "top_k": -7}, "top_k"),
    ({"messages": USER, "min_p": 1.5}, "min_p"),
    ({"messages": USER, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": USER, "seed": 1.5}, "seed"),
    ({"messages": USER, "stop": [1, 2]}, "stop"),
    ({"messages": USER, "stop": ["s"] * 100}, "stop"),
    ({"messages": USER, "n": 3}, "n"),
    ({"messages": USER, "stream": "yes"}, "stream"),
    ({"messages": USER, "stream_options": "usage"}, "stream_options"),
    ({"messages": USER, "logprobs": "yes"}, "logprobs"),
    ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "foo"}}}},
     "response_format.json_schema.schema"),
    ({"messages": USER, "grammar": 'root ::= ("yes" | '}, "grammar"),
    ({"messages": USER, "chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking"),
    ({"messages": USER, "chat_template_kwargs": []}, "chat_template_kwargs"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": USER + [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": "no user"}]}, "messages"),
    ({"messages": USER, "tools": {"type": "function"}}, "tools"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools[0].function.parameters"),
    ({"messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": 5}}}}]},
     "tools[0].function.parameters.properties"),
    ({"messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"messages": USER, "tool_choice": "sometimes"}, "tool_choice"),
])
def test_bad_chat_requests(server, body, param):
    err(post(server, "/v1/chat/completions", body), 400, param)


def test_hostile_bodies(server):
    url = "/v1/chat/completions"
    err(post(server, url, raw=b"{not json"), 400, code="invalid_json")
    err(post(server, url, raw=b""), 400, code="invalid_json")
    err(post(server, url, raw=b"[1, 2, 3]"), 400, code="invalid_json")
    err(post(server, url, raw=b"\xff\xfe garbage"), 400, code="invalid_json")
    err(post(server, url, raw=b"[" * 100000 + b"]" * 100000), 400, code="invalid_json")
    deep = {"messages": USER, "metadata": json.loads("[" * 200 + "]" * 200)}
    err(post(server, url, deep), 400, code="invalid_json")
    # A prompt longer than the context window.
    long = [{"role": "user", "content": "word " * 3000}]
    err(post(server, url, {"messages": long, "max_tokens": 4}), 400, code="context_length_exceeded")
    # Oversized body (declared length checked before reading).
    r = post(server, url, raw=b" " * 10, headers={"Content-Length": str(64 * 2 ** 20)})
    assert r.status_code in (400, 413)
    # Unknown fields are ignored; unknown paths and methods get JSON errors.
    r = post(server, url, {"messages": USER, "max_tokens": 2, "metadata": {"a": 1}, "store": False,
                           "parallel_tool_calls": True, "some_future_field": [1, 2]})
    assert r.status_code == 200, r.text
    err(post(server, "/v1/nope", {}), 404)
    assert requests.get(server["url"] + url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).status_code == 405
    # The openai client maps 400s to BadRequestError.
    with pytest.raises(openai.BadRequestError):
        chat(server, temperature=-1)
    assert requests.get(server["url"] + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 10 ** 9]}, "prompt"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "temperature": 9}, "temperature"),
])
def test_bad_completion_requests(server, body, param):
    err(post(server, "/v1/completions", body), 400, param)
