"""GPU memory plan of the CUDA backend, computed before anything is allocated (pure Python).

Everything the CUDA backend (cuda/backend/model.cu) puts in device memory, from a GGUF's tensor table
and hyper-parameters alone:

- weights: every tensor the forward pass reads, uploaded once (256-byte aligned slices of one arena;
  a tied LM head is not duplicated);
- KV cache: F16, 16 attention layers x 2 x n_head_kv x head_dim x 2 bytes per token of n_ctx;
- recurrent state: conv + SSM states of the DeltaNet layers, F32, independent of n_ctx;
- snapshots: `n_snapshots` device-side checkpoints of the recurrent state (what a chat session keeps to
  resume a conversation; each ~150 MiB on the 27B);
- workspace: activation buffers for a prefill chunk of n_batch tokens, the LM-head logits rows, the
  largest scratch any kernel asks for, the sampler's workspace. The scratch formulas of the kernel
  families (matmul_scratch_bytes, gdn_scratch_bytes, attention_scratch_bytes) are mirrored here; a test
  checks them against the C++ (`pyqwen_cuda_emu.model_workspace_bytes`);
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
from functools import lru_cache
from typing import Iterable

# Bytes the CUDA driver/runtime use before the backend allocates anything (see the module doc).
CUDA_CONTEXT_BYTES = 512 * 2**20
# What still comes on top once a context exists (cuBLAS workspace, lazily loaded kernel images) -- the
# allowance when the budget is cudaMemGetInfo's free memory, measured after the context was created.
CUDA_RUNTIME_RESERVE_BYTES = 160 * 2**20

DEFAULT_N_BATCH = 256
DEFAULT_SNAPSHOTS = 2
LOGIT_ROWS = 16          # kLogitRows in cuda/backend/model.h
ALIGN = 256

# ggml type ids (formats.h) -> (values per block, bytes per block)
_T_F32, _T_F16, _T_BF16 = 0, 1, 30
_BLOCKS = {
    0: (1, 4), 1: (1, 2), 30: (1, 2),
    2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 20: (32, 18),
    12: (256, 144), 13: (256, 176), 14: (256, 210), 23: (256, 136),
}
# Weight types the matmul family reads (ops_matvec.h), with the K granularity it needs.
_MATMUL_TYPES = {t: (8 if t in (_T_F32, _T_F16, _T_BF16) else bs) for t, (bs, _) in _BLOCKS.items()}

KV_BYTES = {"f16": 2.0, "f32": 4.0, "q8_0": 34 / 32}
KV_SUPPORTED = {"f16"}   # what the CUDA attention kernels implement today


class OutOfGPUMemory(RuntimeError):
    """The plan does not fit the GPU; .plan holds the numbers (and .plan.max_ctx the largest context)."""

    def __init__(self, message: str, plan: "Plan"):
        super().__init__(message)
        self.plan = plan


def _align(x: int, a: int = ALIGN) -> int:
    return (x + a - 1) // a * a


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def tensor_bytes(ggml_type: int, ne0: int, ne1: int = 1) -> int:
    bs, bb = _BLOCKS[ggml_type]
    return ne0 // bs * bb * ne1


# ---- mirrors of the kernels' scratch formulas ------------------------------------------------------

# Decode activations: Q8_1 values as int8 (n_tok*K bytes) and, apart, each 32-block's (d, s) as two floats.
_MULTIPASS_MAX_TOK = 16          # matvec.cu kMultiPassMaxTok
_TILE_VALUES = 16 << 20          # gemm.cu kTileValues


def _prefill_tile_rows(K: int, N: int) -> int:
    r = _TILE_VALUES // K // 64 * 64
    return min(max(r, 64), N)


def matmul_scratch_bytes(ggml_type: int, K: int, N: int, n_tok: int) -> int:
    """cuda/backend/matvec.cu matmul_scratch_bytes (also covers matmul_swiglu)."""
    g = _MATMUL_TYPES.get(ggml_type)
    if g is None or K <= 0 or K % g or N <= 0 or n_tok <= 0:
        return 0
    q8 = _align(n_tok * K) + _align(n_tok * (K // 32) * 8)
    tile = 0
    if n_tok <= _MULTIPASS_MAX_TOK:
        act = _align(q8)
    else:
        act = _align(max(n_tok * K * 2, q8))
        tile = _align(_prefill_tile_rows(K, N) * K * 2)
    gu = _align(n_tok * N * 4)
    return act + tile + 2 * gu


_GDN_CHUNK = 64                  # gdn_chunk.cuh kGdnChunk


def gdn_scratch_bytes(nk: int, nv: int, dk: int, dv: int, n: int) -> int:
    """cuda/backend/gdn.cu gdn_scratch_bytes."""
    if n <= 1:
        return 0
    nc = _cdiv(n, _GDN_CHUNK)
    parts = [n * nk * dk, n * nk * dk, nv * n, nv * n, nv * n * dv, nv * n * dk, nv * nc * _GDN_CHUNK * _GDN_CHUNK]
    return sum(_align(4 * p) for p in parts)


_DEC_MIN_SPLIT, _DEC_MAX_SPLITS = 128, 128           # attention.cu
_PRE_MIN_SPLIT, _PRE_MAX_SPLITS = 256, 64
_PRE_SPLIT_BELOW_BLOCKS, _PRE_TARGET_BLOCKS = 128, 256
_PRE_BM = 16 * 4                                     # attention_prefill.cuh kPrefillBM


def attention_scratch_bytes(H: int, Hkv: int, D: int, n: int, n_ctx: int) -> int:
    """cuda/backend/attention.cu attention_scratch_bytes (covers every call with <= n tokens)."""
    if H <= 0 or Hkv <= 0 or H % Hkv or D not in (32, 64, 128, 256) or n <= 0 or n_ctx <= 0:
        return 0
    per = (4 * D + 8) * H
    need = 0
    dec = min(_cdiv(n_ctx, _DEC_MIN_SPLIT), _DEC_MAX_SPLITS)
    if dec > 1:
        need = per * dec
    for m in range(2, min(n, n_ctx) + 1):
        blocks = _cdiv(m * (H // Hkv), _PRE_BM) * Hkv
        if blocks >= _PRE_SPLIT_BELOW_BLOCKS:
            ns = 1
        else:
            ns = max(1, min(_cdiv(_PRE_TARGET_BLOCKS, blocks), _cdiv(n_ctx, _PRE_MIN_SPLIT), _PRE_MAX_SPLITS))
        if ns > 1:
            need = max(need, per * ns * m)
    return need


_SAMPLE_MAX_BLOCKS, _SAMPLE_CAP = 256, 8192          # sampling.cuh


def sample_workspace_bytes(n_vocab: int) -> int:
    return _align(4 * _SAMPLE_MAX_BLOCKS) + _align(4) + 8 * _SAMPLE_CAP


def argmax_workspace_bytes(n: int) -> int:
    nblk = min(max(_cdiv(n, 256 * 8), 1), 128)
    return 0 if nblk == 1 else 8 * nblk


# ---- the plan ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Weight:
    name: str
    type: int
    ne0: int
    ne1: int
    nbytes: int


@dataclass
class ModelShape:
    """The hyper-parameters the plan needs (a subset of gguf_file.HParams)."""

    n_embd: int
    n_ff: int
    n_vocab: int
    n_layer: int
    n_attn_layers: int
    n_head: int
    n_head_kv: int
    head_dim: int
    ssm_conv: int
    ssm_k_heads: int
    ssm_v_heads: int
    ssm_k_dim: int
    ssm_v_dim: int
    n_ctx_train: int

    @classmethod
    def from_hparams(cls, hp) -> "ModelShape":
        return cls(hp.n_embd, hp.n_ff, hp.n_vocab, hp.n_layer, hp.n_attn_layers, hp.n_head, hp.n_head_kv,
                   hp.head_dim, hp.ssm_conv, hp.ssm_k_heads, hp.ssm_v_heads, hp.ssm_k_dim, hp.ssm_v_dim,
                   hp.n_ctx_train)

    @property
    def n_rec_layers(self) -> int:
        return self.n_layer - self.n_attn_layers

    @property
    def conv_channels(self) -> int:
        return 2 * self.ssm_k_heads * self.ssm_k_dim + self.ssm_v_heads * self.ssm_v_dim

    def recurrent_bytes(self) -> int:
        per = (self.ssm_conv - 1) * self.conv_channels + self.ssm_v_heads * self.ssm_v_dim * self.ssm_k_dim
        return self.n_rec_layers * 4 * per

    def kv_bytes_per_token(self, kv_type: str = "f16") -> float:
        return 2 * self.n_attn_layers * self.n_head_kv * self.head_dim * KV_BYTES[kv_type]


def activation_bytes(s: ModelShape, n_batch: int) -> tuple[int, int]:
    """(activations, logits) of cuda/backend/model.cu act_layout()."""
    nb, E = n_batch, s.n_embd
    C, Dv, nv = s.conv_channels, s.ssm_v_heads * s.ssm_v_dim, s.ssm_v_heads
    HD, KV = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    head = sum(_align(b) for b in (4 * nb, 4, 4 * nb * E, 4 * nb * E, 4 * nb * E))
    gdn = sum(_align(4 * nb * x) for x in (C, Dv, nv, nv, C, Dv))
    attn = sum(_align(4 * nb * x) for x in (2 * HD, KV, KV, HD))
    ffn = _align(4 * nb * s.n_ff)
    mix = ffn
    if s.n_rec_layers > 0:
        mix = max(mix, gdn)
    if s.n_attn_layers > 0:
        mix = max(mix, attn)
    logits = _align(4 * min(nb, LOGIT_ROWS) * s.n_vocab)
    return head + mix, logits


@lru_cache(maxsize=64)
def _matmul_scratch_max(shapes: tuple, n_batch: int, n_vocab: int, n_embd: int) -> int:
    best = 0
    for t, K, N in shapes:
        lm = N == n_vocab and K == n_embd
        for n in range(1, (min(n_batch, LOGIT_ROWS) if lm else n_batch) + 1):
            best = max(best, matmul_scratch_bytes(t, K, N, n))
    return best


def workspace_bytes(s: ModelShape, weights: Iterable[Weight], n_batch: int, n_ctx: int) -> dict:
    """The device workspace of Model::plan_workspace (model.cu): activations, logits, scratch, misc."""
    act, logits = activation_bytes(s, n_batch)
    shapes = tuple(sorted({(w.type, w.ne0, w.ne1) for w in weights if w.ne1 > 1}))
    scratch = _matmul_scratch_max(shapes, n_batch, s.n_vocab, s.n_embd)
    if s.n_rec_layers > 0:
        scratch = max(scratch, max(gdn_scratch_bytes(s.ssm_k_heads, s.ssm_v_heads, s.ssm_k_dim, s.ssm_v_dim, n)
                                   for n in range(1, n_batch + 1)))
    if s.n_attn_layers > 0 and n_ctx > 0:
        scratch = max(scratch, attention_scratch_bytes(s.n_head, s.n_head_kv, s.head_dim, n_batch, n_ctx))
    scratch = _align(scratch)
    misc = _align(max(sample_workspace_bytes(s.n_vocab), argmax_workspace_bytes(s.n_vocab)))
    return {"activations": act, "logits": logits, "scratch": scratch, "misc": misc,
            "total": act + logits + scratch + misc}


@dataclass
class Plan:
    shape: ModelShape
    n_ctx: int
    kv_type: str
    n_batch: int
    n_snapshots: int
    n_weights: int
    weights: int
    kv_cache: int
    kv_per_token: float
    recurrent: int
    snapshots: int
    workspace: dict
    context: int
    gpu_mem: int | None = None
    budget_source: str = "given"
    max_ctx: int | None = None          # largest n_ctx that fits gpu_mem (0: not even the weights), if known
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.recurrent + self.snapshots + self.workspace["total"] + self.context

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_mem is None else self.total <= self.gpu_mem

    def lines(self) -> list[str]:
        s = self.shape
        w = []
        kv = self.kv_type.upper()
        w.append(f"GPU memory plan (CUDA backend; context {self.n_ctx:,}, {kv} KV cache, prefill chunks of "
                 f"{self.n_batch} tokens, {self.n_snapshots} snapshot(s)):")

        def row(label, b, note=""):
            w.append(f"  {label:<17}{b:>16,} bytes {fmt_bytes(b):>11}" + (f"  ({note})" if note else ""))

        row("weights", self.weights, f"{self.n_weights} tensors, uploaded once")
        row("KV cache", self.kv_cache, f"{self.kv_per_token:,.0f} bytes per token over {s.n_attn_layers} attention layers")
        row("recurrent state", self.recurrent, f"{s.n_rec_layers} DeltaNet layers, F32, independent of context")
        row("snapshots", self.snapshots, f"{self.n_snapshots} x recurrent state, kept on the GPU")
        ws = self.workspace
        row("activations", ws["activations"] + ws["logits"], f"{self.n_batch}-token chunk + {LOGIT_ROWS} logit rows")
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
                    cap = " (the whole trained context)" if self.max_ctx >= s.n_ctx_train else ""
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


def plan_for(shape: ModelShape, weights: list[Weight], n_ctx: int, kv_type: str = "f16",
             gpu_mem_bytes: int | None = None, *, n_batch: int = DEFAULT_N_BATCH,
             n_snapshots: int = DEFAULT_SNAPSHOTS, context_bytes: int = CUDA_CONTEXT_BYTES,
             budget_source: str = "given") -> Plan:
    """The plan from a model shape and its weight table (name, type, ne0, ne1, bytes)."""
    if kv_type not in KV_BYTES:
        raise ValueError(f"kv_type must be one of {', '.join(KV_BYTES)}, got {kv_type!r}")
    if n_ctx < 1 or n_batch < 1 or n_snapshots < 0:
        raise ValueError("n_ctx and n_batch must be >= 1, n_snapshots >= 0")
    weights_b = sum(_align(w.nbytes) for w in weights)
    rec = shape.recurrent_bytes()
    kvpt = shape.kv_bytes_per_token(kv_type)

    def build(ctx: int) -> Plan:
        return Plan(shape=shape, n_ctx=ctx, kv_type=kv_type, n_batch=n_batch, n_snapshots=n_snapshots,
                    n_weights=len(weights), weights=weights_b, kv_cache=int(round(kvpt * ctx)), kv_per_token=kvpt,
                    recurrent=rec, snapshots=n_snapshots * rec, workspace=workspace_bytes(shape, weights, n_batch, ctx),
                    context=context_bytes, gpu_mem=gpu_mem_bytes, budget_source=budget_source)

    p = build(n_ctx)
    if kv_type not in KV_SUPPORTED:
        p.notes.append(f"note: the CUDA backend implements an F16 KV cache only ({kv_type} is planned, not runnable)")
    if gpu_mem_bytes is not None:
        # Largest context that fits: the total grows monotonically with n_ctx (KV linearly, attention
        # scratch up to a bound), so bisect over [1, n_ctx_train].
        lo, hi = 0, shape.n_ctx_train
        if build(1).total > gpu_mem_bytes:
            hi = 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if build(mid).total <= gpu_mem_bytes:
                lo = mid
            else:
                hi = mid - 1
        p.max_ctx = lo
    return p


def weights_of(gguf) -> list[Weight]:
    out = []
    for name in gguf.expected_tensors():
        t = gguf.tensors[name]
        ne1 = 1
        for d in t.shape[1:]:
            ne1 *= int(d)
        out.append(Weight(name, int(t.type), int(t.shape[0]), ne1, int(t.nbytes)))
    return out


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
    return plan_for(ModelShape.from_hparams(hp), weights_of(gf), min(n_ctx, hp.n_ctx_train), kv_type,
                    gpu_mem_bytes, **kw)


# ---- decode traffic (benchmarks/bench_gpu.py, benchmarks/gpu_roofline.md) ---------------------------------

def decode_traffic(shape: ModelShape, weights: list[Weight], kv_len: int, kv_type: str = "f16") -> dict:
    """Bytes one decode step moves through DRAM at a context of kv_len tokens (the roofline numerator).

    weights: every matrix is streamed once, except token_embd which is gathered (one row) unless it is
    also the (tied) LM head; kv_read: K and V rows of kv_len positions in every attention layer (+ the new
    row written); recurrent: every DeltaNet layer reads and writes its SSM state (and conv state) once.
    Activations (a few hundred KB) are left out.
    """
    tied = not any(w.name == "output.weight" for w in weights)
    streamed = sum(w.nbytes for w in weights if w.name != "token_embd.weight" or tied)
    emb = next((w for w in weights if w.name == "token_embd.weight"), None)
    gathered = 0 if tied or emb is None else emb.nbytes // max(emb.ne1, 1)
    kvpt = shape.kv_bytes_per_token(kv_type)
    kv = int(kvpt * kv_len + kvpt)
    rec = 2 * shape.recurrent_bytes()
    total = streamed + gathered + kv + rec
    return {"weights": streamed, "embedding_row": gathered, "kv": kv, "recurrent": rec, "total": total}
