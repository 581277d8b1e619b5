"""Replay a multi-turn agent conversation through the server engine, with and without state reuse.

    python benchmarks/agent_session.py                          # demo model, 20 turns, preserve_thinking both ways
    python benchmarks/agent_session.py -m Qwen3.6-27B-Q4_K_M.gguf --turns 30 --tool-output 4000 --ctx 32768

Each turn is one /v1/chat/completions request as an agent sends it (system + tools, user queries,
assistant tool calls, tool results), run through pyqwen.server.engine.Engine in-process (no HTTP). The
assistant replies are scripted (the same text in both runs, emitted through the test-only ScriptedSampler)
so that the two runs see identical conversations whatever the model's weights are.

- reuse: every request carries the same session id, so each turn restores/continues the session state
  and prefills only what is new; after each reply the engine aligns the state with the re-rendered
  history ("align" column: tokens and time, spent after the response was sent).
- baseline: every request gets a new session id: the whole prompt is prefilled, as without a cache.

Per turn it prints prompt tokens, reused (cached) tokens, prefill time with reuse, prefill time of the
baseline, and the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the repository",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}},
                   "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "run_tests", "description": "Run the test suite",
        "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}}}}}]

SYSTEM = "You are a coding agent. Work step by step, call tools to inspect the repository, then answer briefly."


def conversation(turns: int, calls_per_query: int, tool_output: int):
    """Yield (messages_before_reply, scripted_reply_text, tool_results_after) for each request."""
    filler = ("def handler(request):\n    data = request.json()\n    return process(data)\n" * 200)[:tool_output]
    msgs = [{"role": "system", "content": SYSTEM}]
    q = 0
    step = calls_per_query  # start with a user query
    for t in range(turns):
        if step >= calls_per_query:
            q += 1
            step = 0
            msgs.append({"role": "user", "content": f"Task {q}: find why test_{q} fails and fix it."})
        if step < calls_per_query - 1:
            reply = (f"I should look at module_{q}_{step}.py first.\n</think>\n\nReading the file.\n\n"
                     f"<tool_call>\n<function=read_file>\n<parameter=path>\nsrc/module_{q}_{step}.py\n</parameter>\n"
                     f"<parameter=max_lines>\n200\n</parameter>\n</function>\n</tool_call>")
            result = f"src/module_{q}_{step}.py:\n{filler}"
        else:
            reply = f"The bug is clear now.\n</think>\n\nThe test fails because process() drops the header in task {q}."
            result = None
        yield msgs, reply, result
        step += 1


async def run_turns(engine, script, args, session_of, preserve: bool):
    from pyqwen.server.protocol import parse_chat

    loop = asyncio.get_running_loop()
    rows = []
    for t, (msgs, reply, result) in enumerate(conversation(args.turns, args.calls_per_query, args.tool_output)):
        body = {"messages": msgs, "tools": TOOLS, "max_tokens": 512, "temperature": 0,
                "session_id": session_of(t), "chat_template_kwargs": {"preserve_thinking": preserve}}
        req = parse_chat(body, engine.model.n_ctx)
        script.push(reply)
        events: asyncio.Queue = asyncio.Queue()
        job = engine.prepare_chat(req, loop, events)
        align0 = (engine.metrics.aligned_tokens, engine.metrics.align_seconds)
        engine.submit(job)
        while True:
            kind, payload = await events.get()
            if kind == "done":
                break
            if kind == "error":
                raise RuntimeError(payload.message)
        while engine.queue_depth or engine.processing:  # let the post-reply alignment finish
            await asyncio.sleep(0.001)
        u, tm = payload["usage"], payload["timings"]
        rows.append({"turn": t + 1, "prompt": u["prompt_tokens"], "cached": u["prompt_tokens_details"]["cached_tokens"],
                     "prefill_s": tm["prefill_seconds"],
                     "align_tok": engine.metrics.aligned_tokens - align0[0],
                     "align_s": engine.metrics.align_seconds - align0[1]})
        # The agent appends the reply (as returned) and the tool result.
        a = {"role": "assistant", "content": payload["content"] or None,
             "reasoning_content": payload["reasoning_content"]}
        if payload["tool_calls"]:
            a["tool_calls"] = [c.to_openai() for c in payload["tool_calls"]]
        msgs.append(a)
        if result is not None:
            for c in payload["tool_calls"]:
                msgs.append({"role": "tool", "tool_call_id": c.id, "content": result})
        if not session_of(t).startswith("agent"):
            engine.cache.drop(session_of(t))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF file (default: the built-in demo model)")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--calls-per-query", type=int, default=4, help="requests per user query (tool calls + answer)")
    ap.add_argument("--tool-output", type=int, default=200, help="characters of each tool result")
    ap.add_argument("--preserve-thinking", choices=("true", "false", "both"), default="both")
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--kv-type", choices=("f16", "f32"), default="f16")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--cache-ram", type=float, default=8192, help="MiB")
    args = ap.parse_args(argv)

    import pyqwen
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import Script

    model = pyqwen.Model.load(args.model, n_ctx=args.ctx, kv_type=args.kv_type, threads=args.threads)
    script = Script(model)
    engine = Engine(model, sampler_factory=script.factory, cache_ram_mib=args.cache_ram)
    print(f"model {model.path.name if hasattr(model.path, 'name') else model.path}, ctx {model.n_ctx}, "
          f"kv {model.kv_type}, {args.turns} turns, tool output {args.tool_output} chars")
    modes = {"true": [True], "false": [False], "both": [True, False]}[args.preserve_thinking]
    try:
        for preserve in modes:
            reuse = asyncio.run(run_turns(engine, script, args, lambda t: f"agent-{preserve}", preserve))
            base = asyncio.run(run_turns(engine, script, args, lambda t: f"base-{preserve}-{t}", preserve))
            print(f"\npreserve_thinking={str(preserve).lower()}", flush=True)
            print(f"{'turn':>4} {'prompt':>7} {'reused':>7} {'prefilled':>9} {'prefill s':>10} {'baseline s':>10} "
                  f"{'speedup':>8} {'align tok':>9} {'align s':>8}")
            for r, b in zip(reuse, base):
                sp = b["prefill_s"] / r["prefill_s"] if r["prefill_s"] > 0 else float("inf")
                print(f"{r['turn']:>4} {r['prompt']:>7} {r['cached']:>7} {r['prompt'] - r['cached']:>9} "
                      f"{r['prefill_s']:>10.3f} {b['prefill_s']:>10.3f} {sp:>7.1f}x {r['align_tok']:>9} "
                      f"{r['align_s']:>8.3f}")
            tr = sum(r["prefill_s"] for r in reuse)
            ta = sum(r["align_s"] for r in reuse)
            tb = sum(b["prefill_s"] for b in base)
            pt = sum(r["prompt"] for r in reuse)
            ct = sum(r["cached"] for r in reuse)
            print(f"total: prompt {pt} tok, reused {ct} ({100 * ct / max(pt, 1):.1f}%), "
                  f"prefill {tr:.3f} s with reuse (+{ta:.3f} s aligning after replies) vs {tb:.3f} s baseline: "
                  f"{tb / max(tr, 1e-9):.1f}x ({tb / max(tr + ta, 1e-9):.1f}x counting alignment)", flush=True)
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
