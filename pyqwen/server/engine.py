"""The server's model worker: one generation at a time, fed from a FIFO queue.

Requests are validated and tokenized on the HTTP side, then queued as Jobs. A single worker thread
runs them in order (the C++ forward releases the GIL, so the event loop keeps serving streams, /health
and /metrics meanwhile). Each Job streams events back to its request through an asyncio queue:
("delta", dict), ("done", dict) or ("error", APIError). A Job is cancelled when its client goes away;
the worker notices between tokens (and between prefill pieces), stops, and the session keeps exactly
the tokens its state consumed, so the next request on it reuses them.

After a chat reply the worker re-renders the conversation with the reply appended, as the next request
will, and brings the session state to those tokens (`Turn.align`): usually that is just the
`<|im_end|>\\n` the template closes the turn with, more when the reply's text does not re-render
token-for-token (trimmed whitespace, tool-call formatting, a stop string). This runs after the response
is complete, so the next turn prefills only its new messages.
"""

from __future__ import annotations

import asyncio
import atexit
import queue
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..chat import ChatTemplateError
from ..errors import ContextOverflowError, GrammarError
from ..sampling import Sampler, SamplingParams
from ..reply import ReplyStream, TextStream
from ..session import Cancelled, SessionCache, chat_checkpoints
from .protocol import APIError, ChatRequest, CompletionRequest, Sampling, bad

_GEN_HEADER = "<|im_start|>assistant\n"
_END_OF_TURN = "<|im_end|>\n"


class PenaltySampler(Sampler):
    """pyqwen's Sampler plus OpenAI's frequency_penalty (subtracted once per occurrence)."""

    def __init__(self, params: SamplingParams, frequency_penalty: float = 0.0):
        super().__init__(params)
        self.frequency_penalty = frequency_penalty

    @property
    def uses_history(self) -> bool:
        return super().uses_history or self.frequency_penalty != 0.0

    def apply_penalties(self, logits, history):
        out = super().apply_penalties(logits, history)
        if self.frequency_penalty and history:
            ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
            out = np.array(out, dtype=np.float32, copy=True)
            out[ids] -= self.frequency_penalty * counts
        return out


@dataclass(eq=False)   # hashed by identity (Engine._live)
class Job:
    kind: str                               # "chat" | "completion"
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    session_key: str | None
    checkpoints: list[tuple[int, str]]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    logprobs: int | None = None             # None: off; n: chosen token + n likeliest (generation's host path)
    grammar: Any = None                     # a compiled pyqwen.constrain.Grammar the output is held to
    # chat only
    prompt_text: str = ""
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
    parse_tools: bool = False
    template_kwargs: dict = field(default_factory=dict)
    started_in_think: bool = False
    gen_pos: int | None = None              # token position just after "<|im_start|>assistant\n"
    gen_char: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_error: APIError | None = None   # what the client is told when the job is stopped (default 499)
    enqueued: float = field(default_factory=time.monotonic)

    def emit(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # event loop closed: the server is shutting down
            self.cancelled.set()

    def cancel(self, error: APIError | None = None) -> None:
        if error is not None and self.cancel_error is None:
            self.cancel_error = error
        self.cancelled.set()

    def cancelled_error(self) -> APIError:
        return self.cancel_error or APIError(499, "cancelled", "cancelled")


@dataclass
class Metrics:
    requests: dict = field(default_factory=dict)   # (endpoint, status) -> count
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    aligned_tokens: int = 0
    align_seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    cancelled: int = 0
    last_prefill_tps: float = 0.0
    last_decode_tps: float = 0.0
    queue_wait_seconds: float = 0.0
    spec_verify_steps: int = 0        # speculative decoding: verifications, drafted and accepted tokens
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0

    def count(self, endpoint: str, status: int) -> None:
        k = (endpoint, status)
        self.requests[k] = self.requests.get(k, 0) + 1


class Engine:
    """Owns the model, the session cache, the job queue and the worker thread."""

    def __init__(self, model, *, model_name: str | None = None, cache_ram_mib: float = 8192,
                 max_queue: int = 256, align_replies: bool = True,
                 sampler_factory: Callable[[SamplingParams, Sampling, Job], Any] | None = None):
        self.model = model
        self.model_name = model_name or _default_name(model)
        self.cache = SessionCache(model, cache_ram_mib=cache_ram_mib)
        self.max_queue = max_queue
        self.align_replies = align_replies
        # Test hook: build the sampler for a job (e.g. one that emits scripted tokens). Not reachable
        # over HTTP; only code that constructs the Engine can set it.
        self.sampler_factory = sampler_factory
        self.metrics = Metrics()
        self.created = int(time.time())
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0          # queued + running
        self._running = 0
        self._lock = threading.Lock()
        self._live: set[Job] = set()   # queued or running, for stop_all
        self._stopped = False
        # Longest token piece in characters: a text of more than n_ctx * this many characters cannot fit,
        # which is known before tokenizing it (a 10 MB prompt is refused at once).
        tok = model.tokenizer
        self.max_token_chars = max(1, max((len(tok.id_to_piece(i)) for i in range(tok.n_vocab)), default=1))
        self._worker = threading.Thread(target=self._loop, name="pyqwen-worker", daemon=True)
        self._worker.start()
        # A daemon worker still inside the C++ forward at interpreter exit aborts the process
        # ("terminate called without an active exception"): stop it first if nobody called shutdown().
        ref = weakref.ref(self)
        atexit.register(lambda: (e := ref()) is not None and e.shutdown())

    # ---- queue -----------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the worker (not counting the one it runs)."""
        with self._lock:
            return self._pending - self._running

    @property
    def processing(self) -> int:
        return self._running

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stopped:
                raise APIError(503, "the server is shutting down", "server_error", None, "shutting_down")
            if self._pending - self._running >= self.max_queue:
                raise APIError(503, f"the server is busy ({self.max_queue} requests queued); retry later",
                               "server_error", None, "queue_full", headers={"Retry-After": "1"})
            self._pending += 1
            self._live.add(job)
        self._jobs.put(job)

    def stop_all(self, reason: str) -> None:
        """Refuse new jobs and end the queued and running ones with a 503 error event (SIGINT)."""
        with self._lock:
            self._stopped = True
            live = list(self._live)
        for job in live:
            job.cancel(APIError(503, reason, "server_error", None, "shutting_down"))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every job, then the worker (idempotent)."""
        self.stop_all("the server is shutting down")
        if self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._running = 1
            try:
                self.metrics.queue_wait_seconds += time.monotonic() - job.enqueued
                if job.cancelled.is_set():
                    self.metrics.cancelled += 1
                    job.emit("error", job.cancelled_error())
                else:
                    self._run(job)
            except BaseException as e:  # never let one request kill the worker
                job.emit("error", APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))
            finally:
                with self._lock:
                    self._running = 0
                    self._pending -= 1
                    self._live.discard(job)

    # ---- preparing jobs (HTTP side, any thread) -----------------------------------------------------

    def prepare_chat(self, req: ChatRequest, loop, events) -> Job:
        m = self.model
        self._check_size(_text_chars([req.messages, req.tools]), "messages")
        try:
            text = m.chat_template.render(req.messages, tools=req.tools, add_generation_prompt=True,
                                          **req.template_kwargs)
        except ChatTemplateError as e:
            raise bad(f"the chat template rejected the conversation: {e}", "messages") from None
        ids = m.tokenize(text)
        self._check_fits(ids, req.max_tokens)
        gen_char = text.rfind(_GEN_HEADER)
        gen_char = gen_char + len(_GEN_HEADER) if gen_char >= 0 else None
        cps = chat_checkpoints(text, ids, m.tokenize, req.messages[-1]["role"])
        gen_pos = next((p for p, k in cps if k in ("gen", "query")), None)
        started_in_think = text.rstrip("\n").endswith("<think>")
        grammar = self._compile(req.constraint, started_in_think)
        return Job(kind="chat", prompt_ids=ids, max_tokens=req.max_tokens or m.n_ctx, sampling=req.sampling,
                   session_key=req.session_key, checkpoints=cps, loop=loop, events=events, logprobs=req.logprobs,
                   prompt_text=text,
                   messages=req.messages, tools=req.tools, parse_tools=req.parse_tools,
                   template_kwargs=req.template_kwargs,
                   started_in_think=started_in_think, grammar=grammar,
                   gen_pos=gen_pos, gen_char=gen_char if gen_pos is not None else None)

    def prepare_completion(self, req: CompletionRequest, loop, events) -> Job:
        m = self.model
        self._check_size(len(req.prompt) if isinstance(req.prompt, str) else 0, "prompt")
        ids = m.tokenize(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
        if not ids:
            raise bad("the prompt is empty", "prompt")
        self._check_fits(ids, None)
        return Job(kind="completion", prompt_ids=ids, max_tokens=req.max_tokens, sampling=req.sampling,
                   session_key=req.session_key, checkpoints=[(len(ids), "prompt_end")], loop=loop, events=events,
                   logprobs=req.logprobs, grammar=self._compile(req.constraint, False))

    def _compile(self, constraint, after_reasoning: bool):
        """The constraint compiled against the model's vocabulary (a 400 naming what is wrong with it)."""
        if constraint is None:
            return None
        try:
            return constraint.compile(self.model.tokenizer, after_reasoning=after_reasoning)
        except GrammarError as e:
            raise bad(str(e), e.param) from None

    def _check_size(self, n_chars: int, param: str) -> None:
        """400 for a text too long to fit in the context whatever its tokens, before any tokenizing."""
        limit = self.model.n_ctx * self.max_token_chars
        if n_chars > limit:
            raise APIError(400, f"the request holds {n_chars} characters of text; at most {limit} can fit in this "
                           f"server's context window of {self.model.n_ctx} tokens", "invalid_request_error", param,
                           "context_length_exceeded")

    def _check_fits(self, ids: list[int], max_tokens: int | None) -> None:
        n_ctx = self.model.n_ctx
        if len(ids) + 1 > n_ctx:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this server's context window is {n_ctx} "
                           f"tokens and one more is needed to answer", "invalid_request_error", "messages",
                           "context_length_exceeded")

    def sampler_for(self, job: Job):
        params = SamplingParams(**job.sampling.params())
        params.validate()
        if self.sampler_factory is not None:
            return self.sampler_factory(params, job.sampling, job)
        return PenaltySampler(params, job.sampling.frequency_penalty)

    # ---- running jobs (worker thread) ---------------------------------------------------------------

    def _run(self, job: Job) -> None:
        m = self.model
        sampler = self.sampler_for(job)
        try:
            turn = self.cache.open(job.session_key, job.prompt_ids, job.checkpoints, cancel=job.cancelled.is_set)
        except RuntimeError as e:  # the session is in use: cannot happen with one worker
            job.emit("error", APIError(409, str(e), "invalid_request_error", "session_id"))
            return
        with turn:
            try:
                gen = turn.generate(sampler, job.max_tokens, m.tokenizer.eog_ids, job.sampling.stop,
                                    m.tokenizer.stream_decoder(), logprobs=job.logprobs, grammar=job.grammar)
            except ContextOverflowError as e:
                job.emit("error", APIError(400, str(e), "invalid_request_error", "messages",
                                           "context_length_exceeded"))
                return
            stats = gen.stats
            reply = (ReplyStream(job.started_in_think, job.tools, job.parse_tools) if job.kind == "chat"
                     else TextStream())
            cancelled = False
            # Logprobs go out with the next delta after their tokens (the reply split may hold text back).
            all_lps: list = []
            lp_sent = 0

            def attach(delta: dict) -> dict:
                nonlocal lp_sent
                if job.logprobs is not None:
                    delta["_logprobs"] = all_lps[lp_sent:]
                    lp_sent = len(all_lps)
                return delta

            try:
                for chunk in gen:
                    if job.cancelled.is_set():
                        cancelled = True
                        break
                    if chunk.logprobs:
                        all_lps.extend(chunk.logprobs)
                    delta = reply.push(chunk.text)
                    if delta:
                        job.emit("delta", attach(delta))
            except Cancelled:
                cancelled = True
            if cancelled or job.cancelled.is_set():
                gen.close()
                self.metrics.cancelled += 1
                self._account(turn, stats)
                job.emit("error", job.cancelled_error())
                return
            delta = reply.flush()
            if delta:
                job.emit("delta", attach(delta))
            self._account(turn, stats)
            result = {
                "finish_reason": reply.finish_reason(gen.finish_reason),
                "stop_string": getattr(gen, "stop_string", None),   # which of the stop strings ended it
                "text": gen.text,
                "reasoning_content": reply.reasoning_content,
                "content": reply.content,
                "tool_calls": reply.calls,
                "usage": {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
                          "total_tokens": stats.prompt_tokens + stats.generated_tokens,
                          "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}},
                "timings": {"prefill_seconds": stats.prefill_seconds, "decode_seconds": stats.decode_seconds,
                            "prefilled_tokens": stats.prompt_tokens - stats.cached_tokens},
                "stats": stats,        # the GenerationStats (for in-process callers: `pyqwen chat`)
                "logprobs": all_lps if job.logprobs is not None else None,
                "logprobs_unsent": all_lps[lp_sent:] if job.logprobs is not None else None,
            }
            job.emit("done", result)
            # The client has its answer; now line the state up with the history the next turn will send.
            try:
                if job.kind == "chat" and self.align_replies:
                    self._align_chat(job, turn, result)
                else:
                    turn.checkpoint("reply_end")
            except Exception:
                self.cache._invalidate(turn.session)

    def _account(self, turn, stats) -> None:
        mt = self.metrics
        mt.prompt_tokens += stats.prompt_tokens
        mt.cached_tokens += stats.cached_tokens
        mt.prefilled_tokens += stats.prompt_tokens - stats.cached_tokens
        mt.generated_tokens += stats.generated_tokens
        mt.prefill_seconds += stats.prefill_seconds
        mt.decode_seconds += stats.decode_seconds
        if stats.cached_tokens > 0:
            mt.cache_hits += 1
        else:
            mt.cache_misses += 1
        if stats.prefill_seconds > 0:
            mt.last_prefill_tps = stats.prefill_tokens_per_second
        if stats.decode_seconds > 0 and stats.generated_tokens > 1:
            mt.last_decode_tps = stats.decode_tokens_per_second
        mt.spec_verify_steps += stats.verify_steps
        mt.spec_draft_tokens += stats.draft_tokens
        mt.spec_accepted_tokens += stats.accepted_tokens

    def canonical_history(self, job: Job, result: dict) -> list[int] | None:
        """Token ids of the conversation + this reply as the next request will render them (including
        the closing `<|im_end|>\\n`), or None when that cannot be predicted."""
        if job.gen_pos is None or job.gen_char is None:
            return None
        reply: dict[str, Any] = {"role": "assistant", "content": result["content"]}
        if result["reasoning_content"] or job.started_in_think:
            reply["reasoning_content"] = result["reasoning_content"]
        if result["tool_calls"]:
            reply["tool_calls"] = [c.to_template() for c in result["tool_calls"]]
        try:
            text = self.model.chat_template.render(job.messages + [reply], tools=job.tools,
                                                   add_generation_prompt=False, **job.template_kwargs)
        except ChatTemplateError:
            return None
        head = job.prompt_text[:job.gen_char]
        if not text.startswith(head) or not text.endswith(_END_OF_TURN):
            return None
        # The text up to the assistant header tokenizes on its own (a special token follows).
        return job.prompt_ids[:job.gen_pos] + self.model.tokenize(text[job.gen_char:])

    def _align_chat(self, job: Job, turn, result: dict) -> None:
        target = self.canonical_history(job, result)
        if target is None:
            turn.checkpoint("reply_end")
            return
        t0 = time.perf_counter()
        n = turn.align(target, "reply_end")
        self.metrics.aligned_tokens += n
        self.metrics.align_seconds += time.perf_counter() - t0

    # ---- metrics ---------------------------------------------------------------------------------------

    def prometheus(self) -> str:
        mt = self.metrics
        info = self.cache.info()
        cs = self.cache.stats
        lines = []

        def metric(name, kind, help_, samples):
            lines.append(f"# HELP pyqwen_{name} {help_}")
            lines.append(f"# TYPE pyqwen_{name} {kind}")
            for labels, v in samples:
                lab = "{" + ",".join(f'{k}="{val}"' for k, val in labels.items()) + "}" if labels else ""
                lines.append(f"pyqwen_{name}{lab} {v}")

        metric("requests_total", "counter", "HTTP requests by endpoint and status code.",
               [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(mt.requests.items())])
        metric("prompt_tokens_total", "counter", "Prompt tokens of all generations.", [({}, mt.prompt_tokens)])
        metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a session state or checkpoint.",
               [({}, mt.cached_tokens)])
        metric("prompt_tokens_prefilled_total", "counter", "Prompt tokens run through the model.",
               [({}, mt.prefilled_tokens)])
        metric("tokens_generated_total", "counter", "Generated tokens.", [({}, mt.generated_tokens)])
        metric("prompt_seconds_total", "counter", "Time spent in prefill.", [({}, round(mt.prefill_seconds, 6))])
        metric("decode_seconds_total", "counter", "Time spent decoding.", [({}, round(mt.decode_seconds, 6))])
        metric("prompt_tokens_per_second", "gauge", "Prefill speed of the last request.",
               [({}, round(mt.last_prefill_tps, 3))])
        metric("decode_tokens_per_second", "gauge", "Decode speed of the last request.",
               [({}, round(mt.last_decode_tps, 3))])
        metric("spec_verify_steps_total", "counter", "Speculative verifications (one forward of the drafts + 1).",
               [({}, mt.spec_verify_steps)])
        metric("spec_draft_tokens_total", "counter", "Drafted tokens (MTP head or prompt lookup).",
               [({}, mt.spec_draft_tokens)])
        metric("spec_accepted_tokens_total", "counter", "Drafted tokens the model accepted.",
               [({}, mt.spec_accepted_tokens)])
        metric("spec_acceptance_ratio", "gauge", "Accepted / drafted tokens since start.",
               [({}, round(mt.spec_accepted_tokens / mt.spec_draft_tokens, 4) if mt.spec_draft_tokens else 0.0)])
        metric("spec_mean_accepted_length", "gauge", "Tokens produced per verification since start.",
               [({}, round((mt.spec_accepted_tokens + mt.spec_verify_steps) / mt.spec_verify_steps, 4)
                     if mt.spec_verify_steps else 0.0)])
        metric("aligned_tokens_total", "counter", "Tokens prefilled after replies to match re-rendered history.",
               [({}, mt.aligned_tokens)])
        metric("cache_hits_total", "counter", "Requests that reused cached prompt tokens.", [({}, mt.cache_hits)])
        metric("cache_misses_total", "counter", "Requests that prefilled their whole prompt.",
               [({}, mt.cache_misses)])
        metric("checkpoints_restored_total", "counter", "State checkpoints restored.", [({}, cs.checkpoints_restored)])
        metric("checkpoints_made_total", "counter", "State checkpoints taken.", [({}, cs.checkpoints_made)])
        metric("evictions_total", "counter", "Cache evictions.",
               [({"kind": "checkpoint"}, cs.evicted_checkpoints), ({"kind": "session"}, cs.evicted_sessions)])
        metric("requests_cancelled_total", "counter", "Generations stopped because the client left.",
               [({}, mt.cancelled)])
        metric("queue_depth", "gauge", "Requests waiting for the model (one runs at a time).",
               [({}, self.queue_depth)])
        metric("requests_processing", "gauge", "Requests being generated now (0 or 1).", [({}, self.processing)])
        metric("sessions", "gauge", "Sessions in the cache.", [({}, info["sessions"])])
        metric("checkpoints", "gauge", "State checkpoints held.", [({}, info["checkpoints"])])
        metric("cache_bytes", "gauge", "Bytes of session states and checkpoints.", [({}, info["bytes"])])
        metric("cache_budget_bytes", "gauge", "Budget for session states and checkpoints (--cache-ram).",
               [({}, info["budget_bytes"])])
        return "\n".join(lines) + "\n"


def _text_chars(value) -> int:
    """Characters in every string inside a JSON-like value (iterative: bodies are nested up to 64 levels)."""
    n, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            n += len(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return n


def _default_name(model) -> str:
    from pathlib import Path

    name = model.metadata.get("general.name") if hasattr(model, "metadata") else None
    if isinstance(name, str) and name.strip():
        return name.strip()
    return Path(str(getattr(model, "path", "model"))).stem


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
