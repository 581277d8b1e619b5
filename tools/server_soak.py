#!/usr/bin/env python3
"""Bounded loopback soak of the OpenAI-compatible server: it stops by itself after --requests requests.

The server runs in this process (pyqwen.server.testing.serve_in_thread, 127.0.0.1, an ephemeral port) on
the demo model unless --model is given. --concurrency client threads send a mix of
  chat_stream     streaming chat, some hung up after a few chunks (random disconnects)
  chat            non-streaming chat, continuing a session (X-Session-Id) with the reply appended
  retry           the same session's last request again (a retried turn: the cache must restore)
  completion      /v1/completions
  malformed       broken JSON / wrong types                        -> must get 400
  oversized       a body over the server's limit                   -> must get 413
and checks afterwards: every valid request answered 200 (hung-up streams excepted), every bad one with
its 4xx; /metrics' requests_total equals what the clients sent; RSS at start (after warm-up) and end;
p50/p99 time to first streamed token under load. Exit status 1 when a check fails.
Usage: python tools/server_soak.py --requests 3000 --concurrency 64 --report soak.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import Counter

KINDS = [("chat_stream", 40), ("chat", 25), ("retry", 10), ("completion", 10), ("malformed", 10), ("oversized", 5)]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(n_requests: int, concurrency: int, *, model_path=None, seed: int = 0, max_tokens: int = 8,
        max_body: int = 256 * 1024) -> dict:
    import requests

    import pyqwen
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import serve_in_thread

    model = pyqwen.Model.load(model_path, kv_type="f16", threads=None, n_ctx=1024)
    engine = Engine(model, cache_ram_mib=256, max_queue=4 * concurrency)
    results: list[dict] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))
    next_lock = threading.Lock()

    with serve_in_thread(create_app(engine, max_body=max_body)) as url:
        def one(kind: str, rng: random.Random, session: dict) -> dict:
            h = {"Content-Type": "application/json", "X-Session-Id": session["id"]}
            t0 = time.monotonic()
            if kind == "malformed":
                raw = rng.choice(["{", "[]", '{"messages": 5}', '{"messages": [{"role": "user"}]}', "\xff",
                                  '{"model": "x", "messages": [], "max_tokens": -1}'])
                r = requests.post(url + "/v1/chat/completions", data=raw.encode("utf-8", "surrogateescape"),
                                  headers=h, timeout=300)
                return {"kind": kind, "status": r.status_code, "ok": r.status_code == 400}
            if kind == "oversized":
                body = json.dumps({"messages": [{"role": "user", "content": "x" * (max_body + 10)}]})
                r = requests.post(url + "/v1/chat/completions", data=body, headers=h, timeout=300)
                return {"kind": kind, "status": r.status_code, "ok": r.status_code == 413}
            if kind == "completion":
                r = requests.post(url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": max_tokens,
                                                                "seed": rng.randrange(1000)}, timeout=300)
                return {"kind": kind, "status": r.status_code, "ok": r.status_code == 200}
            if kind == "retry" and session["last"] is not None:
                body = session["last"]
            else:
                msgs = session["messages"] + [{"role": "user", "content": f"question {rng.randrange(10**6)}"}]
                body = {"messages": msgs, "max_tokens": max_tokens, "temperature": 0.7, "seed": rng.randrange(1000),
                        "chat_template_kwargs": {"enable_thinking": False}}
            if kind == "chat_stream":
                body = {**body, "stream": True}
                hang_up = rng.random() < 0.3
                with requests.post(url + "/v1/chat/completions", json=body, headers=h, stream=True, timeout=300) as r:
                    ttft, n = None, 0
                    if r.status_code != 200:
                        return {"kind": kind, "status": r.status_code, "ok": False}
                    for line in r.iter_lines():
                        if line.startswith(b"data: {") and ttft is None:
                            ttft = time.monotonic() - t0
                        n += 1
                        if hang_up and n >= 2:
                            break  # the client disconnects mid-stream
                return {"kind": kind, "status": 200, "ok": True, "ttft": ttft, "hung_up": hang_up}
            r = requests.post(url + "/v1/chat/completions", json=body, headers=h, timeout=300)
            if r.status_code == 200:
                session["last"] = body
                reply = r.json()["choices"][0]["message"].get("content") or ""
                session["messages"] = (body["messages"] + [{"role": "assistant", "content": reply}])[-8:]
            return {"kind": kind, "status": r.status_code, "ok": r.status_code == 200}

        def client(i: int):
            rng = random.Random(seed * 1000 + i)
            session = {"id": f"soak-{i}", "messages": [], "last": None}
            names, weights = zip(*KINDS)
            while True:
                with next_lock:
                    k = next(counter, None)
                if k is None:
                    return
                kind = rng.choices(names, weights)[0]
                try:
                    res = one(kind, rng, session)
                except Exception as e:  # noqa: BLE001 -- a client-side failure is a finding
                    res = {"kind": kind, "status": None, "ok": False, "error": f"{type(e).__name__}: {e}"}
                with lock:
                    results.append(res)

        # warm-up, then the RSS baseline
        requests.post(url + "/v1/completions", json={"prompt": "warm", "max_tokens": 2}, timeout=300)
        rss0 = rss_mib()
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        time.sleep(1.0)
        rss1 = rss_mib()
        metrics = requests.get(url + "/metrics", timeout=60).text
    engine.shutdown()

    served = sum(float(v) for v in re.findall(r'^pyqwen_requests_total\{[^}]*endpoint="/v1/(?:chat/)?completions"[^}]*\} (\S+)',
                                              metrics, re.M))
    ttfts = sorted(r["ttft"] for r in results if r.get("ttft") is not None)

    def pct(p):
        return round(ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))], 3) if ttfts else None

    by_kind = Counter(r["kind"] for r in results)
    bad = [r for r in results if not r["ok"]]
    return {
        "requests": len(results), "concurrency": concurrency, "seconds": round(seconds, 1),
        "by_kind": dict(by_kind), "failures": len(bad), "failures_by_kind": dict(Counter(r["kind"] for r in bad)),
        "failure_examples": bad[:5], "status_counts": dict(Counter(str(r["status"]) for r in results)),
        "metrics_requests_total": served, "rss_mib_start": round(rss0, 1), "rss_mib_end": round(rss1, 1),
        "ttft_p50_s": pct(0.50), "ttft_p99_s": pct(0.99),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report")
    a = ap.parse_args(argv)
    rep = run(a.requests, a.concurrency, model_path=a.model, seed=a.seed)
    text = json.dumps(rep, indent=1)
    print(text)
    if a.report:
        open(a.report, "w").write(text)
    return 1 if rep["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
