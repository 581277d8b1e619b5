"""Multi-turn state reuse: sessions with recurrent-state checkpoints.

A qwen35 sequence state is a KV cache (16 attention layers, one row per position, append-only) plus
conv and SSM states of the 48 Gated DeltaNet layers that summarise *all* tokens so far. The KV cache can
be cut back to any prefix by moving `pos` back, the recurrent states cannot: going back to position p
needs a checkpoint taken at p (`Model.snapshot(state)`: conv + SSM + pos, ~150 MiB for the 27B).
Restoring a checkpoint is exact as long as KV rows [0, p) still hold the same tokens, which they do
when the token sequence the state has consumed agrees with the checkpoint's up to p.

`SessionCache` keeps, per session key, one state, the tokens it has consumed and a list of checkpoints.
For a new prompt it finds the longest common prefix (LCP) with the consumed tokens; if the prompt
extends them, the live state continues; otherwise it restores the newest checkpoint at or before the
LCP and prefills the rest. Checkpoints are taken where the next request is likely to diverge (the caller
names the positions, the prefill is cut into pieces so they fall on piece boundaries). For a chat prompt
`chat_checkpoints` picks them; see its docstring for why those places.

Memory: states and checkpoints count against `cache_ram_mib`. When over budget, the least recently used
items go first: old checkpoints, then whole idle sessions (state + checkpoints). The session being
served is never evicted, so one session may exceed a budget smaller than a single state.

Not thread-safe: one generation at a time (the server runs all model work on one worker thread).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .errors import ContextOverflowError
from .generation import Generation, GenerationStats

_clock = itertools.count(1)  # logical time for LRU ordering (monotonic, no ties)


def _quiet(done: int, total: int) -> bool:
    """The progress callback of each piece: the session reports the whole feed's progress itself."""
    return True


class Cancelled(Exception):
    """Raised inside a prefill when the caller's cancel() returns True (between pieces)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: conversations share long prefixes.
    step = 256
    while i + step <= n and list(a[i:i + step]) == list(b[i:i + step]):
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Checkpoint:
    pos: int
    snap: Any
    nbytes: int
    kind: str                 # "user" | "query" | "gen" | "prompt_end" | "reply_end" | ...
    last_used: int = field(default_factory=lambda: next(_clock))


@dataclass
class Session:
    key: str
    anonymous: bool = False
    state: Any = None
    tokens: list[int] = field(default_factory=list)     # what `state` has consumed, in order
    checkpoints: list[Checkpoint] = field(default_factory=list)  # sorted by pos
    last_used: int = field(default_factory=lambda: next(_clock))
    busy: bool = False
    prompt_len: int = 0      # length of the last prompt served (anonymous routing compares with it)
    verify_len: int = 0      # tokens of a speculative verification not yet rolled back

    @property
    def nbytes(self) -> int:
        return (self.state.nbytes if self.state is not None else 0) + sum(c.nbytes for c in self.checkpoints)

    def checkpoint_at(self, pos: int) -> Checkpoint | None:
        for c in self.checkpoints:
            if c.pos == pos:
                return c
        return None


@dataclass
class CacheStats:
    requests: int = 0
    hits: int = 0                  # requests that reused at least one token
    prompt_tokens: int = 0
    cached_tokens: int = 0
    checkpoints_made: int = 0
    checkpoints_restored: int = 0
    evicted_checkpoints: int = 0
    evicted_sessions: int = 0
    aligned_tokens: int = 0        # tokens re-prefilled after a reply to match the re-rendered history


def chat_checkpoints(prompt_text: str, prompt_ids: Sequence[int], tokenize: Callable[[str], list[int]],
                     last_role: str | None = None) -> list[tuple[int, str]]:
    """Where to checkpoint a chat prompt (Qwen3.6 template): [(position, kind), ...].

    The next request re-renders the whole conversation. Relative to what the state consumed (this
    prompt + the generated reply, minus the final <|im_end|> which was sampled but not fed), it diverges:

    * not at all when the reply re-renders token-identically (preserve_thinking=true, or the reply is
      after the last user query, e.g. an agent's tool loop): the live state simply continues;
    * at `<think>` of the assistant turn ("gen", just after `<|im_start|>assistant\\n`) when a new user
      query makes the template drop earlier reasoning (preserve_thinking false/unset): history then
      renders `<|im_start|>assistant\\n` + content, where the prompt had `<think>\\n`. When several
      assistant turns followed one query (a tool loop), all of them lose their reasoning, so the
      checkpoint of the *first* request after the query ("query" kind) is the one needed;
    * somewhere inside the reply when its text does not re-render identically (whitespace the template
      trims, a tool call's formatting, a length/stop cut, non-canonical tokenization): the checkpoint
      before `<think>` bounds the loss to the reply (plus the 2 tokens of `<think>\n`, which the template
      counts as part of the reply). A separate checkpoint at the very end of the prompt ("prompt_end")
      is only taken when the prompt does not end with that header (e.g. a raw or unusual template):
      for the 27B each checkpoint is ~150 MiB of copying and memory, not worth 2 tokens of prefill;
    * at the start of the last user/tool message ("user") when a client edits or retries it.
    The end of the reply is checkpointed after generation (Turn.align / Turn.checkpoint).
    """
    L = len(prompt_ids)
    out: list[tuple[int, str]] = []

    def pos_of(char_off: int) -> int | None:
        # Special tokens split the text, so text on either side of one tokenizes on its own: the suffix
        # (short, unlike the history) gives the position. Checked, in case a template breaks that.
        ids = tokenize(prompt_text[char_off:])
        if len(ids) <= L and list(prompt_ids[L - len(ids):]) == ids:
            return L - len(ids)
        return None

    u = prompt_text.rfind("<|im_start|>user")
    if u > 0:
        p = pos_of(u)
        if p:
            out.append((p, "user"))
    hdr = "<|im_start|>assistant\n"
    g = prompt_text.rfind(hdr)
    gen = None
    if g >= 0 and len(prompt_text) - (g + len(hdr)) <= 64:  # the generation prompt's header
        gen = pos_of(g + len(hdr))
        if gen and gen < L:
            out.append((gen, "query" if last_role == "user" else "gen"))
    if not gen or L - gen > 8:
        out.append((L, "prompt_end"))
    return out


class Turn:
    """One request on a session (from SessionCache.open): `generate(...)`, then `align(...)` or
    `checkpoint(...)`, then `close()` (or use `with`)."""

    def __init__(self, cache: "SessionCache", session: Session, prompt_ids: list[int], n_cached: int,
                 checkpoints: Sequence[tuple[int, str]], cancel: Callable[[], bool] | None):
        self.cache = cache
        self.session = session
        self.prompt_ids = prompt_ids
        self.n_cached = n_cached
        self._checkpoints = sorted((p, k) for p, k in checkpoints if n_cached < p <= len(prompt_ids))
        self._cancel = cancel
        self.prefill_seconds = 0.0
        self.generation: Generation | None = None

    def __enter__(self) -> "Turn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def state(self):
        return self.session.state

    # ---- the generation loop's Sequence (pyqwen.generation): every token fed is recorded ----------

    @property
    def device_sampling(self) -> bool:
        return bool(self.cache.model.device_sampling)

    def prefill(self, toks: list[int]):
        """The uncached part of the prompt, in pieces with checkpoints (and cancel checks) between them."""
        return self.cache._feed(self.session, toks, self._checkpoints, "last", self._cancel)

    def step(self, token: int):
        return self.cache._feed(self.session, [token], (), "last", None)

    def decode(self, token: int, params, counter: int) -> int:
        return self.cache._decode(self.session, token, params, counter)

    def verify(self, tokens: list[int], argmax: bool = False):
        return self.cache._verify(self.session, tokens, argmax)

    def rollback(self, n_keep: int) -> None:
        self.cache._rollback(self.session, n_keep)

    def mtp_draft(self, token: int, argmax: bool = False):
        return self.cache.model.mtp_draft(self.session.state, token, argmax=argmax)

    @property
    def fused_greedy_spec(self) -> bool:
        return bool(getattr(self.cache.model, "fused_greedy_spec", False))

    def verify_greedy(self, tokens: list[int]) -> tuple[int, int]:
        return self.cache._verify_greedy(self.session, tokens)

    def mtp_draft_greedy(self, token: int, k: int, p_first: float = 0.0, p_min: float = 0.0) -> list[int]:
        return self.cache.model.mtp_draft_greedy(self.session.state, token, k, p_first, p_min)

    def generate(self, sampler, max_tokens: int, eog_ids: set[int], stop: list[str], stream_decoder,
                 logprobs: int | None = None, spec: str | None = None, draft: int | None = None,
                 grammar=None) -> Generation:
        """A Generation continuing this prompt; it prefills only prompt_ids[n_cached:]."""
        ids = self.prompt_ids
        room = self.state.n_ctx - len(ids)
        if room < 1:
            raise ContextOverflowError(f"prompt of {len(ids)} tokens does not fit in the context of "
                                       f"{self.state.n_ctx} tokens (one more is needed to generate)")
        stats = GenerationStats(prompt_tokens=len(ids), cached_tokens=self.n_cached)
        model = self.cache.model
        spec = model.spec_for(spec, draft, self.state) if hasattr(model, "spec_for") else None
        self.generation = Generation(self, ids, ids[self.n_cached:], sampler, min(max_tokens, room),
                                     eog_ids, stop, stream_decoder, stats, logprobs,
                                     spec=spec, spec_mtp=bool(getattr(self.state, "has_mtp", False)),
                                     grammar=grammar)
        return self.generation

    def checkpoint(self, kind: str) -> Checkpoint | None:
        """Snapshot the session's state at its current position."""
        return self.cache._checkpoint(self.session, kind)

    def align(self, target_ids: Sequence[int], kind: str = "reply_end") -> int:
        """Make the state hold exactly target_ids (e.g. the re-rendered history of the reply just made);
        returns how many tokens that took to prefill. Then checkpoints the end as `kind`."""
        n = self.cache._align(self.session, list(target_ids))
        if kind:
            self.checkpoint(kind)
        return n

    def close(self) -> None:
        if self.generation is not None:
            self.generation.close()
        self.cache._release(self.session)


class SessionCache:
    """Sessions (key -> state, consumed tokens, checkpoints) under one memory budget."""

    def __init__(self, model, *, cache_ram_mib: float = 8192, max_checkpoints: int = 32,
                 max_anonymous: int = 4, anon_similarity: float = 0.5, piece_tokens: int | None = None):
        self.model = model
        self.budget = int(cache_ram_mib * 2 ** 20)
        self.max_checkpoints = max_checkpoints
        self.max_anonymous = max_anonymous
        self.anon_similarity = anon_similarity
        # Long prefills go in pieces of this many tokens so a cancel is noticed between them.
        self.piece_tokens = piece_tokens or max(256, 4 * getattr(model, "n_batch", 256))
        self.sessions: dict[str, Session] = {}
        self.stats = CacheStats()
        self._anon = itertools.count(1)

    # ---- accounting ----------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.sessions.values())

    @property
    def n_checkpoints(self) -> int:
        return sum(len(s.checkpoints) for s in self.sessions.values())

    def _enforce_budget(self, reserve: int = 0) -> None:
        """Evict until states + checkpoints + `reserve` bytes fit in the budget (or nothing is left)."""
        budget = self.budget - reserve
        total = self.nbytes
        if total <= budget:
            return
        items = []
        for s in self.sessions.values():
            # A session's newest checkpoint of each kind is part of its working set: it ages with the
            # session, not from when it was taken (the "query" one is what a new user turn needs).
            newest: dict[str, Checkpoint] = {}
            for c in s.checkpoints:
                if c.kind not in newest or c.pos > newest[c.kind].pos:
                    newest[c.kind] = c
            keep = {id(c) for c in newest.values()}
            for c in s.checkpoints:
                items.append((s.last_used if id(c) in keep else c.last_used, 0, s, c))
            if not s.busy:
                items.append((s.last_used, 1, s, None))
        items.sort(key=lambda t: (t[0], t[1]))
        for _, _, s, c in items:
            if total <= budget:
                break
            if s.key not in self.sessions:
                continue
            if c is None:
                total -= s.nbytes
                self._drop_session(s)
            elif c in s.checkpoints:
                s.checkpoints.remove(c)
                total -= c.nbytes
                self.stats.evicted_checkpoints += 1

    def _drop_session(self, s: Session) -> None:
        self.stats.evicted_checkpoints += len(s.checkpoints)
        self.stats.evicted_sessions += 1
        s.checkpoints.clear()
        s.state = None
        s.tokens = []
        self.sessions.pop(s.key, None)

    def drop(self, key: str) -> bool:
        s = self.sessions.get(key)
        if s is None or s.busy:
            return False
        self._drop_session(s)
        return True

    def clear(self) -> None:
        for s in list(self.sessions.values()):
            if not s.busy:
                self._drop_session(s)

    # ---- sessions ------------------------------------------------------------------------------

    def _select(self, key: str | None, prompt_ids: Sequence[int]) -> Session:
        if key is not None:
            s = self.sessions.get(key)
            if s is None:
                s = self.sessions[key] = Session(key=key)
            return s
        # No key: among anonymous sessions take the one that reuses most, unless that would throw away
        # most of its last prompt (another conversation probably owns it: take a fresh one). Its last
        # reply does not count: a retry or a follow-up replaces or extends it.
        anon = [s for s in self.sessions.values() if s.anonymous and not s.busy]
        best, best_n = None, -1
        for s in anon:
            n = common_prefix(s.tokens, prompt_ids)
            if n > best_n:
                best, best_n = s, n
        if best is not None and (best_n >= self.anon_similarity * best.prompt_len or not best.tokens):
            return best
        if len(anon) < self.max_anonymous:
            k = f"anon-{next(self._anon)}"
            s = self.sessions[k] = Session(key=k, anonymous=True)
            return s
        if best is not None and best_n > 0:
            return best
        return min(anon, key=lambda s: s.last_used)

    def _ensure_state(self, s: Session) -> None:
        if s.state is not None:
            return
        # Make room first (idle sessions go, LRU) so the new state takes the place of evicted ones.
        per_state = next((o.state.nbytes for o in self.sessions.values() if o.state is not None), 0)
        self._enforce_budget(reserve=per_state)
        s.state = self.model.new_state()
        s.tokens = []
        s.checkpoints = []

    def open(self, key: str | None, prompt_ids: Sequence[int], checkpoints: Iterable[tuple[int, str]] = (),
             cancel: Callable[[], bool] | None = None) -> Turn:
        """Route a prompt to its session and bring the state to the longest reusable prefix.

        checkpoints: [(position, kind)] to snapshot while prefilling (positions in the prompt; those at
        or before the reused prefix are already covered and skipped)."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        s = self._select(key, prompt_ids)
        if s.busy:
            raise RuntimeError(f"session {s.key!r} is in use")
        s.busy = True
        s.prompt_len = len(prompt_ids)
        try:
            self._ensure_state(s)
            s.last_used = next(_clock)
            n = self._rewind(s, prompt_ids, len(prompt_ids) - 1)  # keep >= 1 token to get logits from
        except BaseException:
            s.busy = False
            raise
        self.stats.requests += 1
        self.stats.prompt_tokens += len(prompt_ids)
        self.stats.cached_tokens += n
        self.stats.hits += n > 0
        return Turn(self, s, prompt_ids, n, list(checkpoints), cancel)

    def _rewind(self, s: Session, ids: Sequence[int], limit: int) -> int:
        """Bring s to the longest prefix of ids (at most `limit` tokens) it can reach; returns its length."""
        lcp = common_prefix(s.tokens, ids)
        cap = min(lcp, limit)
        # Checkpoints beyond the common prefix were taken on tokens that are about to be overwritten.
        dropped = [c for c in s.checkpoints if c.pos > lcp]
        if dropped:
            s.checkpoints = [c for c in s.checkpoints if c.pos <= lcp]
        if cap == len(s.tokens):
            return cap  # the live state continues
        ck = None
        for c in s.checkpoints:
            if c.pos <= cap and (ck is None or c.pos > ck.pos):
                ck = c
        if ck is None:
            s.state.reset()
            s.tokens = []
            return 0
        self.model.restore(s.state, ck.snap)
        ck.last_used = next(_clock)
        self.stats.checkpoints_restored += 1
        s.tokens = s.tokens[:ck.pos]
        return ck.pos

    def _release(self, s: Session) -> None:
        if not s.busy:
            return
        s.busy = False
        s.last_used = next(_clock)
        if s.state is not None and s.state.pos != len(s.tokens):
            self._invalidate(s)  # should not happen; never serve an inconsistent state
        self._enforce_budget()

    def _invalidate(self, s: Session) -> None:
        s.checkpoints.clear()
        s.tokens = []
        if s.state is not None:
            s.state.reset()

    # ---- model work ----------------------------------------------------------------------------

    def _checkpoint(self, s: Session, kind: str) -> Checkpoint | None:
        pos = len(s.tokens)
        if pos == 0:
            return None
        c = s.checkpoint_at(pos)
        if c is not None:
            c.last_used = next(_clock)
            if kind == "query":
                c.kind = kind
            return c
        snap = self.model.snapshot(s.state)
        c = Checkpoint(pos=pos, snap=snap, nbytes=int(snap.nbytes), kind=kind)
        s.checkpoints.append(c)
        s.checkpoints.sort(key=lambda c: c.pos)
        self.stats.checkpoints_made += 1
        if len(s.checkpoints) > self.max_checkpoints:
            # Oldest first, but keep the newest of each kind.
            newest = {}
            for x in s.checkpoints:
                if x.kind not in newest or x.pos > newest[x.kind].pos:
                    newest[x.kind] = x
            keep = {id(x) for x in newest.values()}
            victims = sorted((x for x in s.checkpoints if id(x) not in keep), key=lambda x: x.last_used)
            for v in victims[:len(s.checkpoints) - self.max_checkpoints]:
                s.checkpoints.remove(v)
                self.stats.evicted_checkpoints += 1
        return c

    def _feed(self, s: Session, toks: Sequence[int], checkpoints: Sequence[tuple[int, str]], logits: str,
              cancel: Callable[[], bool] | None):
        """Run toks through s's state, snapshotting at the given absolute positions on the way."""
        toks = list(toks)
        base = len(s.tokens)
        cuts = sorted({p for p, _ in checkpoints if base < p <= base + len(toks)})
        kinds: dict[int, str] = {}
        for p, k in checkpoints:
            if k == "query" or p not in kinds:
                kinds[p] = k
        bounds = []
        start = base
        for p in cuts + [base + len(toks)]:
            while p - start > self.piece_tokens:
                bounds.append(start + self.piece_tokens)
                start += self.piece_tokens
            if p > start:
                bounds.append(p)
                start = p
        out = None
        prev = base
        progress = getattr(self.model, "progress", None)  # the whole feed's, not each piece's
        if progress is not None and len(toks) > self.piece_tokens:
            progress(0, len(toks))
        for i, b in enumerate(bounds):
            if cancel is not None and cancel():
                raise Cancelled()
            last = i == len(bounds) - 1
            try:
                out = self.model.forward(s.state, toks[prev - base:b - base], logits=logits if last else "none",
                                         progress=_quiet)
            except ContextOverflowError:
                raise  # checked before the state is touched
            except BaseException:
                self._invalidate(s)
                raise
            s.tokens.extend(toks[prev - base:b - base])
            prev = b
            if progress is not None and len(toks) > self.piece_tokens:
                progress(prev - base, len(toks))
            if b in kinds:
                self._checkpoint(s, kinds[b])
        return out

    def _decode(self, s: Session, token: int, params, counter: int) -> int:
        """Feed one token and let the backend choose the next on its device."""
        try:
            nxt = self.model.decode(s.state, token, params, counter)
        except BaseException:
            self._invalidate(s)
            raise
        s.tokens.append(int(token))
        return nxt

    def _verify(self, s: Session, toks: list[int], argmax: bool = False):
        """Feed a speculative verification batch (recorded; _rollback trims it to what was accepted)."""
        return self._recorded_verify(s, toks, lambda: self.model.verify(s.state, toks, argmax=argmax))

    def _verify_greedy(self, s: Session, toks: list[int]) -> tuple[int, int]:
        """The fused greedy verification (Model.verify_greedy), recorded as _verify records its batch."""
        return self._recorded_verify(s, toks, lambda: self.model.verify_greedy(s.state, toks))

    def _recorded_verify(self, s: Session, toks: list[int], run):
        # A context overflow is refused before anything is fed (the state is intact); any other failure
        # leaves the state unknown, so the session is dropped.
        try:
            out = run()
        except ContextOverflowError:
            raise
        except BaseException:
            self._invalidate(s)
            raise
        s.tokens.extend(int(t) for t in toks)
        s.verify_len = len(toks)
        return out

    def _rollback(self, s: Session, n_keep: int) -> None:
        n = s.verify_len
        try:
            self.model.rollback(s.state, n_keep)
        except BaseException:
            self._invalidate(s)
            raise
        del s.tokens[len(s.tokens) - n + n_keep:]
        s.verify_len = 0

    def _align(self, s: Session, target: list[int]) -> int:
        if s.tokens == target:
            return 0
        n = self._rewind(s, target, len(target))
        rest = target[n:]
        if rest:
            self._feed(s, rest, (), "none", None)
        self.stats.aligned_tokens += len(rest)
        return len(rest)

    # ---- convenience ---------------------------------------------------------------------------

    def prefill(self, key: str | None, prompt_ids: Sequence[int], checkpoints: Iterable[tuple[int, str]] = ()):
        """Bring session `key` to prompt_ids and return (logits of the last token, n_cached)."""
        with self.open(key, prompt_ids, checkpoints) as turn:
            t0 = time.perf_counter()
            logits = self._feed(turn.session, turn.prompt_ids[turn.n_cached:], turn._checkpoints, "last", None)
            turn.prefill_seconds = time.perf_counter() - t0
            return logits, turn.n_cached

    def info(self) -> dict:
        """Counts for monitoring; safe to call from another thread while the worker runs."""
        for _ in range(20):
            try:
                sessions = list(self.sessions.values())
                states = [s.state for s in sessions]
                cks = [c for s in sessions for c in list(s.checkpoints)]
                return {"sessions": len(sessions), "states": sum(st is not None for st in states),
                        "checkpoints": len(cks),
                        "bytes": sum(st.nbytes for st in states if st is not None) + sum(c.nbytes for c in cks),
                        "budget_bytes": self.budget}
            except (RuntimeError, AttributeError):  # changed under our feet: try again
                continue
        return {"sessions": 0, "states": 0, "checkpoints": 0, "bytes": 0, "budget_bytes": self.budget}
