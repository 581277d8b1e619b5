#!/usr/bin/env python3
"""Per-token host overhead of the server path, and the host sampler's cost at the real vocabulary size.

    python benchmarks/server_overhead.py                 # the built-in demo model, 32 tokens x 3
    python benchmarks/server_overhead.py -m MODEL.gguf -n 64 -r 5

1. Server path: a /v1/completions job through the in-process Engine (queue, worker thread, session
   cache, generation loop, sampler, detokenizer, event queue; no HTTP), time per generated token
   (`decode_seconds / (completion_tokens - 1)`: every token after the first costs one model step),
   next to a bare `core.forward` of one token at the same positions on a fresh state (the model's own
   cost). The difference is what the Python side adds per token. Greedy, and temperature 0.8 with
   top_k=0 (top_p / min_p at their defaults 0.95 / 0.05), each on its own session.
2. Host sampler: `Sampler.sample` on synthetic logits of the Qwen3.6 vocabulary (248,320; normal with
   sd 3, so a few dozen tokens stand out as in a real model's row), per call, for top_k=0 and top_k=40
   (temperature 0.8, top_p 0.95, min_p 0.05), and top_k=0 with min_p=0 (only top-p bounds the
   candidates: the worst case of a partial selection).

It imports the installed pyqwen (run it with the interpreter of the venv you want to measure).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time

import numpy as np

N_VOCAB_REAL = 248_320
_session = itertools.count()


def run_job(engine, body: dict) -> dict:
    """One completion through the Engine's queue and worker; returns the 'done' payload."""
    from pyqwen.server.protocol import parse_completion

    async def go():
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = parse_completion(body, engine.model.n_ctx, engine.model.n_vocab, None)
        job = engine.prepare_completion(req, loop, events)
        engine.submit(job)
        while True:
            kind, payload = await events.get()
            if kind == "done":
                return payload
            if kind == "error":
                raise RuntimeError(payload.message)

    return asyncio.run(go())


def bare_forward_per_token(model, prompt_ids: list[int], n: int) -> float:
    """Seconds per one-token core.forward at positions len(prompt) .. len(prompt) + n - 1."""
    core = model._core
    core = getattr(core, "_m", core)  # the raw C++/CUDA object when wrapped
    state = model.new_state()
    core.forward(state, np.asarray(prompt_ids, np.int32), "last", model.n_batch)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, model.n_vocab, size=n).astype(np.int32)
    t0 = time.perf_counter()
    for t in toks:
        core.forward(state, np.array([t], np.int32), "last", model.n_batch)
    return (time.perf_counter() - t0) / n


def server_per_token(engine, prompt: str, n: int, sampling: dict) -> tuple[float, int]:
    body = {"prompt": prompt, "max_tokens": n, "session_id": f"bench-{next(_session)}", **sampling}
    out = run_job(engine, body)
    g = out["usage"]["completion_tokens"]
    return out["timings"]["decode_seconds"] / max(g - 1, 1), g


def sampler_per_call(top_k: int, min_p: float, reps: int) -> float:
    from pyqwen.sampling import Sampler, SamplingParams

    rng = np.random.default_rng(1)
    rows = [(rng.normal(size=N_VOCAB_REAL) * 3).astype(np.float32) for _ in range(4)]
    s = Sampler(SamplingParams(temperature=0.8, top_k=top_k, top_p=0.95, min_p=min_p, seed=0))
    s.sample(rows[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(reps):
        s.sample(rows[i % len(rows)])
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF file (default: the built-in demo model)")
    ap.add_argument("-n", "--n-tokens", type=int, default=32, help="tokens per generation (default 32)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions, median reported (default 3)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "auto"))
    args = ap.parse_args(argv)

    import pyqwen
    from pyqwen.server.engine import Engine

    model = pyqwen.Model.load(args.model, n_ctx=1024, threads=args.threads, backend=args.backend)
    engine = Engine(model, cache_ram_mib=1024)
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    prompt_ids = model.tokenize(prompt)
    print(f"model {model.path} (backend {model.backend}, vocab {model.n_vocab}), prompt {len(prompt_ids)} tok, "
          f"{args.n_tokens} generated, median of {args.reps}")
    try:
        server_per_token(engine, prompt, 4, {"temperature": 0})  # warm-up
        bare = statistics.median(bare_forward_per_token(model, prompt_ids, args.n_tokens - 1)
                                 for _ in range(args.reps))
        print(f"{'path':40s} {'ms/token':>9s} {'host overhead ms/token':>23s}")
        print(f"{'bare core.forward (1 token)':40s} {bare * 1e3:9.3f} {'':>23s}")
        for name, sampling in (("server, greedy", {"temperature": 0}),
                               ("server, temperature 0.8, top_k=0", {"temperature": 0.8, "top_k": 0, "seed": 1})):
            runs = [server_per_token(engine, prompt, args.n_tokens, sampling) for _ in range(args.reps)]
            per = statistics.median(r[0] for r in runs)
            gen = min(r[1] for r in runs)
            print(f"{name:40s} {per * 1e3:9.3f} {(per - bare) * 1e3:23.3f}   ({gen}+ tokens)")
    finally:
        engine.shutdown()

    print(f"\nhost sampler at vocab {N_VOCAB_REAL:,} (synthetic logits), temperature 0.8, top_p 0.95:")
    for name, k, min_p, reps in (("top_k=0,  min_p=0.05", 0, 0.05, 10), ("top_k=40, min_p=0.05", 40, 0.05, 50),
                                 ("top_k=0,  min_p=0", 0, 0.0, 10)):
        print(f"  {name:24s} {sampler_per_call(k, min_p, reps) * 1e3:8.3f} ms/token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
