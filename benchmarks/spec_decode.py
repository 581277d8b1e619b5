#!/usr/bin/env python3
"""Speculative decoding on the CPU: acceptance and decode speed of --spec off|mtp|lookup|auto.

On held-out text of the trained demo model (tools/demo_corpus.py: standard-library code the model never
saw, reference-manual prose, and "repeat" prompts -- a held-out file followed by its own beginning, as an
agent re-emitting code it was shown), greedy generation from each prompt with every mode, interleaved
prompt by prompt so load drift hits all modes alike. For each mode: decode tokens/s (median over prompts),
its ratio to `off` measured on the same prompts in the same minutes, the acceptance per draft position,
the mean tokens per verification, and a check that every output equals plain decoding's token for token.

    python benchmarks/spec_decode.py [-m MODEL.gguf] [--prompts 4] [--gen 128] [--threads 2] [--peer-llama-cpp]

(benchmarks/spec_breakdown.py splits the time of each verification into its parts, fused and generic path.)

With --peer-llama-cpp, llama.cpp (llama-cpp-python) decodes the same prompts on the same file in the same
loop, plainly and with its prompt-lookup decoding (LlamaPromptLookupDecoding, 8 drafted tokens), and the
tables gain its rows and pyqwen's ratio to it. (Its MTP drafting is not reachable from the Python binding.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import pyqwen  # noqa: E402


def prompts(model, domain: str, n: int, n_tok: int) -> list[list[int]]:
    import demo_corpus

    if domain == "prose":
        texts = demo_corpus.prose_texts(heldout=True)
    else:
        texts = demo_corpus.code_texts(heldout=True)
    out = []
    for text in texts:
        ids = model.tokenize(text, parse_special=False)
        if len(ids) < n_tok + 64:
            continue
        if domain == "repeat":
            # the file, then its beginning again: continuing it means copying what follows
            head = ids[:n_tok // 2]
            out.append(ids[:n_tok // 2] + model.tokenize("\n\n", parse_special=False) + head[:n_tok // 4])
        else:
            out.append(ids[:n_tok])
        if len(out) == n:
            break
    return out


MODES = [("off", None), ("mtp", 1), ("mtp", 2), ("mtp", 3), ("mtp", 4), ("lookup", None), ("auto", None)]


class LlamaPeer:
    """llama.cpp on the same GGUF: greedy decode tokens/s after the prompt, plain or with prompt lookup."""

    def __init__(self, path, threads: int):
        from pyqwen.llama_cpp_peer import open_llama

        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        kw = dict(n_ctx=2048, n_batch=256, n_threads=threads, verbose=False)
        self.plain = open_llama(path, **kw)
        self.lookup = open_llama(path, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=8), **kw)
        self.lookup_error: str | None = None

    @staticmethod
    def decode_tps(llm, prompt: list[int], n: int) -> tuple[float, list[int]]:
        llm.reset()
        out, t_first = [], None
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if t_first is None:
                t_first = time.perf_counter()  # the prompt's prefill is behind us, as pyqwen's decode timer
            out.append(int(tok))
            if len(out) == n:
                break
        return (len(out) - 1) / (time.perf_counter() - t_first), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the trained demo model)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per domain")
    ap.add_argument("--prompt-tokens", type=int, default=192)
    ap.add_argument("--gen", type=int, default=128, help="tokens generated per prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--domains", default="code,prose,repeat")
    ap.add_argument("--peer-llama-cpp", action="store_true", help="also llama.cpp, plain and with prompt lookup")
    args = ap.parse_args()

    model = pyqwen.Model.load(args.model, threads=args.threads, backend="cpu", spec="auto", n_ctx=2048)
    print(f"model: {model.path.name}, MTP head: {model.has_mtp}, threads {args.threads}, greedy, "
          f"{args.gen} tokens per prompt")
    modes = [(m, k) for m, k in MODES if m != "mtp" or model.has_mtp]
    peer = LlamaPeer(model.path, args.threads) if args.peer_llama_cpp else None
    for domain in args.domains.split(","):
        ps = prompts(model, domain, args.prompts, args.prompt_tokens)
        tps = {mk: [] for mk in modes}
        acc = {mk: [0, 0, 0, [], []] for mk in modes}  # verifies, drafted, accepted, drafted_at, accepted_at
        exact = {mk: True for mk in modes}
        peer_tps = {"off": [], "lookup": []}
        peer_same = True
        for p in ps:
            ref = None
            if peer is not None:  # interleaved with pyqwen's modes, prompt by prompt
                v, toks = peer.decode_tps(peer.plain, p, args.gen)
                peer_tps["off"].append(v)
                if peer.lookup_error is None:
                    try:
                        peer_tps["lookup"].append(peer.decode_tps(peer.lookup, p, args.gen)[0])
                    except RuntimeError as e:
                        # llama-cpp-python's draft loop rewinds the KV cache after a rejected draft, which a
                        # hybrid model's recurrent state cannot do: its next llama_decode fails.
                        peer.lookup_error = f"{type(e).__name__}: {e}"
            for mk in modes:
                mode, k = mk
                g = model.generate(p, max_tokens=args.gen, temperature=0, spec=mode, draft=k)
                list(g)
                tps[mk].append(g.stats.decode_tokens_per_second)  # after the prefill, as llama-bench's tg
                if ref is None:
                    ref = g.tokens
                    if peer is not None:
                        peer_same &= toks[:len(ref)] == ref
                exact[mk] &= g.tokens == ref
                s = g.stats
                a = acc[mk]
                a[0] += s.verify_steps
                a[1] += s.draft_tokens
                a[2] += s.accepted_tokens
                for lst, src in ((a[3], s.drafted_at), (a[4], s.accepted_at)):
                    lst.extend([0] * (len(src) - len(lst)))
                    for i, v in enumerate(src):
                        lst[i] += v
        base = statistics.median(tps[("off", None)])
        print(f"\n### {domain} ({len(ps)} held-out prompts of {args.prompt_tokens} tokens)\n")
        print("| mode | draft | tok/s (median) | x off | accepted | tok/verify | acceptance by draft position | "
              "same tokens as off |")
        print("|---|---|---|---|---|---|---|---|")
        for mk in modes:
            mode, k = mk
            v, d, a, dat, aat = acc[mk]
            med = statistics.median(tps[mk])
            by_pos = " ".join(f"{aat[i] / dat[i]:.2f}" for i in range(len(dat)) if dat[i]) or "-"
            print(f"| {mode} | {k or '-'} | {med:.1f} | {med / base:.2f} | "
                  f"{(a / d if d else 0):.2f} | {((a + v) / v if v else 1):.2f} | {by_pos} | {exact[mk]} |")
        if peer is not None:
            lo = statistics.median(peer_tps["off"])
            auto = statistics.median(tps[("auto", None)])
            print(f"| llama.cpp off | - | {lo:.1f} | {lo / base:.2f} | | | | (its greedy tokens equal pyqwen's: "
                  f"{peer_same}) |")
            line = f"\npyqwen / llama.cpp decode: off {base / lo:.2f}x, pyqwen auto / llama.cpp off {auto / lo:.2f}x"
            if peer_tps["lookup"] and peer.lookup_error is None:
                ll = statistics.median(peer_tps["lookup"])
                print(f"| llama.cpp lookup | 8 | {ll:.1f} | {ll / base:.2f} | | | | |")
                line += f", pyqwen lookup / llama.cpp lookup {statistics.median(tps[('lookup', None)]) / ll:.2f}x"
            print(line)
            if peer.lookup_error:
                print(f"(llama.cpp prompt lookup through llama-cpp-python failed on this hybrid model: {peer.lookup_error})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
