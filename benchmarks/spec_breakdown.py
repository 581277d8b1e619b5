#!/usr/bin/env python3
"""Where the time of speculative decoding goes, and its speed against plain decoding, on a busy machine.

Greedy generation on the held-out prompts of benchmarks/spec_decode.py (the trained demo model by
default) with --spec off | mtp k=1..4 | lookup | auto, each speculative mode both through the fused
greedy path (the CPU core verifies and accepts in one call, MTP drafts chained in one call:
Model.verify_greedy / mtp_draft_greedy) and through the generic host path (logits rows to numpy,
pyqwen.speculative.accept, one mtp_draft call per draft) that sampling, penalties and logprobs take.

Every call the generation loop makes into its Sequence is timed (wall and this thread's CPU time), so
each verification's cost splits into: the verify forward of k+1 tokens (generic: with its logits rows
copied out), the MTP draft calls, the host acceptance (generic only), the rollback, plain one-token
steps (no draft), and the rest: the loop's own Python (drafter, lookup index, text, stop checks).

The machine this runs on is shared, so wall times drift with the load: every mode runs once per round,
prompt by prompt, in the same minutes; each (prompt, mode) keeps its fastest round (the load only ever
adds time), and the ratios compare those. With --threads 1 the process CPU time is also reported
(threads > 1 spin while they wait for work, which makes CPU time meaningless there).

    python benchmarks/spec_breakdown.py [-m MODEL.gguf] [--threads 2] [--rounds 3] [--prompts 3] [--gen 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pyqwen  # noqa: E402
from pyqwen.generation import Generation, GenerationStats, StateSequence  # noqa: E402
from pyqwen.sampling import Sampler, SamplingParams  # noqa: E402

from spec_decode import prompts  # noqa: E402

PARTS = ("verify", "draft", "accept", "rollback", "step")


class TimedSequence(StateSequence):
    """A StateSequence that adds each call's wall time to `parts`; fused=False hides the fused calls."""

    def __init__(self, model, state, fused: bool):
        super().__init__(model, state)
        self._fused = fused
        self.parts: dict[str, float] = defaultdict(float)

    def _timed(self, part, f, *a, **kw):
        t0 = time.perf_counter()
        try:
            return f(*a, **kw)
        finally:
            self.parts[part] += time.perf_counter() - t0

    @property
    def fused_greedy_spec(self):
        return self._fused and super().fused_greedy_spec

    def step(self, token):
        return self._timed("step", super().step, token)

    def verify(self, tokens, argmax=False):
        return self._timed("verify", super().verify, tokens, argmax)

    def verify_greedy(self, tokens):
        return self._timed("verify", super().verify_greedy, tokens)

    def rollback(self, n_keep):
        return self._timed("rollback", super().rollback, n_keep)

    def mtp_draft(self, token, argmax=False):
        return self._timed("draft", super().mtp_draft, token, argmax)

    def mtp_draft_greedy(self, token, k, p_first=0.0, p_min=0.0):
        return self._timed("draft", super().mtp_draft_greedy, token, k, p_first, p_min)


class TimedGeneration(Generation):
    def _accept(self, rows, drafts, q, history):
        return self._seq._timed("accept", super()._accept, rows, drafts, q, history)


def run(model, ids: list[int], mode: str, k: int | None, fused: bool, n_gen: int, p_min: float | None = None):
    spec = model.spec_for(mode, k)
    if p_min is not None:
        spec = replace(spec, p_min=p_min)
    seq = TimedSequence(model, model.new_state(), fused)
    g = TimedGeneration(seq, ids, ids, Sampler(SamplingParams(temperature=0.0)), n_gen, model.tokenizer.eog_ids,
                        [], model.tokenizer.stream_decoder(), GenerationStats(prompt_tokens=len(ids)),
                        spec=spec, spec_mtp=bool(getattr(seq.state, "has_mtp", False)))
    c0 = time.process_time()
    it = iter(g)
    next(it)  # the prefill and the first token: not decode
    c1 = time.process_time()
    for _ in it:
        pass
    cpu = time.process_time() - c1
    # decode_seconds runs from the prefill's end; the parts timed before the first chunk are prefill
    return g, seq.parts, g.stats.decode_seconds, cpu, c1 - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the trained demo model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=3, help="prompts per domain")
    ap.add_argument("--prompt-tokens", type=int, default=192)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--domains", default="code,prose")
    ap.add_argument("--modes", default="off,mtp1,mtp2,mtp3,mtp4,lookup,auto,auto1",
                    help="off, mtpK, lookup, auto or autoK (K: the MTP draft length; auto alone: the default); "
                         "mtpK:P / autoK:P: adaptive depth, the chain stopping below top probability P (p_min)")
    ap.add_argument("--generic", action="store_true", help="also every speculative mode through the generic path")
    args = ap.parse_args()

    model = pyqwen.Model.load(args.model, threads=args.threads, backend="cpu", spec="auto", n_ctx=2048)
    modes = []
    for m in args.modes.split(","):
        m, _, p = m.partition(":")          # mtp4:0.4: MTP up to 4 deep, stopping below top probability 0.4
        base = m.rstrip("0123456789")       # mtp2: MTP drafting 2 deep; auto1: auto with MTP drafts 1 deep
        mode, k = base, (int(m[len(base):]) if m != base else None)
        if mode == "mtp" and not model.has_mtp:
            continue
        paths = [True] if mode == "off" else ([True, False] if args.generic else [True])
        modes += [(mode, k, fused, float(p) if p else None) for fused in paths]
    print(f"model {model.path.name}, threads {args.threads}, greedy, {args.gen} tokens per prompt, "
          f"best of {args.rounds} interleaved rounds per (prompt, mode)")
    for domain in args.domains.split(","):
        ps = prompts(model, domain, args.prompts, args.prompt_tokens)
        best: dict = {}     # (prompt, mode) -> (decode seconds, cpu seconds, parts, stats)
        for _ in range(args.rounds):
            for pi, p in enumerate(ps):
                ref = None
                for mk in modes:
                    g, parts, dec, cpu, _ = run(model, p, *mk[:3], args.gen, mk[3])
                    if ref is None:
                        ref = g.tokens
                    if g.tokens != ref:
                        raise SystemExit(f"{domain} prompt {pi} {mk}: tokens differ from plain decoding")
                    b = best.get((pi, mk))
                    if b is None or (cpu < b[1] if args.threads == 1 else dec < b[0]):
                        best[(pi, mk)] = (dec, cpu, dict(parts), g.stats)
        print(f"\n### {domain}: {len(ps)} held-out prompts of {args.prompt_tokens} tokens\n")
        print("| mode | path | ms/token | x off | cpu ms/token | x off (cpu) | tok/verify | per verification, ms: verify | "
              "draft | accept | rollback | plain step | rest (Python) | accepted per draft position |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        off = [best[(pi, modes[0])] for pi in range(len(ps))]
        base = [b[0] / max(b[3].generated_tokens - 1, 1) for b in off]
        base_cpu = [b[1] / max(b[3].generated_tokens - 1, 1) for b in off]
        for mk in modes:
            per_tok, cpu_tok, ratio, ratio_cpu = [], [], [], []
            agg = defaultdict(float)
            n_ver = n_acc = 0
            rest = 0.0
            pos_d, pos_a = defaultdict(int), defaultdict(int)
            for pi in range(len(ps)):
                dec, cpu, parts, st = best[(pi, mk)]
                n = max(st.generated_tokens - 1, 1)
                per_tok.append(dec / n)
                cpu_tok.append(cpu / n)
                ratio.append(base[pi] / (dec / n))
                ratio_cpu.append(base_cpu[pi] / (cpu / n))
                for k_, v in parts.items():
                    agg[k_] += v
                for i, (d_, a_) in enumerate(zip(st.drafted_at, st.accepted_at)):
                    pos_d[i] += d_
                    pos_a[i] += a_
                n_ver += st.verify_steps
                n_acc += st.accepted_tokens
                rest += dec - sum(parts.values())
            mode, k, fused, p_min = mk
            name = f"{mode} k={k}" if k else (f"{mode} (k<={model.spec_for(mode).mtp_depth()})" if mode == "auto" else mode)
            if p_min is not None:
                name += f" p_min={p_min}"
            elif mode in ("auto", "mtp") and not k and model.spec_for(mode).stop_thresholds()[1]:
                name += f" (p_min={model.spec_for(mode).stop_thresholds()[1]})"
            path = "-" if mode == "off" else ("fused" if fused else "generic")
            tpv = (n_acc + n_ver) / n_ver if n_ver else 1.0
            cols = [f"{1e3 * agg[p] / n_ver:.3f}" if n_ver else "-" for p in PARTS[:4]]
            step = f"{1e3 * agg['step'] / max(n_ver, 1):.3f}" if n_ver else "-"
            rst = f"{1e3 * rest / n_ver:.3f}" if n_ver else "-"
            cpu = (f"{1e3 * statistics.median(cpu_tok):.3f} | {statistics.median(ratio_cpu):.2f}" if args.threads == 1
                   else "- | -")
            print(f"| {name} | {path} | {1e3 * statistics.median(per_tok):.3f} | {statistics.median(ratio):.2f} | {cpu} | "
                  f"{tpv:.2f} | {' | '.join(cols)} | {step} | {rst} | "
                  f"{' '.join(f'{pos_a[i] / pos_d[i]:.2f}' for i in sorted(pos_d) if pos_d[i]) or '-'} |")
        step = statistics.median(b[2].get("step", 0.0) / max(b[3].generated_tokens - 1, 1) for b in off)
        print(f"\noff: the forward of a plain step {1e3 * step:.3f} ms of {1e3 * statistics.median(base):.3f} ms "
              f"per token (medians over the prompts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
