"""`pyqwen serve` start and stop (issue 14, item 6): the port is bound before the model loads and /health
says "loading" meanwhile; a taken port fails before any loading; a request too large for the context is
refused before tokenizing; SIGINT mid-stream ends the client's stream with an error event and [DONE]
and the process exits cleanly; an Engine never shut down does not abort the interpreter at exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pyqwen

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def model():
    return pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=256)


def _wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_health_says_loading_until_the_engine_is_ready(model):
    from pyqwen.server.cli import _build
    from pyqwen.server.startup import StagedServer, bind

    release = threading.Event()

    def load():
        release.wait(60)
        return _build(model, None, 64, "m", 8)

    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    staged = StagedServer(sock, load, log_level="warning")
    t = threading.Thread(target=staged.run, daemon=True)
    t.start()
    try:
        _wait(lambda: staged.server.started)
        r = requests.get(url + "/health", timeout=30)
        assert (r.status_code, r.json()) == (503, {"status": "loading"})
        r = requests.post(url + "/v1/chat/completions", json={"messages": []}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        release.set()
        _wait(lambda: staged.engine is not None)
        r = requests.get(url + "/health", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"] == "m"
    finally:
        release.set()
        staged.stop()
        t.join(30)
        if staged.engine is not None:
            staged.engine.shutdown()
    assert not t.is_alive()


def test_a_taken_port_fails_before_loading(capsys, monkeypatch, model):
    from pyqwen.cli import main
    from pyqwen.model import Model

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the port was bound")

    monkeypatch.setattr(Model, "load", must_not_load)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        rc = main(["serve", "--port", str(s.getsockname()[1]), "-m", str(model.path)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot listen on 127.0.0.1" in err and "Traceback" not in err, err


def test_text_too_long_for_the_context_is_refused_before_tokenizing(model):
    """A body far beyond the context is refused by its size, without rendering or tokenizing it."""
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import serve_in_thread

    engine = Engine(model, cache_ram_mib=64)
    calls = []
    real_tokenize = model.tokenize
    # The longest token piece, read from the GGUF vocabulary itself: no text longer than n_ctx of them fits.
    longest = max(len(t) for t in model.metadata["tokenizer.ggml.tokens"])
    n_chars = model.n_ctx * longest + 1000
    try:
        model.tokenize = lambda text, *a, **k: calls.append(len(text)) or real_tokenize(text, *a, **k)
        with serve_in_thread(create_app(engine)) as url:
            big = {"messages": [{"role": "user", "content": "x" * n_chars}], "max_tokens": 1}
            r = requests.post(url + "/v1/chat/completions", json=big, timeout=60)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "context_length_exceeded" and "characters" in err["message"], err
            assert not any(n >= n_chars for n in calls), "the oversized text was tokenized"
            r = requests.post(url + "/v1/completions", json={"prompt": "y" * n_chars, "max_tokens": 1}, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
            assert requests.get(url + "/health", timeout=30).status_code == 200
            # A prompt that fits still works.
            r = requests.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=60)
            assert r.status_code == 200, r.text
    finally:
        model.tokenize = real_tokenize
        engine.shutdown()


# The server of the SIGINT test: the real `pyqwen serve` start-up (bind, StagedServer, CleanServer with
# uvicorn's signal handlers in the main thread) with the test-only Script sampler, so that the reply is
# long enough to be interrupted (the tiny demo model may end a turn early).
_SERVE_SCRIPT = textwrap.dedent("""
    import sys
    import pyqwen
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.startup import StagedServer, bind
    from pyqwen.server.testing import Script

    model = pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=4096)
    script = Script(model)
    script.push(" word" * 3000)

    def load():
        engine = Engine(model, sampler_factory=script.factory, cache_ram_mib=64)
        return create_app(engine), engine

    sock = bind("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    engine = StagedServer(sock, load, log_level="warning").run()
    engine.shutdown()
    print("clean exit", flush=True)
""")


def test_sigint_mid_stream_ends_the_stream_and_the_process_cleanly():
    p = subprocess.Popen([sys.executable, "-P", "-c", _SERVE_SCRIPT], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: requests.get(url + "/health", timeout=30).status_code == 200)
        r = requests.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 3000, "stream": True},
                          stream=True, timeout=120)
        events = []
        for line in r.iter_lines():
            if not line:
                continue
            events.append(line.decode())
            if len(events) == 5:
                p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "clean exit" in out and "Traceback" not in err, err
    assert events[-1] == "data: [DONE]", events[-3:]
    last = json.loads(events[-2][len("data: "):])
    assert last["error"]["code"] == "shutting_down", last
    assert 5 <= len(events) < 3000


_EXIT_SCRIPT = textwrap.dedent("""
    import asyncio, time
    import pyqwen
    from pyqwen.server.engine import Engine
    from pyqwen.server.protocol import parse_completion
    from pyqwen.server.testing import Script

    model = pyqwen.Model.load(kv_type="f32", threads=2, n_ctx=2048)
    script = Script(model)
    script.push(" word" * 1900)          # a reply far longer than the half second below
    engine = Engine(model, sampler_factory=script.factory, cache_ram_mib=64)
    loop = asyncio.new_event_loop()
    req = parse_completion({"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0}, model.n_ctx,
                           model.n_vocab)
    engine.submit(engine.prepare_completion(req, loop, asyncio.Queue()))
    time.sleep(0.5)          # the worker is inside the forward pass
    print("exiting", flush=True)
""")


def test_an_engine_never_shut_down_does_not_abort_the_interpreter():
    for _ in range(2):
        r = subprocess.run([sys.executable, "-P", "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONFAULTHANDLER="1"))
        assert r.returncode == 0 and "exiting" in r.stdout, r.stderr
        assert "terminate called" not in r.stderr and "Fatal Python error" not in r.stderr, r.stderr
