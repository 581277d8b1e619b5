"""Train the demo model: the real Qwen3.6 architecture at DEMO_CONFIG's shapes plus a one-layer MTP head,
on the Python standard library's source and the pydoc reference prose, on CPU.

    python tools/train_demo_model.py --steps 20 --out /tmp/probe      # throughput probe
    python tools/train_demo_model.py --minutes 40 --batch 16 --seq 256 --lr 3e-3 --warmup 15 --save-every 25 \
        --eval-windows 16 --out pyqwen/data/demo_model/hf --gguf pyqwen/data/demo_model/pyqwen-demo-f16.gguf
    (the committed model; with --minutes it fixed --steps 83 on the 2-core machine shared by three jobs:
    rerun with --steps 83 instead of --minutes to reproduce it)

Loss = CE(next token) + 0.3 * CE(MTP next-next token), trained jointly (the MTP loss also reaches the
trunk, as in DeepSeek-V3 / Qwen3.5 pre-training). AdamW, linear warmup, cosine decay to 10%.
Reproducible from --seed on one machine: torch.manual_seed, a fixed thread count, sorted inputs, a
seeded window sampler (bitwise identity across CPUs/torch builds is not promised by torch).
Writes an HF checkpoint dir (config.json with mtp_num_hidden_layers 1, model.safetensors in F16 with
the mtp.* tensors, tokenizer files, training.json) every --save-every steps and at the end, so a
partial run is usable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_corpus  # noqa: E402
from torch_mtp import Qwen35MTP  # noqa: E402

from pyqwen.demo import TOKENIZER_DIR, demo_config  # noqa: E402
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig  # noqa: E402

MTP_WEIGHT = 0.3
PROSE_FRACTION = 0.15  # prose is ~3% of the text; sampled more often so the model writes English too


def _unit_lower_solve(A: torch.Tensor, B: torch.Tensor, *, upper: bool, unitriangular: bool, **kw) -> torch.Tensor:
    """solve_triangular for transformers' chunked GatedDeltaNet, for training speed only.

    The chunk system is I + N with N strictly lower triangular (nilpotent), so its inverse is exactly
    sum_k (-N)^k = (I - N)(I + N^2)(I + N^4)...: log2(chunk) batched matmuls instead of LAPACK's batched
    triangular solve, which is about 4x slower forward on this CPU and slower still backward (measured:
    max difference 2e-6 on chunk-64 systems of unit keys). Inference and every reference keep torch's solver.
    """
    if upper or not unitriangular or kw:
        return _SOLVE_TRIANGULAR(A, B, upper=upper, unitriangular=unitriangular, **kw)
    M = -A.tril(-1)
    T = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device) + M
    P = M
    for _ in range(A.shape[-1].bit_length() - 2):
        P = P @ P
        T = T + T @ P
    return T @ B


_SOLVE_TRIANGULAR = torch.linalg.solve_triangular


def trained_config() -> dict:
    return {**demo_config(), "mtp_num_hidden_layers": 1, "mtp_use_dedicated_embeddings": False}


def tokenize(texts: list[str]) -> np.ndarray:
    """One stream of ids, documents separated by <|endoftext|>."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    out: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(eot)
    return np.asarray(out, dtype=np.int64)


def losses(model, mtp, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(main next-token CE, MTP next-next-token CE) of a batch [B, L]."""
    h = model.model(input_ids=x, use_cache=False).last_hidden_state  # post final norm
    V = model.config.vocab_size
    main = torch.nn.functional.cross_entropy(model.lm_head(h[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
    L = x.shape[1]
    o = mtp(model.model.embed_tokens(x[:, 1:-1]), h[:, :-2], torch.arange(L - 2))
    m = torch.nn.functional.cross_entropy(model.lm_head(o).reshape(-1, V), x[:, 2:].reshape(-1))
    return main, m


def windows(stream: np.ndarray, starts: np.ndarray, L: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([stream[s : s + L] for s in starts]))


@torch.no_grad()
def evaluate(model, mtp, stream: np.ndarray, L: int, n: int) -> tuple[float, float]:
    """Mean losses over n fixed, evenly spaced windows of a held-out stream."""
    model.eval(), mtp.eval()
    starts = np.linspace(0, len(stream) - L - 1, n).astype(np.int64)
    a = b = 0.0
    for i in range(0, n, 8):
        main, m = losses(model, mtp, windows(stream, starts[i : i + 8], L))
        k = len(starts[i : i + 8])
        a, b = a + main.item() * k, b + m.item() * k
    model.train(), mtp.train()
    return a / n, b / n


def save(model, mtp, out: Path, meta: dict) -> None:
    """Write the checkpoint dir atomically (tmp dir, then rename over the old one)."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    state.update({f"mtp.{k}": v.detach().to(torch.float16).contiguous() for k, v in mtp.state_dict().items()})
    save_file(dict(sorted(state.items())), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(trained_config(), indent=2) + "\n", encoding="utf-8")
    for f in sorted(TOKENIZER_DIR.iterdir()):
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="HF checkpoint directory to write")
    ap.add_argument("--steps", type=int, help="optimizer steps (the schedule's length)")
    ap.add_argument("--minutes", type=float,
                    help="instead of / as a cap on --steps: time the first 10 steps and fix the step count that "
                         "fits this budget (recorded in training.json as steps_planned; rerun with that --steps)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    # 1 thread: on the shared 2-core machine, 2 OpenMP threads ran 2.4x SLOWER (barrier stalls when a
    # core is taken by another process; measured 92 vs 224 tok/s at batch 16).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--gguf", type=Path, help="also convert each saved checkpoint to this F16 GGUF (pyqwen's converter)")
    ap.add_argument("--init", type=Path,
                    help="continue from this checkpoint directory (a second stage: fresh optimizer and schedule; its "
                         "training.json is kept under 'previous' in the new one)")
    a = ap.parse_args(argv)
    if not (a.steps or a.minutes):
        ap.error("give --steps or --minutes")
    if a.minutes and a.warmup < 10:
        ap.error("--minutes times the first 10 steps, which must be warmup (their lr does not depend on --steps)")

    torch.set_num_threads(a.threads)
    torch.linalg.solve_triangular = _unit_lower_solve  # this training process only (see the function)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    t0 = time.time()
    train_code, train_prose = tokenize(demo_corpus.code_texts(False)), tokenize(demo_corpus.prose_texts(False))
    held_code, held_prose = tokenize(demo_corpus.code_texts(True)), tokenize(demo_corpus.prose_texts(True))
    print(f"tokens: train code {len(train_code):,} prose {len(train_prose):,}; held-out code {len(held_code):,} "
          f"prose {len(held_prose):,} ({time.time() - t0:.0f} s)", flush=True)

    cfg = Qwen3_5TextConfig(**trained_config())
    model = Qwen3_5ForCausalLM(cfg).float().train()
    mtp = Qwen35MTP(cfg).float().train()
    for m in mtp.modules():  # HF's init for the head too (normal 0.02); its norms start at 0 (scale 1)
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=cfg.initializer_range)
    previous = None
    if a.init:
        from torch_mtp import load_checkpoint

        init_model, init_mtp = load_checkpoint(a.init)
        model.load_state_dict(init_model.state_dict())
        mtp.load_state_dict(init_mtp.state_dict())
        model.float().train()
        mtp.float().train()
        previous = json.loads((a.init / "training.json").read_text(encoding="utf-8"))
    params = [p for p in list(model.parameters()) + list(mtp.parameters())]
    decay = [p for p in params if p.ndim == 2]
    no_decay = [p for p in params if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        p = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    meta = {
        "python": demo_corpus.python_version(), "stdlib": str(demo_corpus.stdlib_dir()),
        "torch": torch.__version__, "seed": a.seed, "threads": a.threads, "batch": a.batch, "seq": a.seq,
        "lr": a.lr, "warmup": a.warmup, "steps_planned": a.steps, "mtp_loss_weight": MTP_WEIGHT,
        "prose_fraction": PROSE_FRACTION, "n_params": sum(p.numel() for p in params),
        "train_tokens_available": {"code": int(len(train_code)), "prose": int(len(train_prose))},
    }
    if previous is not None:
        meta["previous"] = previous
    log = []
    t_start = time.time()
    smooth = None
    step = 0
    while a.steps is None or step < a.steps:
        if a.minutes and step == 10:  # warmup so far: steps 0..9 do not depend on the total
            per_step = (time.time() - t_start) / 10
            fit = int(a.minutes * 60 / (per_step * 1.05))  # 5% for the periodic held-out evaluations
            a.steps = min(a.steps, fit) if a.steps else fit
            meta["steps_planned"] = a.steps
            print(f"{per_step:.1f} s/step: {a.steps} steps fit in {a.minutes} min", flush=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        n_prose = int(rng.binomial(a.batch, PROSE_FRACTION))
        xs = []
        for stream, n in ((train_code, a.batch - n_prose), (train_prose, n_prose)):
            if n:
                xs.append(windows(stream, rng.integers(0, len(stream) - a.seq, n), a.seq))
        x = torch.cat(xs)
        main, m = losses(model, mtp, x)
        loss = main + MTP_WEIGHT * m
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        cur = (main.item(), m.item())
        smooth = cur if smooth is None else tuple(0.95 * s + 0.05 * c for s, c in zip(smooth, cur))
        done = step + 1
        if done % 10 == 0 or done == a.steps or done < 10:
            el = time.time() - t_start
            print(f"step {done}/{a.steps} loss {smooth[0]:.3f} mtp {smooth[1]:.3f} lr {lr_at(step):.2e} "
                  f"{done * a.batch * a.seq / el:.0f} tok/s {el / 60:.1f} min", flush=True)
        if done % a.save_every == 0 or done == a.steps:
            ev = {"code": evaluate(model, mtp, held_code, a.seq, a.eval_windows),
                  "prose": evaluate(model, mtp, held_prose, a.seq, a.eval_windows)}
            log.append({"step": done, "train_loss_smoothed": smooth[0], "train_mtp_loss_smoothed": smooth[1],
                        "heldout_loss": {k: v[0] for k, v in ev.items()},
                        "heldout_mtp_loss": {k: v[1] for k, v in ev.items()},
                        "minutes": (time.time() - t_start) / 60})
            print(f"  held-out {json.dumps(log[-1])}", flush=True)
            save(model, mtp, a.out, {**meta, "steps_done": done, "tokens_seen": done * a.batch * a.seq,
                                     "train_minutes": (time.time() - t_start) / 60, "log": log})
            if a.gguf:
                from pyqwen.convert import convert
                from pyqwen.demo import TRAINED_NAME

                convert(a.out, a.gguf, "f16", name=TRAINED_NAME, progress=False)
        step += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
