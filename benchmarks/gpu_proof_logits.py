#!/usr/bin/env python3
"""The CUDA backend's logits against the CPU backend's, prompt and decode, on the same GGUF files.

    python benchmarks/gpu_proof_logits.py --work DIR [--models r2-untied:f16,r3-tied:f16] [--gguf slice=PATH]
           [--prompt 64] [--decode 64] [--n-batch 64] [--kv f16] [--greedy 8] [--md OUT.md]

Part of benchmarks/gpu_proof.sh (the first run on a real GPU) and its emulated rehearsal. For each model:

- GEMM prefill: the prompt (seeded random ids) fed to both backends with logits for every row, in chunks of
  --n-batch tokens (64 by default: one chunk through the fp16-activation GEMM), where a chunk has > 16;
- mmv prefill: the same prompt on fresh states in chunks of 16 (the matrix-vector kernels), then
- decode: --decode one-token steps, each fed the CPU's argmax of the previous step to BOTH backends
  (teacher forcing, so one near-tie never makes the two sequences diverge), max |dlogit| per step;
- greedy (--greedy N): N tokens chosen on each backend by Model.decode (on the GPU: argmax on the device,
  CUDA graphs) from the same prefilled prompt; the two id sequences are compared.

Bounds (what makes the exit status 1): a NaN or inf anywhere, or errors over the bounds of
tests/cuda/test_model_emu.py -- 2e-2 absolute on float weights for the mmv rows and the decode steps (which
follow the mmv prefill: after a GEMM prefill they would inherit its fp16 rounding), and max 0.4 / mean 0.03
for the GEMM rows. Quantized weights (q8_0, Q4_K_M...) are held to a relative bound
(max |d| / max |logit| < REL_QUANT): the two backends need not quantize the activations the same way, so
exact agreement is not expected. Argmax agreement is reported, not required (random-weight models have
near-ties). The markdown table goes to --md (else stdout); a JSON comment line carries the same numbers for
tests/test_gpu_proof_script.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "hf"

# name in tests/fixtures/hf, shortened by dropping the "qwen35-" prefix on the command line
DEFAULT_MODELS = "r2-untied:f16,r3-tied:f16,r3-untied:q8_0"
ATOL_STEP = 2e-2        # tests/cuda/test_model_emu.py ATOL (float weights, one-token steps)
GEMM_MAX, GEMM_MEAN = 0.4, 0.03  # same file, prompt chunks of > 16 tokens (fp16 GEMM)
REL_QUANT = 5e-2        # quantized weights: max |d| relative to the largest |logit|
FLOAT_TYPES = {"f32", "f16", "bf16"}


def fixture_gguf(work: Path, spec: str) -> tuple[str, Path, str]:
    """(label, path, weight type) of a fixture converted into work/models (reused when already there)."""
    name, _, wtype = spec.partition(":")
    wtype = wtype or "f16"
    full = name if name.startswith("qwen35-") else f"qwen35-{name}"
    out = work / "models" / f"{full}-{wtype}.gguf"
    if not out.is_file():
        from pyqwen.convert import convert

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.gguf")
        convert(FIXTURES / full, tmp, wtype, progress=False)
        tmp.replace(out)
    return f"{name}:{wtype}", out, wtype


def gguf_type(path: Path) -> str:
    """The file's dominant weight type, for the bound (GGUF general.file_type, else 'quant')."""
    from pyqwen.gguf_file import GGUFFile

    ft = GGUFFile.open(path).metadata.get("general.file_type")
    return {0: "f32", 1: "f16", 32: "bf16"}.get(ft, "quant")


MMV_MAX = 16  # chunks of up to 16 tokens run the matrix-vector kernels, longer ones the fp16 GEMM (model.cu)


def _prefill(model, state, prompt: list[int], chunk: int) -> np.ndarray:
    model.n_batch = chunk  # Model.forward splits the feed into chunks of n_batch tokens
    try:
        return np.asarray(model.forward(state, prompt, logits="all"), np.float64)
    finally:
        model.n_batch = model.loaded_n_batch


def compare(label: str, path: Path, wtype: str, n_prompt: int, n_decode: int, n_batch: int, kv: str,
            n_greedy: int, seed: int) -> dict:
    """Two passes over the prompt: one in chunks of n_batch (the GEMM path where a chunk has > 16 tokens),
    held to the GEMM bound, and one in chunks of <= 16 (the mmv kernels) followed by the decode steps and
    held to the tight bound -- decode after a GEMM prefill would inherit the GEMM's fp16 rounding in the
    KV cache and recurrent state, and hide a decode kernel's error under it."""
    import pyqwen
    from pyqwen.session import common_prefix

    n_ctx = n_prompt + n_decode + 8
    t0 = time.perf_counter()
    # a quantized KV cache stores Hadamard-rotated rows on both backends (kv_rotation, on by default), so
    # both round the same values
    cpu = pyqwen.Model.load(str(path), n_ctx=n_ctx, backend="cpu", n_batch=n_batch, kv_type=kv, spec="off")
    gpu = pyqwen.Model.load(str(path), n_ctx=n_ctx, backend="cuda", n_batch=n_batch, kv_type=kv, spec="off")
    load_s = time.perf_counter() - t0
    for m in (cpu, gpu):
        m.loaded_n_batch = m.n_batch
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, cpu.n_vocab, n_prompt).tolist()
    scale = 0.0

    def rows(chunk: int) -> tuple[dict, np.ndarray, object, object]:
        nonlocal scale
        cs, gs = cpu.new_state(n_ctx, mtp=False), gpu.new_state(n_ctx, mtp=False)
        ref, got = _prefill(cpu, cs, prompt, chunk), _prefill(gpu, gs, prompt, chunk)
        scale = max(scale, float(np.abs(ref).max()))
        d = np.abs(got - ref)
        return ({"max": float(d.max()), "mean": float(d.mean()), "rows": n_prompt, "chunk": chunk,
                 "argmax_same": int((got.argmax(1) == ref.argmax(1)).sum()), "finite": bool(np.isfinite(got).all())},
                ref, cs, gs)

    gemm = None
    if min(n_batch, n_prompt) > MMV_MAX:
        gemm = rows(n_batch)[0]
    prefill, ref, cs, gs = rows(min(n_batch, MMV_MAX))
    steps, same, finite = [], 0, True
    tok = int(ref[-1].argmax())
    for _ in range(n_decode):
        r = np.asarray(cpu.forward(cs, [tok], logits="last"), np.float64)
        g = np.asarray(gpu.forward(gs, [tok], logits="last"), np.float64)
        finite &= bool(np.isfinite(g).all())
        steps.append(float(np.abs(g - r).max()))
        same += int(g.argmax() == r.argmax())
        scale = max(scale, float(np.abs(r).max()))
        tok = int(r.argmax())
    greedy = None
    if n_greedy > 0:
        chains = []
        for m in (cpu, gpu):
            st = m.new_state(n_ctx, mtp=False)
            t = int(_prefill(m, st, prompt, min(n_batch, MMV_MAX))[-1].argmax())
            chain = [t]
            for _ in range(n_greedy - 1):
                t = m.decode(st, t)  # on the GPU: argmax on the device, CUDA graphs
                chain.append(int(t))
            chains.append(chain)
        greedy = {"cpu": chains[0], "gpu": chains[1], "same_prefix": common_prefix(*chains)}
    worst = max([prefill["max"], *steps] + ([gemm["max"]] if gemm else []))
    if wtype not in FLOAT_TYPES:
        ok = worst / scale < REL_QUANT
        bound = f"max d / largest logit < {REL_QUANT:g}"
    else:
        ok = prefill["max"] < ATOL_STEP and max(steps, default=0.0) < ATOL_STEP
        ok = ok and (gemm is None or (gemm["max"] < GEMM_MAX and gemm["mean"] < GEMM_MEAN))
        bound = f"mmv rows, steps < {ATOL_STEP:g}" + (f"; GEMM max < {GEMM_MAX:g}, mean < {GEMM_MEAN:g}" if gemm else "")
    ok = ok and prefill["finite"] and finite and (gemm is None or gemm["finite"])
    return {"model": label, "file": path.name, "weights": wtype, "kv": kv, "n_batch": n_batch,
            "prompt": n_prompt, "decode": n_decode, "logit_scale": scale, "prefill_gemm": gemm, "prefill": prefill,
            "decode_max": max(steps, default=0.0),
            "decode_median": float(np.median(steps)) if steps else 0.0, "decode_steps": steps,
            "decode_argmax_same": same, "decode_finite": finite, "greedy": greedy, "bound": bound,
            "ok": bool(ok), "load_s": load_s}


def markdown(results: list[dict]) -> str:
    # d = |logit(CUDA) - logit(CPU)| per entry (no '|' here: it would split the table's cells)
    head = ["model", "weights", "KV", "prompt", "GEMM prefill: max / mean d", "mmv prefill: max / mean d",
            "prefill argmax same", "decode: max / median d", "decode argmax same", "greedy same prefix",
            "largest logit", "bound", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        p, g, gm = r["prefill"], r["greedy"], r["prefill_gemm"]
        cells = [r["model"], r["weights"], r["kv"], str(r["prompt"]),
                 f"{gm['max']:.2e} / {gm['mean']:.1e} (chunks of {gm['chunk']})" if gm else "-",
                 f"{p['max']:.2e} / {p['mean']:.1e} (chunks of {p['chunk']})", f"{p['argmax_same']}/{p['rows']}",
                 f"{r['decode_max']:.2e} / {r['decode_median']:.1e}", f"{r['decode_argmax_same']}/{r['decode']}",
                 f"{g['same_prefix']}/{len(g['cpu'])}" if g else "-", f"{r['logit_scale']:.2f}", r["bound"],
                 "ok" if r["ok"] else "**OVER BOUND / NON-FINITE**"]
        lines.append("| " + " | ".join(cells) + " |")
    for r in results:
        lines.append("")
        lines.append(f"decode max |dlogit| per step, {r['model']} ({r['decode']} steps): "
                     + " ".join(f"{d:.1e}" for d in r["decode_steps"]))
        if r["greedy"] and r["greedy"]["same_prefix"] < len(r["greedy"]["cpu"]):
            lines.append(f"greedy ids differ: cpu {r['greedy']['cpu']} gpu {r['greedy']['gpu']}")
    slim = [{k: v for k, v in r.items() if k != "decode_steps"} for r in results]
    lines.append("")
    lines.append("<!-- gpu_proof_logits " + json.dumps(slim) + " -->")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the converted fixtures (work/models)")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help=f"fixtures as NAME:TYPE, comma-separated ('' = none; default {DEFAULT_MODELS})")
    ap.add_argument("--gguf", action="append", default=[], metavar="LABEL=PATH", help="another GGUF file")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--n-batch", type=int, default=64, help="chunk of the GEMM pass (and Model.load n_batch)")
    ap.add_argument("--kv", default="f16", help="KV cache type of both backends (f16, q8_0, q4_0, K,V)")
    ap.add_argument("--greedy", type=int, default=8, help="greedy tokens compared (0 = skip)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--convert-only", action="store_true", help="convert the fixtures and stop")
    ap.add_argument("--md", type=Path, help="write the markdown table here (else to stdout)")
    ap.add_argument("--no-bounds", action="store_true",
                    help="exit 0 whatever the errors (a workload for compute-sanitizer, whose verdict is its own)")
    args = ap.parse_args(argv)
    if args.prompt < 1 or args.decode < 0:
        ap.error("--prompt must be >= 1 and --decode >= 0")

    models = [fixture_gguf(args.work, s) for s in args.models.split(",") if s.strip()]
    for item in args.gguf:
        label, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            ap.error(f"--gguf {item!r}: expected LABEL=PATH of an existing file")
        models.append((label, Path(path), gguf_type(Path(path))))
    if args.convert_only:
        for label, path, _ in models:
            print(f"{label}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
        return 0
    results = []
    for label, path, wtype in models:
        t = time.perf_counter()
        r = compare(label, path, wtype, args.prompt, args.decode, args.n_batch, args.kv, args.greedy, args.seed)
        print(f"{label}: mmv prefill max d {r['prefill']['max']:.3e}, decode max d {r['decode_max']:.3e} "
              f"({'ok' if r['ok'] else 'OVER BOUND'}; {time.perf_counter() - t:.1f} s)", flush=True)
        results.append(r)
    md = markdown(results)
    if args.md:
        args.md.write_text(md, encoding="utf-8")
    else:
        print(md)
    if args.no_bounds:
        return 0
    return 0 if results and all(r["ok"] and math.isfinite(r["decode_max"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
