"""The KV cache type that lets a context fit a GPU: the planner chooses for the user.

Given the card's memory and the context asked for, try the cache types from the most to the least
faithful -- f16, q8_0, q8_0 K with q4_0 V (keys suffer more from 4 bits than values), q4_0 -- and take
the first whose plan fits. When none does, say the largest context each type reaches. The plans are the
CUDA backend's own (pyqwen.memory_plan, computed in C++ from the model spec).
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory_plan import Plan, fmt_bytes, plan_for

KV_CHOICES = ("f16", "q8_0", "q8_0,q4_0", "q4_0")


@dataclass
class KvChoice:
    kv_type: str | None        # the chosen spelling (None: nothing fits at this context)
    plan: Plan | None          # its plan
    plans: dict[str, Plan]     # every candidate's plan, with its max_ctx

    def lines(self) -> list[str]:
        out = []
        for kv, p in self.plans.items():
            verdict = ("fits, " + fmt_bytes(p.gpu_mem - p.total) + " free" if p.fits
                       else "short by " + fmt_bytes(p.total - p.gpu_mem))
            out.append(f"  KV {kv:<10} {fmt_bytes(p.total):>11} at {p.n_ctx:,} tokens: {verdict}; "
                       f"largest context {p.max_ctx or 0:,}")
        if self.kv_type is None:
            best = max(self.plans.values(), key=lambda p: p.max_ctx or 0)
            out.append(f"no KV cache type fits {best.n_ctx:,} tokens in {fmt_bytes(best.gpu_mem)}; the largest "
                       f"context is {best.max_ctx or 0:,} tokens with {best.kv_type}")
        else:
            out.append(f"chosen KV cache type: {self.kv_type} (the most faithful that fits)")
        return out


def choose_kv_type(config: dict, tensors: dict, n_ctx: int, gpu_mem_bytes: int, *, n_ctx_train: int | None = None,
                   candidates=KV_CHOICES, **kw) -> KvChoice:
    plans: dict[str, Plan] = {}
    chosen = None
    for kv in candidates:
        p = plan_for(config, tensors, n_ctx, kv, gpu_mem_bytes, n_ctx_train=n_ctx_train, **kw)
        plans[kv] = p
        if chosen is None and p.fits:
            chosen = kv
    return KvChoice(chosen, plans.get(chosen) if chosen else None, plans)
