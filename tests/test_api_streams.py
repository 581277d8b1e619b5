"""Streams of the agent APIs (Anthropic Messages, OpenAI Responses, ollama) that end early, on a live server
with the demo model: a client that goes away stops its generation (the worker moves on to the next
request), and a server shutdown ends every stream, running or queued, with the API's own error event."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agent_api_util import API_KEY, live_server

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")
anthropic = pytest.importorskip("anthropic")
ollama = pytest.importorskip("ollama")

LONG = 900      # tokens: far more than a test waits for

REQUESTS = {
    "anthropic": ("/v1/messages", {"model": "d", "max_tokens": LONG, "stream": True, "temperature": 0,
                                   "messages": [{"role": "user", "content": "Go on."}]}),
    "responses": ("/v1/responses", {"model": "d", "max_output_tokens": LONG, "stream": True, "temperature": 0,
                                    "input": "Go on."}),
    "ollama": ("/api/chat", {"model": "d", "messages": [{"role": "user", "content": "Go on."}],
                             "options": {"num_predict": LONG, "temperature": 0}}),
}


def open_stream(url, name):
    path, body = REQUESTS[name]
    r = requests.post(url + path, json=body, headers={"x-api-key": API_KEY, "X-Session-Id": f"streams-{name}"},
                      stream=True, timeout=120)
    assert r.status_code == 200
    return r


def wait_for(cond, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_client_disconnect_stops_generation():
    with live_server() as s:
        eng = s["engine"]
        for n, name in enumerate(REQUESTS, 1):
            before = eng.metrics.generated_tokens
            r = open_stream(s["url"], name)
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]           # the generation is under way
            assert any(got)
            r.close()
            wait_for(lambda: eng.metrics.cancelled == n and eng.processing == 0, f"{name}: the generation to stop")
            assert eng.metrics.generated_tokens - before < LONG, name


def test_shutdown_ends_every_stream_with_its_error_event():
    with live_server() as s:
        url, eng = s["url"], s["engine"]
        out: dict[str, list[str]] = {}
        first = threading.Event()

        def consume(name):
            lines = []
            for line in open_stream(url, name).iter_lines(decode_unicode=True):
                if line:
                    lines.append(line)
                    first.set()
            out[name] = lines

        threads = [threading.Thread(target=consume, args=(n,)) for n in REQUESTS]
        threads[0].start()
        assert first.wait(60)
        for t in threads[1:]:                           # these two wait in the queue
            t.start()
        wait_for(lambda: eng.queue_depth == 2, "the queued requests")
        eng.stop_all("the server is shutting down")
        for t in threads:
            t.join(60)
        # Anthropic: an `error` event in its error shape.
        a = out["anthropic"]
        assert a[-2] == "event: error"
        assert json.loads(a[-1][6:]) == {"type": "error", "error": {"type": "overloaded_error",
                                                                     "message": "the server is shutting down"}}
        # Responses: `error` then `response.failed`, numbered in sequence.
        data = [json.loads(x[6:]) for x in out["responses"] if x.startswith("data: ")]
        assert [d["type"] for d in data[-2:]] == ["error", "response.failed"]
        assert data[-1]["response"]["status"] == "failed" and data[-1]["response"]["error"]["code"] == "shutting_down"
        assert [d["sequence_number"] for d in data] == list(range(len(data)))
        # ollama: a last line {"error": ...}, which its client raises.
        assert json.loads(out["ollama"][-1]) == {"error": "the server is shutting down"}
        with pytest.raises(ollama.ResponseError, match="shutting down"):
            ollama.Client(host=url, headers={"Authorization": f"Bearer {API_KEY}"}).chat(
                model="d", messages=[{"role": "user", "content": "x"}])
