#!/usr/bin/env python3
"""Bounded loopback soak of the OpenAI-compatible server: it stops by itself after --requests requests.

The server runs in this process (pyqwen.server.testing.serve_in_thread, 127.0.0.1, an ephemeral port) on
the demo model unless --model is given. --concurrency client threads send a mix of
  chat_stream     streaming chat, some hung up after a few chunks (random disconnects)
  chat            non-streaming chat, continuing a session (X-Session-Id) with the reply appended
  retry           the same session's last request again (a retried turn: the cache must restore)
  edit            the session's history with an earlier user message changed (the cache must rewind)
  completion      /v1/completions
  malformed       broken JSON / wrong types                        -> must get 400
  oversized       a body over the server's limit                   -> must get 413
and checks afterwards: every valid request answered 200 (hung-up streams excepted), every bad one with
its 4xx; /metrics' requests_total equals what the clients sent, status by status; RSS sampled through
the run with the session cache's size: the cache may grow to its budget (it keeps states and
checkpoints up to --cache-ram by design), the rest may grow once while the first tenth of the requests
warms up threads, allocator arenas and connection pools (the 64 clients live in this process), and must
then stay flat within ALLOWED_SLACK_MIB to the end (anything more is a leak); sessions still cached after the soak continue with greedy replies whose
tokens and logprobs equal a fresh Model.eval of the same prompt (reused states are not stale);
p50/p99 time to first streamed token under load. `--kill-restart` also runs `pyqwen serve` as a
process, SIGKILLs it mid-stream, and checks a restart on the same port is clean and leaves no files.
Exit status 1 when a check fails.
Usage: python tools/server_soak.py --requests 3000 --concurrency 64 --report soak.json [--kill-restart]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import Counter

KINDS = [("chat_stream", 40), ("chat", 25), ("retry", 8), ("edit", 5), ("completion", 8), ("malformed", 9),
         ("oversized", 5)]
ALLOWED_SLACK_MIB = 64.0
REUSE_CHECKS = 8
LOGPROB_ATOL = 2e-3


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(n_requests: int, concurrency: int, *, model_path=None, seed: int = 0, max_tokens: int = 8,
        max_body: int = 256 * 1024, cache_ram_mib: float = 256, reuse_checks: int = REUSE_CHECKS) -> dict:
    import requests

    import pyqwen
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import serve_in_thread

    model = pyqwen.Model.load(model_path, kv_type="f16", threads=None, n_ctx=1024)
    engine = Engine(model, cache_ram_mib=cache_ram_mib, max_queue=4 * concurrency)
    results: list[dict] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))
    next_lock = threading.Lock()
    sessions: list[dict] = []

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
            elif kind == "edit" and len(session["messages"]) >= 2:
                msgs = [dict(m) for m in session["messages"]]
                i = rng.randrange(0, len(msgs) - 1, 2) if msgs[0]["role"] == "user" else 0
                msgs[i]["content"] += f" (edited {rng.randrange(100)})"
                body = {"messages": msgs[:i + 1], "max_tokens": max_tokens, "temperature": 0.7,
                        "seed": rng.randrange(1000), "chat_template_kwargs": {"enable_thinking": False}}
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
            with lock:
                sessions.append(session)
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
                    done[0] += 1

        # warm-up, then the RSS baseline
        requests.post(url + "/v1/completions", json={"prompt": "warm", "max_tokens": 2}, timeout=300)
        rss0 = rss_mib()
        t0 = time.monotonic()
        done = [0]
        samples: list[tuple[float, int, float, float]] = []     # (seconds, requests done, RSS, cache MiB)
        stop = threading.Event()

        def cache_mib() -> float:
            for _ in range(5):     # read while the worker edits the cache: retry a torn read
                try:
                    return round(engine.cache.nbytes / (1 << 20), 1)
                except RuntimeError:
                    time.sleep(0.01)
            return float("nan")

        def sampler():
            while not stop.wait(1.0):
                samples.append((round(time.monotonic() - t0, 1), done[0], round(rss_mib(), 1), cache_mib()))

        threading.Thread(target=sampler, daemon=True).start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        stop.set()
        time.sleep(1.0)
        rss1 = rss_mib()
        cache_info = engine.cache.info()
        reuse = check_reuse(url, model, [s for s in sessions if s["messages"]][:reuse_checks], max_tokens)
        metrics = requests.get(url + "/metrics", timeout=60).text
    engine.shutdown()

    served = sum(float(v) for v in re.findall(r'^pyqwen_requests_total\{[^}]*endpoint="/v1/(?:chat/)?completions"[^}]*\} (\S+)',
                                              metrics, re.M))
    ttfts = sorted(r["ttft"] for r in results if r.get("ttft") is not None)

    def pct(p):
        return round(ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))], 3) if ttfts else None

    by_kind = Counter(r["kind"] for r in results)
    bad = [r for r in results if not r["ok"]]
    # /metrics by status, against what the clients saw (hung-up streams were counted 200 when they began)
    by_status: Counter = Counter()
    for st, v in re.findall(r'^pyqwen_requests_total\{endpoint="/v1/(?:chat/)?completions",status="(\d+)"\} (\S+)',
                            metrics, re.M):
        by_status[st] += float(v)
    client_status = Counter(str(r["status"]) for r in results)
    expected_status = client_status + Counter({"200": 1 + reuse["sessions"]})     # + the warm-up and reuse checks
    half = [x for x in samples if x[1] >= len(results) // 2 and x[3] == x[3]]
    rss_half, cache_half = (half[0][2], half[0][3]) if half else (rss0, 0.0)
    warm = [x for x in samples if x[1] >= len(results) // 10 and x[3] == x[3]]
    rss_warm, cache_warm = (warm[0][2], warm[0][3]) if warm else (rss0, 0.0)
    budget_mib = cache_info["budget_bytes"] / (1 << 20)
    cache_end = round(cache_info["bytes"] / (1 << 20), 1)
    rss = {"rss_mib_start": round(rss0, 1), "rss_mib_half": rss_half, "rss_mib_end": round(rss1, 1),
           "rss_mib_max": max([x[2] for x in samples] + [rss0, rss1]),
           "cache_mib_half": cache_half, "cache_mib_end": cache_end, "cache_budget_mib": round(budget_mib, 1),
           "cache_mib_max": max([x[3] for x in samples if x[3] == x[3]] + [cache_end]),
           # what the first tenth of the run adds outside the cache, once: the clients' and server's threads
           # (64 client threads live in this process), their allocator arenas and connection pools
           "one_time_non_cache_mib": round((rss_warm - cache_warm) - rss0, 1),
           # the memory that is not the cache's, from a tenth (and from half) of the run to the end: a leak
           # grows it with every request; it must stay flat within ALLOWED_SLACK_MIB
           "non_cache_growth_after_warmup_mib": round((rss1 - cache_end) - (rss_warm - cache_warm), 1),
           "non_cache_growth_second_half_mib": round((rss1 - cache_end) - (rss_half - cache_half), 1)}
    rss_ok = (rss["non_cache_growth_after_warmup_mib"] <= ALLOWED_SLACK_MIB
              and rss["non_cache_growth_second_half_mib"] <= ALLOWED_SLACK_MIB)
    checks = {
        "every_request_answered": not bad,
        # every request the clients sent, the warm-up and the reuse checks; the statuses sum to the total
        "metrics_add_up": served == len(results) + 1 + reuse["sessions"] == sum(by_status.values())
        and {k: int(v) for k, v in by_status.items()} == dict(expected_status),
        "rss_flat": rss_ok,
        "reused_states_fresh": reuse["ok"],
    }
    return {
        "requests": len(results), "concurrency": concurrency, "seconds": round(seconds, 1),
        "by_kind": dict(by_kind), "failures": len(bad), "failures_by_kind": dict(Counter(r["kind"] for r in bad)),
        "failure_examples": bad[:5], "status_counts": dict(client_status),
        "metrics_requests_total": served, "metrics_by_status": {k: int(v) for k, v in sorted(by_status.items())},
        **rss, "rss_samples": samples[:: max(1, len(samples) // 40)],
        "ttft_p50_s": pct(0.50), "ttft_p99_s": pct(0.99), "ttft_n": len(ttfts),
        "hung_up": sum(1 for r in results if r.get("hung_up")),
        "reuse": reuse, "checks": checks,
    }


def check_reuse(url: str, model, sessions: list[dict], max_tokens: int) -> dict:
    """Continue each session (still cached, most of them) with a greedy reply and compare the server's
    tokens and logprobs with a fresh Model.eval of the same prompt: a reused state that went stale
    (wrong checkpoint, state from another session, leftovers of a cancelled stream) shows here."""
    import numpy as np
    import requests

    eog = set(model.tokenizer.eog_ids)
    out = {"sessions": len(sessions), "cached_tokens": [], "max_logprob_diff": 0.0, "mismatches": 0}
    for s in sessions:
        msgs = s["messages"] + [{"role": "user", "content": "one more question"}]
        body = {"messages": msgs, "max_tokens": max_tokens, "temperature": 0, "logprobs": True,
                "chat_template_kwargs": {"enable_thinking": False}}
        r = requests.post(url + "/v1/chat/completions", json=body, headers={"X-Session-Id": s["id"]}, timeout=300)
        r.raise_for_status()
        j = r.json()
        details = j["usage"].get("prompt_tokens_details") or {}
        out["cached_tokens"].append(details.get("cached_tokens", 0))
        got = j["choices"][0]["logprobs"]["content"]
        # the fresh reference: the same prompt through a new state, greedy
        ids = model.tokenize(model.chat_template.render(msgs, add_generation_prompt=True, enable_thinking=False))
        gen, lps = [], []
        for _ in range(len(got)):
            logits = model.eval(ids + gen)[-1].astype(np.float64)
            lse = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
            tok = int(logits.argmax())
            gen.append(tok)
            lps.append(float(logits[tok] - lse))
            if tok in eog:
                break
        got_bytes = b"".join(bytes(t["bytes"] or []) for t in got)
        fresh_bytes = b"".join(model.tokenizer.id_to_bytes(t) if hasattr(model.tokenizer, "id_to_bytes")
                               else model.detokenize([t]).encode() for t in gen if t not in eog)
        diff = max((abs(a["logprob"] - b) for a, b in zip(got, lps)), default=0.0)
        out["max_logprob_diff"] = max(out["max_logprob_diff"], round(diff, 6))
        if got_bytes != fresh_bytes or len(got) != len(gen) or diff > LOGPROB_ATOL:
            out["mismatches"] += 1
            out.setdefault("examples", []).append({"session": s["id"], "server": got_bytes.decode("utf-8", "replace"),
                                                    "fresh": fresh_bytes.decode("utf-8", "replace"), "diff": diff})
    out["reused"] = sum(1 for c in out["cached_tokens"] if c > 0)
    out["ok"] = out["mismatches"] == 0 and (out["reused"] > 0 or not sessions)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def _listing(*dirs) -> set[str]:
    import os

    return {os.path.join(root, f) for d in dirs for root, _, files in os.walk(d) for f in files}


def kill_restart(model_path=None, timeout: float = 120.0) -> dict:
    """`pyqwen serve` as a process (own working directory and TMPDIR): SIGKILL it while it streams, then
    start it again on the same port. Clean start: /health 200 and a request served; no stale files in
    its working directory, its TMPDIR or next to the model (pyqwen writes none: nothing to clean up)."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import requests

    import pyqwen

    model_dir = Path(model_path).parent if model_path else Path(pyqwen.__file__).parent / "data" / "demo_model"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="soak-kill-") as work:
        tmp = os.path.join(work, "tmp")
        cwd = os.path.join(work, "cwd")
        os.makedirs(tmp)
        os.makedirs(cwd)
        before = _listing(model_dir)
        cmd = [sys.executable, "-m", "pyqwen", "serve", "--port", str(port), "--ctx", "1024", "--cache-ram", "64",
               "--log-level", "warning"] + (["-m", str(model_path)] if model_path else [])
        env = {**os.environ, "TMPDIR": tmp}

        def start():
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if proc.poll() is not None:
                    return proc, None
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        return proc, round(time.monotonic() - t0, 2)
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            return proc, None

        out: dict = {}
        proc, out["first_start_s"] = start()
        body = {"messages": [{"role": "user", "content": "count to a thousand"}], "max_tokens": 400,
                "stream": True, "chat_template_kwargs": {"enable_thinking": False}}
        chunks = 0
        try:
            with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith(b"data: {"):
                        chunks += 1
                    if chunks == 3:
                        proc.send_signal(signal.SIGKILL)      # mid-stream
                        break
        except requests.RequestException:
            pass
        rc = proc.wait(timeout=30)
        proc.stderr.close()
        out["killed_mid_stream"] = chunks == 3 and rc == -signal.SIGKILL
        out["stale_files_after_kill"] = sorted((_listing(tmp, cwd) | _listing(model_dir)) - before)
        proc, out["restart_s"] = start()
        try:
            r = requests.post(url + "/v1/chat/completions", timeout=120, json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            out["restart_serves"] = r.status_code == 200
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stderr.close()
        out["restart_stderr_tail"] = err[-300:]
        out["stale_files_after_restart"] = sorted((_listing(tmp, cwd) | _listing(model_dir)) - before)
        out["ok"] = bool(out["killed_mid_stream"] and out["restart_s"] is not None and out["restart_serves"]
                         and not out["stale_files_after_kill"] and not out["stale_files_after_restart"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--cache-ram", type=float, default=256, help="the session cache's budget, MiB")
    ap.add_argument("--kill-restart", action="store_true", help="also SIGKILL `pyqwen serve` mid-stream and restart")
    ap.add_argument("--report")
    a = ap.parse_args(argv)
    rep = run(a.requests, a.concurrency, model_path=a.model, seed=a.seed, max_tokens=a.max_tokens,
              cache_ram_mib=a.cache_ram)
    if a.kill_restart:
        rep["kill_restart"] = kr = kill_restart(a.model)
        rep["checks"]["kill_restart_clean"] = kr["ok"]
    text = json.dumps(rep, indent=1)
    print(text)
    if a.report:
        open(a.report, "w").write(text)
    return 0 if all(rep["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
