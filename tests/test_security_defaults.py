"""Security defaults of `pyqwen serve`, stated and tested:
- it binds to loopback (127.0.0.1) unless told otherwise;
- the API key is compared in constant time (hmac.compare_digest), wrong or missing keys get 401;
- request bodies over the limit get 413 before they are parsed; malformed JSON gets 400;
- the `model` field of a request is a label only: no path in it reaches the file system.
"""

from __future__ import annotations

import argparse
import builtins
import hmac
import json
import os

import pytest

import pyqwen

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

KEY = "s3cret-key"


def test_loopback_bind_by_default():
    from pyqwen.server import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert p.parse_args([]).host == "127.0.0.1"
    import inspect

    assert inspect.signature(cli.serve).parameters["host"].default == "127.0.0.1"


@pytest.fixture(scope="module")
def server():
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import serve_in_thread

    m = pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=256)
    engine = Engine(m, cache_ram_mib=32)
    with serve_in_thread(create_app(engine, api_key=KEY, max_body=64 * 1024)) as url:
        yield url
    engine.shutdown()


def _post(url, body=None, raw=None, key=KEY):
    h = {"Content-Type": "application/json"}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    return requests.post(url + "/v1/chat/completions", data=raw if raw is not None else json.dumps(body),
                         headers=h, timeout=120)


def test_api_key_constant_time_comparison(server, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert _post(server, body, key="wrong").status_code == 401
    assert _post(server, body, key=None).status_code == 401
    assert _post(server, body, key=KEY[:-1]).status_code == 401
    assert calls and all(KEY.encode() in c for c in calls)
    assert _post(server, body).status_code == 200


def test_oversized_and_malformed_bodies(server):
    big = json.dumps({"model": "x", "messages": [{"role": "user", "content": "a" * 100_000}]})
    assert _post(server, raw=big).status_code == 413
    assert _post(server, raw="{not json").status_code == 400
    assert _post(server, raw=json.dumps([1, 2])).status_code == 400


def test_model_field_never_reaches_the_file_system(server, monkeypatch, tmp_path):
    probe = tmp_path / "probe.gguf"
    opened = []
    real_open, real_stat = builtins.open, os.stat

    def spy_open(f, *a, **k):
        opened.append(str(f))
        return real_open(f, *a, **k)

    def spy_stat(f, *a, **k):
        opened.append(str(f))
        return real_stat(f, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "stat", spy_stat)
    for name in (str(probe), "/etc/passwd", "../../../../etc/shadow", "hf://evil/repo:Q4_K_M"):
        r = _post(server, {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert r.status_code == 200, r.text
    assert not [p for p in opened if "probe.gguf" in p or "passwd" in p or "shadow" in p or "evil" in p]
