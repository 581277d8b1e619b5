"""The server on the CUDA backend (run on the CPU by the emulator): plain requests choose their tokens on
the device (CudaCore.decode; no logits cross to the host after the prefill), requests with a host-only
feature (penalties) fall back to forward + the host sampler, and greedy output equals the CPU backend's.

Model: the tiny qwen35-r2-untied fixture in F16 (see test_model_emu.py); a few tokens each, the emulator
is slow.
"""

from __future__ import annotations

import asyncio

import pytest

from test_model_emu import load_cuda_core

pytest.importorskip("fastapi")

PROMPT = [1, 5, 17, 300, 42, 7]


def model_on(core, path, n_ctx: int):
    """A pyqwen.Model around an already built backend (Model.load builds the real pyqwen._cuda one)."""
    from pyqwen.chat import ChatTemplate
    from pyqwen.gguf_file import GGUFFile
    from pyqwen.model import _DATA, Model
    from pyqwen.tokenizer import Tokenizer

    gf = GGUFFile.open(path)
    source = gf.metadata.get("tokenizer.chat_template")
    if not isinstance(source, str):
        source = (_DATA / "qwen3.6-chat-template.jinja").read_text()
    m = Model(gf, core, Tokenizer.from_metadata(gf.metadata), ChatTemplate(source), n_ctx, "f16", core.n_batch)
    m.backend = "cuda"
    return m


class Spy:
    """Counts what crosses between the loop and the backend."""

    def __init__(self, core):
        self.core = core
        self.decoded: list[int] = []
        self.logit_rows = 0           # forward() calls that returned logits to the host
        real_decode, real_forward = core.decode, core.forward

        def decode(state, token, params=None, counter=0):
            t = real_decode(state, token, params, counter)
            self.decoded.append(t)
            return t

        def forward(state, tokens, logits="last", n_batch=256):
            if logits != "none":
                self.logit_rows += 1
            return real_forward(state, tokens, logits, n_batch)

        core.decode, core.forward = decode, forward

    def reset(self):
        self.decoded.clear()
        self.logit_rows = 0


def complete(engine, body: dict) -> dict:
    from pyqwen.server.protocol import parse_completion

    async def go():
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = parse_completion(body, engine.model.n_ctx, engine.model.n_vocab, None)
        engine.submit(engine.prepare_completion(req, loop, events))
        while True:
            kind, payload = await events.get()
            if kind in ("done", "error"):
                return kind, payload

    kind, payload = asyncio.run(go())
    assert kind == "done", payload
    return payload


def steps(result: dict) -> int:
    """Model steps after the prefill: every generated token is fed back except the last, unless the
    generation ended on an end-of-generation token (that one is drawn after the last feed)."""
    g = result["usage"]["completion_tokens"]
    return g - 1 if result["finish_reason"] == "length" else g


def test_server_samples_on_the_device(emu_ops, tiny_f16):
    import pyqwen
    from pyqwen.backend import Backend
    from pyqwen.server.engine import Engine

    core = load_cuda_core(emu_ops, tiny_f16, n_batch=8, n_ctx=16)
    assert isinstance(core, Backend) and core.device_sampling
    spy = Spy(core)
    gpu = Engine(model_on(core, tiny_f16, 16), cache_ram_mib=64)
    cpu_model = pyqwen.Model.load(str(tiny_f16), n_ctx=16, backend="cpu")
    cpu = Engine(cpu_model, cache_ram_mib=64)
    try:
        n = 3
        want = cpu_model.generate(PROMPT, max_tokens=n, temperature=0)
        want_text = "".join(c.text for c in want)
        body = {"prompt": PROMPT, "max_tokens": n, "temperature": 0}
        assert complete(cpu, body)["text"] == want_text
        got = complete(gpu, dict(body, session_id="greedy"))
        # greedy: the same text as the CPU backend; every token after the first chosen by decode(),
        # and only the prefill's logits reached the host
        assert got["text"] == want_text and got["usage"]["completion_tokens"] == len(want.tokens) >= 2
        assert spy.decoded[:len(want.tokens) - 1] == want.tokens[1:]
        assert len(spy.decoded) == steps(got) and spy.logit_rows == 1

        spy.reset()  # temperature sampling with a seed: on the device as well
        got = complete(gpu, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0.8, "top_k": 0, "seed": 3,
                             "session_id": "sampled"})
        assert spy.logit_rows == 1 and len(spy.decoded) == steps(got)

        spy.reset()  # a penalty needs the history: forward + the host sampler, no decode()
        got = complete(gpu, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0, "frequency_penalty": 0.5,
                             "session_id": "penalty"})
        assert spy.decoded == [] and spy.logit_rows == 1 + steps(got)
    finally:
        gpu.shutdown()
        cpu.shutdown()


def test_session_reuse_with_many_host_checkpoints(emu_ops, tiny_f16):
    """The server's session cache on the CUDA backend: more than two checkpoints (they live in pinned host
    memory: no device allocation each), a follow-up that diverges mid-prompt restores the newest one
    before the divergence, and its logits equal a fresh state's fed the same pieces (bit for bit) and a
    one-shot prefill's (float tolerance) -- as on the CPU backend."""
    import numpy as np

    from pyqwen.session import SessionCache

    core = load_cuda_core(emu_ops, tiny_f16, n_batch=8, n_ctx=48)
    cache = SessionCache(model_on(core, tiny_f16, 48), cache_ram_mib=64)
    first = [(5 * i * i + 2 * i + 3) % 2400 + 1 for i in range(24)]
    marks = [(p, "user") for p in (4, 8, 12, 16, 20)]
    live0 = emu_ops.live_allocations()
    _, n_cached = cache.prefill("s", first, marks)
    assert n_cached == 0 and cache.n_checkpoints == 5
    assert emu_ops.live_allocations() - live0 == 1  # the session's state; its 5 checkpoints are host memory
    assert cache.nbytes >= 5 * core.snapshot(core.new_state(4), False).nbytes

    follow = first[:14] + [7, 70, 700]  # diverges at 14: the checkpoint at 12 is restored
    got, n_cached = cache.prefill("s", follow, [])
    assert n_cached == 12 and cache.stats.checkpoints_restored == 1
    fresh = core.new_state(48)
    for a, b in ((0, 4), (4, 8), (8, 12)):  # the pieces the session fed up to the checkpoint
        core.forward(fresh, np.array(first[a:b], np.int32), "none", 8)
    want = core.forward(fresh, np.array(follow[12:], np.int32), "last", 8)
    np.testing.assert_array_equal(np.asarray(got).reshape(-1), np.asarray(want).reshape(-1))
    once = core.forward(core.new_state(48), np.array(follow, np.int32), "last", 8)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), np.asarray(once).reshape(-1), atol=2e-2, rtol=0)
