"""Helpers for tests and embedding: run the app on loopback in a thread; a scripted sampler.

`ScriptedSampler` / `Script` are TEST-ONLY hooks. The demo model is tiny (trained on Python source only), so to exercise tool
calls, reasoning and multi-turn reuse with realistic replies the tests make it *emit given text*: the
sampler ignores the logits and returns the tokens of a scripted reply, then end-of-turn. Everything
else (prompt rendering, prefill, session reuse, parsing, streaming) runs for real, and the sampler
records the logits it was given so tests can compare them with a fresh prefill. The hook is only
reachable from Python (`Engine(sampler_factory=...)`), never over HTTP.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Iterator

import numpy as np


class ScriptedSampler:
    """TEST ONLY: emits `ids` one by one regardless of the logits, then `eog_id`; keeps the logits seen."""

    def __init__(self, ids: list[int], eog_id: int):
        self.ids = list(ids)
        self.eog_id = eog_id
        self.logits: list[np.ndarray] = []   # one per call, in order
        self.tokens: list[int] = []          # what it returned

    def sample(self, logits, history=None) -> int:
        self.logits.append(np.array(logits, dtype=np.float32, copy=True))
        i = len(self.tokens)
        tok = self.ids[i] if i < len(self.ids) else self.eog_id
        self.tokens.append(tok)
        return tok


class RecordingSampler:
    """TEST ONLY: a real sampler that also keeps the logits it saw and the tokens it drew."""

    def __init__(self, inner):
        self.inner = inner
        self.logits: list[np.ndarray] = []
        self.tokens: list[int] = []

    def sample(self, logits, history=None) -> int:
        self.logits.append(np.array(logits, dtype=np.float32, copy=True))
        tok = self.inner.sample(logits, history)
        self.tokens.append(tok)
        return tok


class Script:
    """TEST ONLY: a FIFO of scripted replies for `Engine(sampler_factory=script.factory)`.

    `push(text)` queues a reply (tokenized with the model's tokenizer); each job takes the next one. When
    the FIFO is empty, jobs use the normal sampler (wrapped to record). `records` holds every job's
    (prompt_ids, sampler), in order, so tests can check the logits against a fresh model."""

    def __init__(self, model):
        self.model = model
        self.queue: collections.deque = collections.deque()
        self.records: list[tuple[list[int], object]] = []
        self._eog = model.tokenizer.token_to_id("<|im_end|>")
        self._lock = threading.Lock()

    def push(self, text: str | list[int]) -> None:
        ids = self.model.tokenize(text) if isinstance(text, str) else list(text)
        with self._lock:
            self.queue.append(ids)

    def factory(self, params, sampling, job):
        from .engine import PenaltySampler

        with self._lock:
            ids = self.queue.popleft() if self.queue else None
        if ids is not None:
            s = ScriptedSampler(ids, self._eog)
        else:
            s = RecordingSampler(PenaltySampler(params, sampling.frequency_penalty))
        with self._lock:
            self.records.append((list(job.prompt_ids), s))
        return s


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread; yields the base URL (http://host:port)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, name="pyqwen-uvicorn", daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0]
    real_port = sock.getsockname()[1]
    try:
        yield f"http://{host}:{real_port}"
    finally:
        server.should_exit = True
        t.join(timeout)
