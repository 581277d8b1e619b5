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

A generation under a grammar (pyqwen.constrain: response_format, a forced tool call, a GBNF/Lark
grammar) takes the host path with the grammar's mask applied to each logits row before the Sampler; the
mask for the next token is computed on a worker thread while the forward pass of the current one runs.
Such generations do not speculate: drafts would need checking against the grammar too, and plain decoding
is what the mask's overlap is built around.
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
    # speculative decoding: the mode that ran, verifications, drafted and accepted tokens, and per draft
    # position i (0-based) how often a draft was made there and how often it was accepted
    spec: str = "off"
    verify_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    # constrained decoding: masks applied, the worker's time computing them, and the loop's time waiting
    # for them after the logits were ready (the part of the mask's cost the forward pass did not hide)
    grammar_steps: int = 0
    grammar_mask_seconds: float = 0.0
    grammar_wait_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens produced per verification: the accepted drafts plus the main model's own token."""
        return (self.accepted_tokens + self.verify_steps) / self.verify_steps if self.verify_steps else 0.0

    def count_verify(self, n_drafted: int, n_accepted: int) -> None:
        self.verify_steps += 1
        self.draft_tokens += n_drafted
        self.accepted_tokens += n_accepted
        while len(self.drafted_at) < n_drafted:
            self.drafted_at.append(0)
            self.accepted_at.append(0)
        for i in range(n_drafted):
            self.drafted_at[i] += 1
            self.accepted_at[i] += i < n_accepted

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
        s = (f"prompt {self.prompt_tokens} tok ({self.cached_tokens} cached), "
             f"prefill {self.prefill_tokens_per_second:.1f} tok/s, "
             f"generated {self.generated_tokens} tok, decode {self.decode_tokens_per_second:.1f} tok/s")
        if self.verify_steps:
            s += (f", spec {self.spec}: {self.accepted_tokens}/{self.draft_tokens} drafts accepted "
                  f"({100 * self.acceptance_rate:.0f}%), {self.mean_accepted_length:.2f} tok/verify")
        if self.grammar_steps:
            s += (f", grammar mask {1e3 * self.grammar_mask_seconds / self.grammar_steps:.2f} ms/tok "
                  f"({1e3 * self.grammar_wait_seconds / self.grammar_steps:.2f} ms/tok not hidden by the forward)")
        return s


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

    # speculative decoding (pyqwen.speculative), used only when the backend verifies:
    def verify(self, tokens: list[int], argmax: bool = False) -> np.ndarray: ...  # feed tokens as one
                                                               # batch; logits of each (or their argmax)

    def rollback(self, n_keep: int) -> None: ...               # keep only the first n_keep of them

    def mtp_draft(self, token: int, argmax: bool = False): ...  # one MTP draft step; its logits (argmax)

    # optional, where `fused_greedy_spec` is True (the CPU core): a greedy step's verify + acceptance in one
    # call, and a chain of greedy MTP drafts in one call (pyqwen.Model.verify_greedy / mtp_draft_greedy)
    fused_greedy_spec: bool

    def verify_greedy(self, tokens: list[int]) -> tuple[int, int]: ...  # verify(); (n_acc, next) by argmax

    def mtp_draft_greedy(self, token: int, k: int, p_first: float = 0.0, p_min: float = 0.0) -> list[int]: ...


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

    def verify(self, tokens, argmax=False):
        return self._model.verify(self.state, tokens, argmax=argmax)

    def rollback(self, n_keep):
        self._model.rollback(self.state, n_keep)

    def mtp_draft(self, token, argmax=False):
        return self._model.mtp_draft(self.state, token, argmax=argmax)

    @property
    def fused_greedy_spec(self):
        return bool(getattr(self._model, "fused_greedy_spec", False))

    def verify_greedy(self, tokens):
        return self._model.verify_greedy(self.state, tokens)

    def mtp_draft_greedy(self, token, k, p_first=0.0, p_min=0.0):
        return self._model.mtp_draft_greedy(self.state, token, k, p_first, p_min)


class Generation:
    """Iterator over Chunks of one generation; `.stats`, `.text`, `.tokens`, `.finish_reason` after it ends.

    The sequence's state ends up holding prompt + generated tokens, except the last sampled token (it is
    in `.tokens` but has not been fed back). `.on_device` says which way the tokens were chosen.
    """

    def __init__(self, seq: Sequence, prompt_ids: Seq[int], prefill_ids: Seq[int], sampler, max_tokens: int,
                 eog_ids: set[int], stop: list[str], stream_decoder, stats: GenerationStats,
                 logprobs: int | None = None, spec=None, spec_mtp: bool = False, grammar=None):
        self._seq = seq
        self._grammar = grammar         # a pyqwen.constrain.Grammar: every token is masked by it
        # Device sampling only when the sampler says the device may choose in its place (see module doc)
        # and no logprobs are asked for (they need the logits on the host).
        self._device_params = getattr(sampler, "device_params", None)
        self._logprobs = logprobs       # None: none; n: the chosen token's and the n most likely
        # Speculative decoding (a pyqwen.speculative.SpecConfig, mode resolved for this backend) runs on
        # the host path: drafts are verified against host logits.
        # A sampler with its own `sample` (a test hook scripting tokens) is not a distribution the
        # acceptance rule can reason about: such generations decode plainly.
        from .sampling import Sampler

        custom = getattr(type(sampler), "sample", None) is not Sampler.sample
        self._spec = (spec if spec is not None and spec.mode != "off" and not custom and grammar is None
                      else None)
        self._spec_mtp = spec_mtp       # the state keeps an MTP cache: MTP may draft
        self.on_device = (bool(seq.device_sampling) and self._device_params is not None and logprobs is None
                          and self._spec is None and grammar is None)
        # Greedy speculation on a device-sampling backend with nothing host-only: the device makes every
        # choice (decode() for a step without drafts, the argmax of each verified row, greedy drafts), so
        # no logits cross to the host; the tokens are the same as the host path's.
        self._greedy_device = (self._spec is not None and bool(seq.device_sampling) and
                               self._device_params is not None and self._device_params.greedy and logprobs is None)
        # Greedy speculation with nothing host-only on a backend that fuses the step (the CPU core): one
        # call verifies and accepts by argmax, so no logits rows cross to Python (pyqwen.speculative.accept's
        # greedy rule, with no penalties, is exactly that argmax comparison).
        self._fused = (self._spec is not None and not self._greedy_device and sampler.params.greedy and
                       not sampler.uses_history and logprobs is None and
                       bool(getattr(seq, "fused_greedy_spec", False)))
        if self._spec is not None:
            stats.spec = self._spec.mode
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
        self.stop_string: str | None = None   # the stop string that ended it, if one did
        self.fed_tokens: list[int] = []  # tokens the state has consumed (for session bookkeeping)
        self._verified: list[int] | None = None  # tokens of a verification not yet rolled back
        self._full = ""       # all text decoded so far
        self._emitted = 0     # how much of it is in chunks
        self._yielded = 0     # how much of it the consumer has been given
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
        mask = self._grammar.mask() if self._grammar is not None else None
        try:
            if mask is not None:
                mask.start()           # the first mask is computed while the prompt is prefilled
            yield from self._decode(mask)
        finally:
            if mask is not None:
                mask.close()
                self.stats.grammar_steps = mask.steps
                self.stats.grammar_mask_seconds = mask.compute_seconds
                self.stats.grammar_wait_seconds = mask.wait_seconds

    def _decode(self, mask) -> Iterator[Chunk]:
        history = list(self._prompt_ids)
        t0 = time.perf_counter()
        logits = self._seq.prefill(list(self._prefill_ids)) if self._prefill_ids else None
        self.fed_tokens.extend(self._prefill_ids)
        draws = 0      # device draws so far: numbers them for the device RNG
        self.stats.prefill_seconds = time.perf_counter() - t0
        if logits is None:
            raise ValueError("nothing to evaluate: the prompt is empty")
        drafter = None
        if self._spec is not None:
            from .speculative.policy import Drafter

            drafter = Drafter(self._spec, self._seq, self._sampler, history, self._spec_mtp)
        self._pending_ids: list[int] = []
        self._pending_lps: list[TokenLogprob] | None = [] if self._logprobs is not None else None
        t_dec = time.perf_counter()
        try:
            # Tokens chosen and not yet emitted, each with the logits row it was chosen from (for logprobs).
            # (logits rows are kept unmasked: logprobs report the model's own distribution)
            sample = (self._sampler.sample if mask is None else
                      lambda row, hist: self._sampler.sample(mask.apply(row), hist))
            chosen = [(sample(logits, history), logits)]
            while True:
                chunks, n_done = self._emit(chosen, history)
                finished = self.finish_reason is not None
                if self._verified is not None:
                    # The state holds [token before these, drafts...]: keep what was emitted and is followed
                    # by another emitted token (the last emitted one is never fed, as in plain decoding).
                    fed = self._verified[:1 + (n_done - 1 if finished else len(chosen) - 1)]
                    self._seq.rollback(len(fed))
                    self.fed_tokens.extend(fed)
                    self._verified = None
                for c in chunks:
                    self._yielded += len(c.text)
                    yield c
                if finished:
                    return
                tok = chosen[-1][0]
                if self.on_device:
                    chosen = [(self._seq.decode(tok, self._device_params, draws), None)]
                    draws += 1
                    self.fed_tokens.append(tok)
                    continue
                # Drafts past the token budget could not be used (and must not run past the context).
                limit = self._max_tokens - len(self.tokens) - 1
                source, drafts, q = ("none", [], None)
                if drafter is not None and limit > 0:
                    source, drafts, q = drafter.propose(tok, history, limit)
                if not drafts and self._greedy_device:
                    chosen = [(self._seq.decode(tok, self._device_params, draws), None)]
                    draws += 1
                    self.fed_tokens.append(tok)
                    continue
                if not drafts:
                    if mask is not None:
                        mask.advance(tok)      # on the worker thread, while the forward below runs
                    logits = self._seq.step(tok)
                    self.fed_tokens.append(tok)
                    chosen = [(sample(logits, history), logits)]
                    continue
                if self._fused or self._greedy_device:
                    self._verified = [tok] + drafts
                    n_acc, nxt = self._verify_by_argmax(self._verified)
                    self.stats.count_verify(len(drafts), n_acc)
                    chosen = [(d, None) for d in drafts[:n_acc]] + [(nxt, None)]
                    continue
                rows = self._seq.verify([tok] + drafts)
                self._verified = [tok] + drafts
                n_acc, nxt = self._accept(rows, drafts, q if source == "mtp" else None, history)
                self.stats.count_verify(len(drafts), n_acc)
                chosen = [(d, rows[i]) for i, d in enumerate(drafts[:n_acc])] + [(nxt, rows[n_acc])]
        except BaseException:
            if self._verified is not None:   # an error mid-step: leave the state consistent with fed_tokens
                try:
                    self._seq.rollback(1)
                    self.fed_tokens.append(self._verified[0])
                except Exception:
                    pass
                self._verified = None
            raise
        finally:
            self.stats.decode_seconds = time.perf_counter() - t_dec
            if self.finish_reason is None:  # cancelled or failed: report what the caller saw
                self.text = self._full[:self._yielded]

    def _verify_by_argmax(self, tokens: list[int]) -> tuple[int, int]:
        """Greedy verification where no logits row crosses to Python: (n_acc, next) -- the drafts
        tokens[1:] kept while each equals the argmax after the tokens before it, then that argmax."""
        if self._fused:
            return self._seq.verify_greedy(tokens)
        ids = self._seq.verify(tokens, argmax=True)  # each row's argmax, computed on the device
        drafts = tokens[1:]
        n_acc = next((i for i, d in enumerate(drafts) if int(ids[i]) != d), len(drafts))
        return n_acc, int(ids[n_acc])

    def _accept(self, rows, drafts: list[int], q, history: list[int]) -> tuple[int, int]:
        """How many drafts the main model accepts and its own next token (pyqwen.speculative.accept)."""
        from .speculative.accept import accept

        return accept(self._sampler, rows, drafts, history, q)

    def _emit(self, chosen, history: list[int]) -> tuple[list[Chunk], int]:
        """Run the chosen tokens through the end checks (end of generation, stop strings, max_tokens) and
        the text decoder, in order, until one ends the generation. Returns the chunks to yield and how
        many tokens were taken (the one that ended it included). Nothing is yielded here, so the caller
        can settle the state before the consumer sees (and maybe closes on) any of it."""
        chunks: list[Chunk] = []
        want_lp = self._logprobs is not None
        for i, (tok, row) in enumerate(chosen):
            if tok in self._eog:
                self.finish_reason = "stop"
                self._finish_text(chunks)
                return chunks, i + 1
            self.tokens.append(tok)
            history.append(tok)
            self._pending_ids.append(tok)
            if want_lp:
                self._pending_lps.append(token_logprob(row, tok, self._logprobs))
            self.stats.generated_tokens += 1
            self._full += self._dec.push(tok)
            full, emitted = self._full, self._emitted
            hit = -1
            for s in self._stop:
                j = full.find(s, max(0, emitted - len(s) + 1))
                if j >= 0 and (hit < 0 or j < hit):
                    hit, self.stop_string = j, s
            if hit >= 0:
                self.text = full[:hit]
                if hit > emitted:
                    chunks.append(Chunk(full[emitted:hit], self._pending_ids, self._pending_lps))
                self._emitted = max(emitted, hit)
                self.finish_reason = "stop"
                return chunks, i + 1
            safe = len(full) - _held_back(full, self._stop)
            if safe > emitted:
                chunks.append(Chunk(full[emitted:safe], self._pending_ids, self._pending_lps))
                self._pending_ids = []
                self._pending_lps = [] if want_lp else None
                self._emitted = safe
            if len(self.tokens) >= self._max_tokens:
                self.finish_reason = "length"
                self._finish_text(chunks)
                return chunks, i + 1
        return chunks, len(chosen)

    def _finish_text(self, chunks: list[Chunk]) -> None:
        self._full += self._dec.flush()
        self.text = self._full
        if len(self._full) > self._emitted or self._pending_ids:
            chunks.append(Chunk(self._full[self._emitted:], self._pending_ids, self._pending_lps))
        self._emitted = len(self._full)
