"""Streaming generation: the decode loop, stop strings, UTF-8-safe text, per-call statistics.

One loop serves Model.generate / Model.chat (and so the CLI) and the server's session turns. It drives
a `Sequence` -- one state on one backend, with whatever bookkeeping its owner needs (the session cache
records the tokens fed and checkpoints between prefill pieces) -- and decides per generation how each
next token is chosen:

- on the device (`Sequence.decode`: feed a token, get the next id back; the logits stay where they are)
  when the backend samples on its device and the sampler needs nothing host-only (its `device_params`
  is not None: no penalties over the history, no custom sampler such as a test hook);
- else on the host: `Sequence.step` returns the logits and the Sampler draws from them.
The first token always comes from the prefill's logits through the host Sampler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence as Seq

import numpy as np


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0         # prompt tokens whose state was reused instead of prefilled
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # The first generated token comes from the prefill logits; the rest each cost one decode step.
        n = max(self.generated_tokens - 1, 0)
        return n / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"prompt {self.prompt_tokens} tok ({self.cached_tokens} cached), "
                f"prefill {self.prefill_tokens_per_second:.1f} tok/s, "
                f"generated {self.generated_tokens} tok, decode {self.decode_tokens_per_second:.1f} tok/s")


@dataclass
class TokenLogprob:
    """Log-probability of a generated token under the model's distribution (log-softmax of the raw logits,
    before temperature and penalties, as OpenAI and vLLM report them) and the `top` most likely tokens."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    x = np.asarray(logits, dtype=np.float64)
    m = float(x.max())
    lp = x - (m + np.log(np.exp(x - m).sum()))
    top: list[tuple[int, float]] = []
    if n_top > 0:
        idx = np.argpartition(-lp, min(n_top, lp.size) - 1)[:n_top]
        idx = idx[np.lexsort((idx, -lp[idx]))]          # most likely first; ties by id
        top = [(int(i), float(lp[i])) for i in idx]
    return TokenLogprob(int(token), float(lp[token]), top)


@dataclass
class Chunk:
    """A piece of generated text and the token ids that produced it (text may lag tokens); with logprobs
    requested, one TokenLogprob per id."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Sequence(Protocol):
    """What the loop drives: one state, fed through its owner."""

    device_sampling: bool   # decode() chooses the next token on the device

    def prefill(self, ids: list[int]) -> np.ndarray: ...        # feed the prompt; logits of its last token

    def step(self, token: int) -> np.ndarray: ...              # feed one token; its logits (host)

    def decode(self, token: int, params: Any, counter: int) -> int: ...  # feed one token; the next id


class StateSequence:
    """A state fed straight through a pyqwen.Model (no bookkeeping)."""

    def __init__(self, model, state):
        self._model = model
        self.state = state
        self.device_sampling = bool(model.device_sampling)

    def prefill(self, ids):
        return self._model.forward(self.state, ids)

    def step(self, token):
        return self._model.forward(self.state, [token])

    def decode(self, token, params, counter):
        return self._model.decode(self.state, token, params, counter)


class Generation:
    """Iterator over Chunks of one generation; `.stats`, `.text`, `.tokens`, `.finish_reason` after it ends.

    The sequence's state ends up holding prompt + generated tokens, except the last sampled token (it is
    in `.tokens` but has not been fed back). `.on_device` says which way the tokens were chosen.
    """

    def __init__(self, seq: Sequence, prompt_ids: Seq[int], prefill_ids: Seq[int], sampler, max_tokens: int,
                 eog_ids: set[int], stop: list[str], stream_decoder, stats: GenerationStats,
                 logprobs: int | None = None):
        self._seq = seq
        # Device sampling only when the sampler says the device may choose in its place (see module doc)
        # and no logprobs are asked for (they need the logits on the host).
        self._device_params = getattr(sampler, "device_params", None)
        self._logprobs = logprobs       # None: none; n: the chosen token's and the n most likely
        self.on_device = bool(seq.device_sampling) and self._device_params is not None and logprobs is None
        self._prompt_ids = prompt_ids
        self._prefill_ids = prefill_ids
        self._sampler = sampler
        self._max_tokens = max_tokens
        self._eog = eog_ids
        self._stop = [s for s in stop if s]
        self._dec = stream_decoder
        self.stats = stats
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.fed_tokens: list[int] = []  # tokens the state has consumed (for session bookkeeping)
        self._it = self._run()

    def __iter__(self) -> Iterator[Chunk]:
        return self._it

    def __next__(self) -> Chunk:
        return next(self._it)

    def close(self) -> None:
        """Stop early (e.g. the client went away); the state stays consistent with fed_tokens."""
        self._it.close()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    def _run(self) -> Iterator[Chunk]:
        history = list(self._prompt_ids)
        t0 = time.perf_counter()
        logits = self._seq.prefill(list(self._prefill_ids)) if self._prefill_ids else None
        self.fed_tokens.extend(self._prefill_ids)
        draws = 0      # device draws so far: numbers them for the device RNG
        self.stats.prefill_seconds = time.perf_counter() - t0
        if logits is None:
            raise ValueError("nothing to evaluate: the prompt is empty")
        full = ""      # all text decoded so far
        emitted = 0    # how much of it has been yielded
        pending_ids: list[int] = []
        want_lp = self._logprobs is not None
        pending_lps: list[TokenLogprob] | None = [] if want_lp else None
        t_dec = time.perf_counter()
        try:
            next_tok = None
            while True:
                tok = self._sampler.sample(logits, history) if next_tok is None else next_tok
                if tok in self._eog:
                    self.finish_reason = "stop"
                    break
                self.tokens.append(tok)
                history.append(tok)
                pending_ids.append(tok)
                if want_lp:
                    pending_lps.append(token_logprob(logits, tok, self._logprobs))
                self.stats.generated_tokens += 1
                full += self._dec.push(tok)
                hit = -1
                for s in self._stop:
                    i = full.find(s, max(0, emitted - len(s) + 1))
                    if i >= 0 and (hit < 0 or i < hit):
                        hit = i
                if hit >= 0:
                    self.text = full[:hit]
                    if hit > emitted:
                        yield Chunk(full[emitted:hit], pending_ids, pending_lps)
                    self.finish_reason = "stop"
                    return
                safe = len(full) - _held_back(full, self._stop)
                if safe > emitted:
                    yield Chunk(full[emitted:safe], pending_ids, pending_lps)
                    pending_ids = []
                    pending_lps = [] if want_lp else None
                    emitted = safe
                if len(self.tokens) >= self._max_tokens:
                    self.finish_reason = "length"
                    break
                if self.on_device:
                    next_tok = self._seq.decode(tok, self._device_params, draws)
                    draws += 1
                else:
                    logits = self._seq.step(tok)
                self.fed_tokens.append(tok)
            full += self._dec.flush()
            self.text = full
            if len(full) > emitted or pending_ids:
                yield Chunk(full[emitted:], pending_ids, pending_lps)
        finally:
            self.stats.decode_seconds = time.perf_counter() - t_dec
            if self.finish_reason is None:  # cancelled or failed: report what the caller saw
                self.text = full[:emitted]
