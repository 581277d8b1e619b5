"""The CUDA backend as a drop-in for the CPU core object (pyqwen._core.Model).

`CudaCore` has the methods pyqwen.Model uses on its core -- new_state, forward, snapshot, restore,
config -- backed by pyqwen._cuda.CudaModel (cuda/model/model.cu): weights uploaded once to the GPU,
states (KV cache in f16, q8_0 or q4_0 for K and V, F32 recurrent states) in device memory, snapshots
(the session cache's checkpoints) in pinned host memory, the forward pass on the GPU, decode steps
replayed as CUDA graphs. On top of that:

- `decode(state, token, params)`: one step with the next token chosen on the GPU (argmax, or
  temperature / top-k / top-p / min-p sampling with a seeded counter-based RNG); only the token id
  crosses to the host (`device_sampling = True`: the generation loop, pyqwen.generation, uses it for
  every request that needs nothing host-only). Repetition/presence penalties need the token history:
  decode() refuses them, and the loop uses forward() + the host Sampler for such requests (logits
  cross to the host, 1 MB per step on the 27B).
- speculative decoding (pyqwen.backend's contract: verify, rollback, mtp_draft, eval_mtp; the MTP head
  uploaded when the file has a usable one): verification rows are computed with each token's one-token
  step arithmetic, so greedy speculative output is plain device decoding's, token for token.
- a memory plan (pyqwen.memory_plan) checked against the device's free memory before anything is
  allocated: a model that does not fit raises OutOfGPUMemory naming the largest context that does.

    from pyqwen.cuda_backend import CudaCore, cuda_available
    core = CudaCore.from_gguf(gguf_file, n_ctx=8192)      # upload with a progress bar
    st = core.new_state(8192); logits = core.forward(st, np.array(ids, np.int32), "last", 256)
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable

import numpy as np

from .backend import CoreAdapter
from .kv_cache import kv_pair, kv_spec
from .memory_plan import CUDA_RUNTIME_RESERVE_BYTES, DEFAULT_SNAPSHOTS, KV_SUPPORTED, OutOfGPUMemory, Plan, plan_for

__all__ = ["CudaCore", "cuda_available", "cuda_module", "select_backend", "OutOfGPUMemory"]


def cuda_module():
    """pyqwen._cuda, or None when it is not built."""
    try:
        from . import _cuda
    except ImportError:
        return None
    return _cuda


# Reasons cuda_available gives for a machine that simply has no GPU: 'auto' falls back to the CPU silently.
_NO_GPU = ("pyqwen._cuda is not built", "no CUDA device")


def cuda_available(module=None, device: int = 0) -> str | None:
    """None when the CUDA backend can run here (on CUDA device `device`), else the reason it cannot.

    A failed device query other than "no device" (e.g. cudaErrorInsufficientDriver: the driver is older
    than the CUDA runtime pyqwen._cuda was built with) is reported as such, not as a missing GPU.
    """
    mod = module if module is not None else cuda_module()
    if mod is None:
        return "pyqwen._cuda is not built (install with nvcc available, PYQWEN_CUDA=on)"
    if not hasattr(mod, "CudaModel"):
        return "pyqwen._cuda has no CudaModel (built from an older source tree)"
    try:
        if hasattr(mod, "device_query"):
            n, err = mod.device_query()
        else:
            n, err = mod.device_count(), ""
    except Exception as e:  # a broken driver install
        return f"CUDA device query failed: {e}"
    if err and not err.startswith("cudaErrorNoDevice"):
        hint = (" (the NVIDIA driver is older than the CUDA runtime pyqwen._cuda was built with: update the "
                "driver, or rebuild against an older CUDA toolkit)" if "InsufficientDriver" in err else "")
        return f"CUDA device query failed: {err}{hint}"
    if n <= 0:
        return "no CUDA device (or no driver) is visible"
    if not 0 <= device < n:
        return f"CUDA device {device} does not exist ({n} visible; CUDA_VISIBLE_DEVICES selects and renumbers them)"
    return None


def cuda_kv_problem(kv_type: str) -> str | None:
    """Why the CUDA backend cannot keep this KV cache ('f16', 'q8_0', 'q4_0' or 'K,V'), or None."""
    bad = [t for t in kv_pair(kv_spec(kv_type)) if t not in KV_SUPPORTED]
    if bad:
        return (f"the CUDA backend's KV cache is {', '.join(KV_SUPPORTED)} for K and V; "
                f"kv_type {kv_type!r} ({bad[0]}) runs on the CPU backend (backend='cpu')")
    return None


def select_backend(backend: str, kv_type: str = "f16", module=None, device: int = 0) -> str:
    """'cpu' or 'cuda' for Model.load's backend argument.

    'auto' is 'cuda' when pyqwen._cuda imports and sees the device (and the KV type is one the GPU
    kernels implement: f16, q8_0, q4_0, for K and V independently), else 'cpu' -- with a RuntimeWarning
    naming the reason when a GPU stack is there but unusable (an old driver, a bad device index), never
    silently. 'cuda' raises RuntimeError naming why it cannot run (ValueError for an f32 KV cache).
    """
    if backend not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "cpu":
        return "cpu"
    why = cuda_available(module, device)
    if backend == "cuda":
        if why is not None:
            raise RuntimeError(f"the CUDA backend is not available: {why}")
        kv_why = cuda_kv_problem(kv_type)
        if kv_why is not None:
            raise ValueError(kv_why)
        return "cuda"
    if why is not None and not why.startswith(_NO_GPU):
        warnings.warn(f"backend 'auto' runs on the CPU: {why}", RuntimeWarning, stacklevel=3)
    return "cuda" if why is None and cuda_kv_problem(kv_type) is None else "cpu"


def _progress_bar(total: int, enabled: bool | None):
    """A tqdm byte counter on stderr (only on a terminal unless enabled=True), or None."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="uploading weights to the GPU",
                leave=False, file=sys.stderr)


class CudaCore(CoreAdapter):
    """The pyqwen.backend.Backend contract on the GPU (see the module doc)."""

    backend = "cuda"
    device_sampling = True   # decode() samples on the GPU: the generation loop uses it when it can

    def __init__(self, model, plan: Plan | None = None, module=None):
        super().__init__(model)
        self._mod = module
        self.plan = plan

    @classmethod
    def from_gguf(cls, gguf, n_ctx: int, *, n_batch: int = 256, kv_type: str = "f16",
                  n_snapshots: int = DEFAULT_SNAPSHOTS, progress: bool | Callable[[int, int], Any] | None = None,
                  use_graphs: bool = True, check_memory: bool = True, module=None, device: int = 0) -> "CudaCore":
        """Plan, check against free device memory, then upload the weights of an opened GGUFFile.

        progress: a callable(done_bytes, total_bytes), True/False for a tqdm bar, None = bar on a tty.
        module: the pybind module to use (default pyqwen._cuda; the tests pass the emulated one).
        device: the CUDA device index (CUDA_VISIBLE_DEVICES selects and renumbers the visible ones).
        """
        mod = module if module is not None else cuda_module()
        why = cuda_available(mod, device)
        if why is not None:
            raise RuntimeError(f"the CUDA backend is not available: {why}")
        kv_why = cuda_kv_problem(kv_type)
        if kv_why is not None:
            raise ValueError(kv_why)
        kv_type = kv_spec(kv_type)
        hp = gguf.hparams
        # The MTP head is uploaded when the file has a usable one (it only serves speculative decoding),
        # as pyqwen.model loads it for the CPU.
        mtp = hp.n_nextn > 0 and gguf.mtp_problem() is None
        config = hp.core_config(mtp=mtp)
        # cuBLAS's handle, workspace and kernels first, so that the free memory measured below already
        # excludes them (they used to appear lazily at the first prefill, after the upload filled the card).
        if hasattr(mod, "init_blas") and not mod.init_blas(device):
            warnings.warn("pyqwen._cuda was built without cuBLAS: prefill runs on the matrix-vector kernels, about "
                          "4x slower. Rebuild with the full CUDA toolkit, or pip install nvidia-cublas and set "
                          "PYQWEN_CUBLAS_ROOT (README, GPU section).", RuntimeWarning, stacklevel=2)
        p = None
        if check_memory:
            free, _total = mod.mem_get_info(device) if device else mod.mem_get_info()
            p = plan_for(config, gguf.tensor_table(), n_ctx, kv_type, int(free), n_ctx_train=hp.n_ctx_max,
                         n_batch=n_batch, n_snapshots=n_snapshots, context_bytes=CUDA_RUNTIME_RESERVE_BYTES,
                         budget_source="free on the device")
            p.check()
        tensors, keep = gguf.core_tensors(mtp=mtp)
        bar = None
        cb = None
        if callable(progress):
            cb = progress
        else:
            total = sum(gguf.tensors[name].nbytes for name in gguf.expected_tensors(mtp=mtp))
            bar = _progress_bar(total, progress)
            if bar is not None:
                def cb(done: int, total: int, _bar=bar) -> None:
                    _bar.total = total
                    _bar.update(done - _bar.n)
        try:
            kw = {"device": device} if device else {}
            model = mod.CudaModel(config, tensors, n_batch=n_batch, n_ctx=n_ctx, use_graphs=use_graphs,
                                  progress=cb, **kw)
        finally:
            if bar is not None:
                bar.close()
        del keep  # the weights live on the device now; the mmap is not needed by the core
        return cls(model, p, mod)

    # ---- the core interface: pyqwen.backend.CoreAdapter, plus -----------------------------------------

    @property
    def n_batch(self) -> int:
        return self._m.n_batch

    # ---- speculative decoding: greedy choices made on the device ------------------------------------

    def verify(self, state, tokens, argmax: bool = False):
        """As the contract's verify; argmax=True: the rows stay on the GPU, their argmax ids come back."""
        return self._m.verify(state, np.ascontiguousarray(tokens, dtype=np.int32), bool(argmax))

    def mtp_draft(self, state, token: int, argmax: bool = False):
        return self._m.mtp_draft(state, int(token), bool(argmax))

    # ---- device-side decoding ----------------------------------------------------------------------

    def decode(self, state, token: int, params=None, counter: int = 0) -> int:
        """Feed `token` (-1: the previous decode()'s choice, still on the GPU) and return the next token.

        params: a pyqwen.sampling.SamplingParams (None or greedy = argmax). Penalties are not applied
        here (see the module doc); seed None draws from a fixed default seed. `counter` numbers the draws
        of one generation (the RNG is counter-based: (seed, counter) gives the same draw).
        """
        if params is not None and (params.repetition_penalty != 1.0 or params.presence_penalty != 0.0):
            raise ValueError("penalties need the host sampler: use forward() + pyqwen.sampling.Sampler")
        if params is None or params.greedy:
            return self._m.decode(state, int(token))
        seed = params.seed if params.seed is not None else 0x5eed
        return self._m.decode(state, int(token), float(params.temperature), int(params.top_k), float(params.top_p),
                              float(params.min_p), seed & 0xFFFFFFFFFFFFFFFF, counter)

    # ---- introspection -----------------------------------------------------------------------------

    @property
    def weight_bytes(self) -> int:
        return self._m.weight_bytes

    @property
    def workspace(self) -> dict:
        return self._m.workspace

    @property
    def graph_stats(self) -> dict:
        return self._m.graph_stats

    @property
    def graphs_enabled(self) -> bool:
        return self._m.graphs_enabled
