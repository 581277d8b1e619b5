"""The contract between pyqwen.Model (and the generation loop) and a compute backend, written once.

Two backends satisfy it: `CpuCore` below (a thin wrapper of the C++ pyqwen._core.Model) and
pyqwen.cuda_backend.CudaCore. Everything above them -- Model, the session cache, the generation loop,
the server -- only uses these methods:

- new_state(n_ctx, kv_type) -> state            a sequence state (KV cache + recurrent states; .pos, .n_ctx,
                                                .nbytes, .reset())
- forward(state, tokens, logits, n_batch)       feed int32 tokens; logits 'last' [n_vocab], 'all' [n, n_vocab]
                                                or 'none' (None), as float32 host arrays
- snapshot(state, with_kv) / restore(state, snap)   checkpoints of the state
- decode(state, token, params, counter) -> int  feed one token and return the next one, chosen by the
                                                sampling params (pyqwen.sampling.SamplingParams; None or
                                                greedy = argmax); `counter` numbers the draws of one
                                                generation so a seed reproduces them
- device_sampling: bool                         True when decode() chooses the token where the logits are
                                                (only the id crosses to the host); the generation loop
                                                then uses decode() for requests that need nothing
                                                host-only. False: the loop uses forward() + the host
                                                Sampler (whose numpy RNG stream a seed reproduces).

Speculative decoding (pyqwen.speculative), where `speculation` is True:
- new_state(n_ctx, kv_type, mtp=True)           a state that also keeps the MTP head's cache (has_mtp models)
- verify(state, tokens, argmax=False) -> [n, n_vocab]   feed the last sampled token and the drafts as one
                                                batch; argmax=True: only each row's argmax [n] (greedy
                                                acceptance; a device backend keeps the rows on the device)
- rollback(state, n_keep)                       after verify: the state as if only n_keep of them were fed,
                                                bit-identical to feeding exactly those
- mtp_draft(state, token, argmax=False) -> [n_vocab]   one MTP draft step (chained until the next
                                                forward/verify); argmax=True: only the argmax (an int)
- eval_mtp(tokens) -> [n - 1, n_vocab]          the MTP's draft logits over a fresh sequence
Optional (the CPU core; the generation loop's fast path for greedy decoding without penalties):
- verify_greedy(state, tokens) -> (n_acc, next)  verify and accept by argmax in one call (no logits cross);
                                                rollback follows as after verify
- mtp_draft_greedy(state, token, k, p_first=0, p_min=0) -> [<= k ids]   chained greedy MTP drafts in one
                                                call, stopping before a draft whose top probability is below
                                                p_first (the first) / p_min (the others)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "CoreAdapter", "CpuCore"]


@runtime_checkable
class Backend(Protocol):
    device_sampling: bool

    @property
    def config(self) -> dict: ...

    def new_state(self, n_ctx: int, kv_type: str = "f16") -> Any: ...

    def forward(self, state: Any, tokens: np.ndarray, logits: str = "last", n_batch: int = 256) -> Any: ...

    def snapshot(self, state: Any, with_kv: bool = False) -> Any: ...

    def restore(self, state: Any, snapshot: Any) -> None: ...

    def decode(self, state: Any, token: int, params: Any = None, counter: int = 0) -> int: ...


class CoreAdapter:
    """The contract's state methods over a C++ model class (pyqwen._core.Model, pyqwen._cuda.CudaModel):
    both take the same arguments (csrc/common/config_py.h), so one adapter serves both backends."""

    def __init__(self, model):
        self._m = model

    @property
    def config(self) -> dict:
        return self._m.config

    def new_state(self, n_ctx: int, kv_type: str = "f16", mtp: bool = False, kv_rotation: bool = True):
        # kv_rotation=False: a quantized cache of plain rows (both cores take the option; rotated by default)
        if not kv_rotation:
            return self._m.new_state(n_ctx, kv_type, mtp, False)
        return self._m.new_state(n_ctx, kv_type, mtp)

    @property
    def speculation(self) -> bool:
        """Whether this backend verifies drafts and rolls back (see the module doc)."""
        return hasattr(self._m, "verify")

    @property
    def has_mtp(self) -> bool:
        return bool(getattr(self._m, "has_mtp", False))

    def verify(self, state, tokens, argmax: bool = False):
        rows = self._m.verify(state, np.ascontiguousarray(tokens, dtype=np.int32))
        return rows.argmax(axis=1).astype(np.int32) if argmax else rows

    def rollback(self, state, n_keep: int) -> None:
        self._m.rollback(state, int(n_keep))

    def mtp_draft(self, state, token: int, argmax: bool = False):
        logits = self._m.mtp_draft(state, int(token))
        return int(np.argmax(logits)) if argmax else logits

    def eval_mtp(self, tokens):
        return self._m.eval_mtp(np.ascontiguousarray(tokens, dtype=np.int32))

    def forward(self, state, tokens, logits: str = "last", n_batch: int = 256):
        return self._m.forward(state, np.ascontiguousarray(tokens, dtype=np.int32), logits, n_batch)

    def snapshot(self, state, with_kv: bool = False):
        return self._m.snapshot(state, with_kv)

    def restore(self, state, snapshot) -> None:
        self._m.restore(state, snapshot)


class CpuCore(CoreAdapter):
    """pyqwen._core.Model under the Backend contract. The logits live in host memory already, so
    decode() is forward() + the host sampler, with a numpy RNG keyed by (seed, counter)."""

    backend = "cpu"
    device_sampling = False

    def decode(self, state, token: int, params=None, counter: int = 0) -> int:
        from .sampling import Sampler, SamplingParams

        logits = self._m.forward(state, np.array([int(token)], np.int32), "last", 1)
        if params is None:
            params = SamplingParams(temperature=0.0)
        sampler = Sampler(params)
        seed = params.seed if params.seed is not None else 0x5eed
        sampler.rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, counter])
        return sampler.sample(logits)

    def verify_greedy(self, state, tokens) -> tuple[int, int]:
        return self._m.verify_greedy(state, tokens)

    def mtp_draft_greedy(self, state, token: int, k: int, p_first: float = 0.0, p_min: float = 0.0) -> list[int]:
        return self._m.mtp_draft_greedy(state, int(token), int(k), float(p_first), float(p_min))

    def __getattr__(self, name: str):
        # Anything else the C++ class offers (introspection, timings) stays reachable.
        return getattr(self._m, name)
