"""Quality of the trained demo model on held-out text (a benchmark, not a test).

    python benchmarks/demo_quality.py [--windows 8 --ctx 512 --threads 2]

Held-out text: tools/demo_corpus.py's split of this interpreter's standard library (code) and of the
pydoc reference topics (prose), tokenized, cut into --windows windows of --ctx tokens, each evaluated
from a fresh state. Prints:
- perplexity with pyqwen (Model.eval logits) and llama.cpp (llama-cpp-python, logits_all, through
  pyqwen.llama_cpp_peer.open_llama) on the committed F16 GGUF and on a Q4_K_M made from it by
  pyqwen.convert.quantize.quantize_gguf (the quantization's perplexity cost), and transformers on the
  committed safetensors in float32;
- the MTP head's top-1 agreement with the main model's greedy next token (tools/torch_mtp.py): the
  greedy acceptance rate of a one-token draft; and its accuracy on the actual next-next token;
- chained greedy drafting (--chain K drafts after --chain-samples prefixes per kind, each cut from a
  held-out window): the acceptance rate at each draft position (given the earlier ones were accepted)
  and the mean number of drafts accepted, verified by one main-model forward as speculative decoding does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import demo_corpus  # noqa: E402

from pyqwen import demo  # noqa: E402


def heldout_windows(kind: str, n: int, ctx: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(demo.TOKENIZER_DIR / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    texts = demo_corpus.code_texts(True) if kind == "code" else demo_corpus.prose_texts(True)
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream += enc.ids + [eot]
    if len(stream) < n * ctx:
        raise SystemExit(f"held-out {kind} has only {len(stream)} tokens; ask for fewer --windows")
    # Evenly spaced over the whole split (as the training script's held-out loss), not its first files.
    starts = np.linspace(0, len(stream) - ctx, n).astype(int)
    return [stream[s:s + ctx] for s in starts]


def nll_sum(logits: np.ndarray, ids: list[int]) -> float:
    x = logits[:-1].astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(-1)) + m[:, 0]
    return float(np.sum(lse - x[np.arange(len(ids) - 1), ids[1:]]))


def ppl(logits_of, windows: list[list[int]]) -> float:
    total = sum(nll_sum(logits_of(w), w) for w in windows)
    return float(np.exp(total / sum(len(w) - 1 for w in windows)))


def pyqwen_logits(path: Path, ctx: int, threads: int):
    from pyqwen import Model

    model = Model.load(path, n_ctx=ctx, threads=threads)
    return model.eval


def llama_logits(path: Path, ctx: int, threads: int):
    from pyqwen.llama_cpp_peer import open_llama

    def run(ids):
        llm = open_llama(path, logits_all=True, n_ctx=ctx, n_threads=threads, verbose=False)
        try:  # a fresh context per window: the recurrent state starts empty
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)], dtype=np.float32)
        finally:
            llm.close()

    return run


def chained_acceptance(hf, mtp, windows: list[list[int]], k: int, samples: int) -> dict:
    """Greedy speculative decoding with k chained MTP drafts after `samples` prefixes (lengths spread
    over 32..ctx-k-1, cycling through the windows): the main model's token x_n, drafts d_1..d_k
    (torch_mtp.chained_draft), then one main forward over prefix + x_n + d_1..d_{k-1} verifies them."""
    import torch

    import torch_mtp

    tried, accepted, total = [0] * k, [0] * k, 0
    lengths = np.linspace(32, len(windows[0]) - k - 1, samples).astype(int)
    for i, n in enumerate(lengths):
        prefix = windows[i % len(windows)][:n]
        x_n, *drafts = torch_mtp.chained_draft(hf, mtp, prefix, k)
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([prefix + [x_n] + drafts[:-1]])).logits[0]
        greedy = logits[n:].argmax(-1).tolist()  # the main model's token after x_n, d_1, ..., d_{k-1}
        run = 0
        for j in range(k):
            tried[j] += 1
            if drafts[j] != greedy[j]:
                break
            accepted[j] += 1
            run += 1
        total += run
    return {"per_position": [a / t if t else 0.0 for a, t in zip(accepted, tried)],
            "mean_accepted": total / samples, "samples": samples}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=demo.TRAINED_GGUF)
    ap.add_argument("--hf", type=Path, default=demo.TRAINED_HF_DIR)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chain", type=int, default=3, help="drafts per chained-drafting sample (0: skip)")
    ap.add_argument("--chain-samples", type=int, default=24)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args(argv)

    import torch

    import torch_mtp
    from pyqwen.convert.quantize import quantize_gguf

    torch.set_num_threads(a.threads)
    data = {k: heldout_windows(k, a.windows, a.ctx) for k in ("code", "prose")}
    n_tok = {k: sum(len(w) - 1 for w in v) for k, v in data.items()}
    print(f"held-out: {a.windows} windows x {a.ctx} tokens per kind (python {demo_corpus.python_version()})")
    results: dict[str, dict] = {"ppl": {}, "mtp": {}}
    with tempfile.TemporaryDirectory() as tmp:
        q4 = quantize_gguf(a.gguf, Path(tmp) / "demo-q4_k_m.gguf", "q4_k_m", threads=a.threads)
        sizes = {"f16": a.gguf.stat().st_size, "q4_k_m": Path(q4).stat().st_size}
        for label, fn in (("pyqwen f16", pyqwen_logits(a.gguf, a.ctx, a.threads)),
                          ("llama.cpp f16", llama_logits(a.gguf, a.ctx, a.threads)),
                          ("pyqwen q4_k_m", pyqwen_logits(Path(q4), a.ctx, a.threads)),
                          ("llama.cpp q4_k_m", llama_logits(Path(q4), a.ctx, a.threads))):
            t = time.time()
            results["ppl"][label] = {k: ppl(fn, w) for k, w in data.items()}
            print(f"  {label}: {results['ppl'][label]} ({time.time() - t:.0f} s)", flush=True)

    hf, mtp = torch_mtp.load_checkpoint(a.hf)
    tr_nll = {}
    for kind, windows in data.items():
        agree = hit_mtp = hit_main = 0
        nll = 0.0
        for w in windows:
            main, draft = torch_mtp.mtp_logits(hf, mtp, w)
            nll += nll_sum(main.numpy(), w)
            d, g = draft.argmax(-1).numpy(), main.argmax(-1).numpy()
            agree += int((d == g[1:]).sum())  # draft for t+2 vs the main model's greedy token for t+2
            hit_mtp += int((d[:-1] == np.asarray(w[2:])).sum())  # the last row drafts past the window
            hit_main += int((g[:-1] == np.asarray(w[1:])).sum())
        n_draft = sum(len(w) - 1 for w in windows)
        tr_nll[kind] = nll / n_tok[kind]
        results["mtp"][kind] = {"agree_with_main_greedy": agree / n_draft,
                                "mtp_top1_next_next": hit_mtp / (n_draft - len(windows)),
                                "main_top1_next": hit_main / n_tok[kind]}
    results["ppl"]["transformers f32 (safetensors)"] = {k: float(np.exp(v)) for k, v in tr_nll.items()}
    if a.chain:
        results["chain"] = {k: chained_acceptance(hf, mtp, w, a.chain, a.chain_samples) for k, w in data.items()}

    print()
    print(f"| perplexity (held-out) | code | prose |")
    print(f"|---|---|---|")
    for label, r in results["ppl"].items():
        print(f"| {label} | {r['code']:.3f} | {r['prose']:.3f} |")
    for kind in ("code", "prose"):
        cost = results["ppl"]["pyqwen q4_k_m"][kind] / results["ppl"]["pyqwen f16"][kind] - 1
        print(f"Q4_K_M perplexity cost ({kind}, pyqwen): {100 * cost:+.2f}%")
    print()
    print("| MTP (held-out) | code | prose |")
    print("|---|---|---|")
    for key, name in (("agree_with_main_greedy", "draft == main greedy token (1-token greedy acceptance)"),
                      ("mtp_top1_next_next", "MTP top-1 accuracy on the true token t+2"),
                      ("main_top1_next", "main model top-1 accuracy on the true token t+1")):
        print(f"| {name} | {results['mtp']['code'][key]:.3f} | {results['mtp']['prose'][key]:.3f} |")
    if a.chain:
        print(f"\n| chained greedy drafts (k={a.chain}) | code | prose |")
        print("|---|---|---|")
        for j in range(a.chain):
            given = f" (given 1..{j} accepted)" if j else ""
            print(f"| acceptance at draft {j + 1}{given} | "
                  f"{results['chain']['code']['per_position'][j]:.3f} | {results['chain']['prose']['per_position'][j]:.3f} |")
        print(f"| mean drafts accepted of {a.chain} | {results['chain']['code']['mean_accepted']:.2f} | "
              f"{results['chain']['prose']['mean_accepted']:.2f} |")
    print(f"\nfile sizes: f16 {sizes['f16'] / 1e6:.1f} MB, q4_k_m {sizes['q4_k_m'] / 1e6:.1f} MB")
    results["sizes"] = sizes
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
