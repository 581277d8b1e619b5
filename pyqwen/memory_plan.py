"""GPU memory plan of the CUDA backend, computed before anything is allocated -- presented here.

The numbers come from C++ (`pyqwen._spec.plan_device_memory`, cuda/plan/device_plan.h), computed from
the model spec (csrc/common/model_spec.h) and the kernels' own scratch formulas
(cuda/plan/workspace_sizes.h) -- the same code the CUDA backend allocates by, so nothing is mirrored here:

- weights: every tensor of the spec the file has, uploaded once (256-byte aligned slices of one arena;
  a tied LM head is not duplicated);
- KV cache: the spec's K/V rows per token of n_ctx, in the KV type (f16, q8_0 or q4_0 on the GPU; K and V
  may differ: "q8_0,f16");
- recurrent state: conv + SSM states of the DeltaNet layers, F32, independent of n_ctx;
- snapshots: none on the device. The session cache's checkpoints of the recurrent state (~150 MiB each on
  the 27B) live in pinned host memory, as many as `--cache-ram` allows; `host_snapshots` is what
  `n_snapshots` of them take there (shown, not counted against the GPU);
- verify log: what one speculative verification keeps for its rollback (the recurrent state before the
  batch plus per-token rows, csrc/common/model_spec.h verify_rollback_bytes; ~157 MiB + 3.9 MiB per
  token of the 16 on the 27B). A file with a usable MTP head also plans the head: its weights, its KV
  rows (in the KV cache) and its activation buffers;
- workspace: activation buffers for a prefill chunk of n_batch tokens, the LM-head logits rows, the
  largest scratch any kernel asks for (for the fp16 prefill fallback: both weight-tile buffers, which it
  fills and multiplies alternately on two streams), the sampler's workspace;
- CUDA context: CUDA_CONTEXT_BYTES, an estimate of what the driver takes before our first allocation
  (context, kernel images loaded lazily, cuBLAS handle and workspace). Measured contexts on Ada/Blackwell
  with lazy module loading are 300-450 MiB; 512 MiB leaves room for allocator granularity.

    from pyqwen.memory_plan import plan
    p = plan("Qwen3.6-27B-Q4_K_M.gguf", n_ctx=32768, gpu_mem_bytes=24 * 2**30)
    print("\\n".join(p.lines())); p.fits, p.max_ctx

`plan(...).check()` raises OutOfGPUMemory with the largest context that fits when the plan does not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Bytes the CUDA driver/runtime use before the backend allocates anything (see the module doc).
CUDA_CONTEXT_BYTES = 512 * 2**20
# What still comes on top once a context exists (cuBLAS workspace, lazily loaded kernel images) -- the
# allowance when the budget is cudaMemGetInfo's free memory, measured after the context was created.
CUDA_RUNTIME_RESERVE_BYTES = 160 * 2**20

DEFAULT_N_BATCH = 256
DEFAULT_SNAPSHOTS = 2
KV_TYPES = ("f16", "f32", "q8_0", "q4_0")  # what the plan can size (llama.cpp's names; "K,V" for two)
KV_SUPPORTED = ("f16", "q8_0", "q4_0")     # what the CUDA attention kernels store and read (K and V each)


class OutOfGPUMemory(RuntimeError):
    """The plan does not fit the GPU; .plan holds the numbers (and .plan.max_ctx the largest context)."""

    def __init__(self, message: str, plan: "Plan"):
        super().__init__(message)
        self.plan = plan


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


@dataclass
class Plan:
    """One plan: the C++ numbers plus what the presentation needs."""

    config: dict              # the model's core config (layer pattern, sizes)
    n_ctx_train: int
    n_ctx: int
    kv_type: str
    n_batch: int
    n_snapshots: int
    n_weights: int
    weights: int
    kv_cache: int
    kv_per_token: int
    recurrent: int
    snapshots: int
    workspace: dict
    context: int
    gpu_mem: int | None = None
    budget_source: str = "given"
    max_ctx: int | None = None          # largest n_ctx that fits gpu_mem (0: not even the weights), if known
    notes: list[str] = field(default_factory=list)
    weight_table: list = field(default_factory=list, repr=False)  # (name, type, ne0, ne1, bytes) per weight
    logit_rows: int = 0                 # LM-head rows per launch (the logits buffer's height)
    verify_log: int = 0                 # speculative decoding: the log one verification keeps for rollback
    host_snapshots: int = 0             # n_snapshots checkpoints in pinned host memory (not GPU memory)

    @property
    def n_attn_layers(self) -> int:
        return self.config["recurrent"].count(False)

    @property
    def n_rec_layers(self) -> int:
        return self.config["recurrent"].count(True)

    @property
    def total(self) -> int:
        return (self.weights + self.kv_cache + self.recurrent + self.snapshots + self.verify_log +
                self.workspace["total"] + self.context)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_mem is None else self.total <= self.gpu_mem

    def lines(self) -> list[str]:
        w = []
        kv = self.kv_type.upper()
        w.append(f"GPU memory plan (CUDA backend; context {self.n_ctx:,}, {kv} KV cache, prefill chunks of "
                 f"{self.n_batch} tokens, {self.n_snapshots} snapshot(s)):")

        def row(label, b, note=""):
            w.append(f"  {label:<17}{b:>16,} bytes {fmt_bytes(b):>11}" + (f"  ({note})" if note else ""))

        row("weights", self.weights, f"{self.n_weights} tensors, uploaded once")
        row("KV cache", self.kv_cache, f"{self.kv_per_token:,} bytes per token over {self.n_attn_layers} attention layers")
        row("recurrent state", self.recurrent, f"{self.n_rec_layers} DeltaNet layers, F32, independent of context")
        row("snapshots", self.snapshots, f"none on the GPU: checkpoints are pinned host memory, "
            f"{fmt_bytes(self.recurrent)} each ({self.n_snapshots}: {fmt_bytes(self.host_snapshots)}), within --cache-ram")
        row("verify log", self.verify_log, "speculative decoding: recurrent state + per-token rows for rollback")
        ws = self.workspace
        row("activations", ws["activations"] + ws["logits"], f"{self.n_batch}-token chunk + {self.logit_rows} logit rows")
        row("kernel scratch", ws["scratch"] + ws["misc"], "largest matmul / GDN / attention / sampling scratch")
        if self.context == CUDA_CONTEXT_BYTES:
            row("CUDA context", self.context, "estimate: driver context, kernel images, cuBLAS")
        else:
            row("CUDA reserve", self.context, "cuBLAS workspace, lazily loaded kernels")
        row("total", self.total)
        if self.gpu_mem is not None:
            if self.fits:
                w.append(f"fits in {fmt_bytes(self.gpu_mem)} ({self.budget_source}): yes, "
                         f"{fmt_bytes(self.gpu_mem - self.total)} to spare")
            else:
                w.append(f"fits in {fmt_bytes(self.gpu_mem)} ({self.budget_source}): no, short by "
                         f"{fmt_bytes(self.total - self.gpu_mem)}")
            if self.max_ctx is not None:
                if self.max_ctx == 0:
                    w.append("largest context that fits: none (the weights and fixed buffers alone do not fit)")
                else:
                    cap = " (the whole trained context)" if self.max_ctx >= self.n_ctx_train else ""
                    w.append(f"largest context that fits: {self.max_ctx:,} tokens{cap}")
        w.extend(self.notes)
        return w

    def error_message(self) -> str:
        msg = (f"the model does not fit in GPU memory: it needs {fmt_bytes(self.total)} at context "
               f"{self.n_ctx:,} but {fmt_bytes(self.gpu_mem or 0)} is available ({self.budget_source})")
        if self.max_ctx:
            msg += f"; the largest context that fits is {self.max_ctx:,} tokens (n_ctx={self.max_ctx})"
        else:
            msg += "; even the weights and fixed buffers do not fit -- use a smaller quantization or the CPU backend"
        return msg

    def check(self) -> "Plan":
        if self.fits is False:
            raise OutOfGPUMemory(self.error_message(), self)
        return self


def plan_for(config: dict, tensors: dict, n_ctx: int, kv_type: str = "f16", gpu_mem_bytes: int | None = None, *,
             n_ctx_train: int | None = None, n_batch: int = DEFAULT_N_BATCH, n_snapshots: int = DEFAULT_SNAPSHOTS,
             context_bytes: int = CUDA_CONTEXT_BYTES, budget_source: str = "given") -> Plan:
    """The plan from a core config and the file's tensor table (name -> (type, ne0, ne1)).

    With gpu_mem_bytes, max_ctx is the largest context in [1, n_ctx_train] that fits.
    """
    from . import _spec
    from .kv_cache import kv_pair, kv_spec

    kv_type = kv_spec(kv_type)  # ValueError naming the accepted types
    if n_ctx < 1 or n_batch < 1 or n_snapshots < 0:
        raise ValueError("n_ctx and n_batch must be >= 1, n_snapshots >= 0")
    n_ctx_train = n_ctx_train or n_ctx
    r = _spec.plan_device_memory(config, tensors, n_ctx, kv_type, n_batch, n_snapshots, context_bytes,
                                 gpu_mem_bytes, n_ctx_train)
    p = Plan(config=config, n_ctx_train=n_ctx_train, n_ctx=n_ctx, kv_type=kv_type, n_batch=n_batch,
             n_snapshots=n_snapshots, n_weights=r["n_weights"], weights=r["weights"], kv_cache=r["kv_cache"],
             kv_per_token=r["kv_per_token"], recurrent=r["recurrent"], snapshots=r["snapshots"],
             workspace=dict(r["workspace"]), context=r["context"], gpu_mem=gpu_mem_bytes, budget_source=budget_source,
             max_ctx=r["max_ctx"], weight_table=list(r["weight_table"]), logit_rows=r["logit_rows"],
             verify_log=r["verify_log"], host_snapshots=r["host_snapshots"])
    assert p.total == r["total"]
    if not set(kv_pair(kv_type)) <= set(KV_SUPPORTED):
        p.notes.append(f"note: the CUDA backend keeps f16, q8_0 or q4_0 KV caches ({kv_type} is planned, not runnable)")
    return p


def plan(gguf_file, n_ctx: int, kv_type: str = "f16", gpu_mem_bytes: int | None = None, **kw) -> Plan:
    """The plan for a GGUF (path or an opened pyqwen.gguf_file.GGUFFile) at n_ctx.

    gpu_mem_bytes: the budget (a card's total memory, e.g. 24 GiB; None = no verdict). Keywords:
    n_batch, n_snapshots, context_bytes (CUDA_CONTEXT_BYTES), budget_source (a label for the budget).
    n_ctx is capped at the trained context.
    """
    from .gguf_file import GGUFFile

    gf = gguf_file if isinstance(gguf_file, GGUFFile) else GGUFFile.open(os.fspath(gguf_file), validate=False)
    hp = gf.hparams if gf.hparams is not None else gf._read_hparams()
    gf.hparams = hp
    mtp = hp.n_nextn > 0 and gf.mtp_problem() is None  # the CUDA backend loads a usable head
    return plan_for(hp.core_config(mtp=mtp), gf.tensor_table(), min(n_ctx, hp.n_ctx_max), kv_type, gpu_mem_bytes,
                    n_ctx_train=hp.n_ctx_max, **kw)


# ---- decode traffic (benchmarks/bench_gpu.py, benchmarks/gpu_roofline.md) ---------------------------------

def decode_traffic(p: Plan, kv_len: int) -> dict:
    """Bytes one decode step moves through DRAM at a context of kv_len tokens (the roofline numerator).

    weights: every matrix is streamed once, except token_embd which is gathered (one row) unless it is
    also the (tied) LM head; kv: K and V rows of kv_len positions in every attention layer (+ the new row
    written); recurrent: every DeltaNet layer reads and writes its SSM state (and conv state) once.
    Activations (a few hundred KB) are left out.
    """
    names = {w[0]: w for w in p.weight_table}
    tied = "output.weight" not in names
    streamed = sum(w[4] for w in p.weight_table if w[0] != "token_embd.weight" or tied)
    emb = names.get("token_embd.weight")
    gathered = 0 if tied or emb is None else emb[4] // max(emb[3], 1)
    kv = p.kv_per_token * (kv_len + 1)
    rec = 2 * p.recurrent
    total = streamed + gathered + kv + rec
    return {"weights": streamed, "embedding_row": gathered, "kv": kv, "recurrent": rec, "total": total}
