"""Per-token cost of a grammar engine's token mask at Qwen3.6's vocabulary size (248,320), llguidance vs
xgrammar, to choose the engine for constrained decoding (issue 14, item 1).

    python benchmarks/grammar_mask_cost.py [--tokens 300] [--engines llguidance,xgrammar]

No real Qwen tokenizer is needed (none ships with the repository): the vocabulary is a deterministic
byte-level one of the same size (256 single bytes, then words, word pieces with and without a leading
space, numbers and punctuation runs, lengths skewed short as in BPE vocabularies, then the special
tokens). Each engine gets the same JSON schema; a "model" that picks uniformly among the allowed tokens
(what random weights amount to under the mask) generates until the grammar accepts, and the time of each
mask computation is recorded. Each output is checked with json.loads and jsonschema.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

N_VOCAB = 248_320
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "maxLength": 60},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "active"],
    "additionalProperties": False,
}


def synthetic_vocab(n: int = N_VOCAB, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5,
               1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
    punct = list(".,;:!?()[]{}<>\"'`-_=+*/\\|@#$%^&~\n\t ")
    vocab = [bytes([b]) for b in range(256)]
    seen = set(vocab)
    n_plain = n - len(SPECIALS)
    while len(vocab) < n_plain:
        r = rng.random()
        if r < 0.75:                       # words and word pieces, half with a leading space
            k = min(1 + int(rng.expovariate(1 / 4.5)), 18)
            w = "".join(rng.choices(letters, weights, k=k))
            if rng.random() < 0.3:
                w = w.capitalize()
            tok = (" " + w if rng.random() < 0.5 else w).encode()
        elif r < 0.85:                     # numbers
            tok = str(rng.randrange(10 ** rng.randint(1, 3))).encode()
        elif r < 0.95:                     # punctuation and whitespace runs
            tok = "".join(rng.choices(punct, k=rng.randint(2, 6))).encode()
        else:                              # multi-byte UTF-8 (CJK, accents)
            tok = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3))).encode()
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    return vocab + [s.encode() for s in SPECIALS]


def greedy_tokenize(vocab_index: dict[bytes, int], data: bytes, max_len: int = 24) -> list[int]:
    out, i = [], 0
    while i < len(data):
        for k in range(min(max_len, len(data) - i), 0, -1):
            t = vocab_index.get(data[i:i + k])
            if t is not None:
                out.append(t)
                i += k
                break
    return out


class _Vocab:
    """What llguidance.TokenizerWrapper reads: token bytes, EOS, and a tokenizer callable."""

    def __init__(self, vocab: list[bytes]):
        self.tokens = vocab
        self.eos_token_id = vocab.index(b"<|im_end|>")
        self.bos_token_id = None
        self.special_token_ids = list(range(len(vocab) - len(SPECIALS), len(vocab)))
        self._index = {t: i for i, t in enumerate(vocab)}

    def __call__(self, s):
        return greedy_tokenize(self._index, s if isinstance(s, bytes) else s.encode())


def run_llguidance(vocab: list[bytes], n_runs: int, rng: random.Random) -> tuple[list[float], list[str], float]:
    import llguidance
    import llguidance.numpy as lnp
    import numpy as np

    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab(vocab)))
    setup = time.perf_counter() - t0
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    times, outputs = [], []
    mask = lnp.allocate_token_bitmask(1, tok.vocab_size)
    for _ in range(n_runs):
        m = llguidance.LLMatcher(tok, grammar)
        assert not m.is_error(), m.get_error()
        ids = []
        while not m.is_stopped():
            t = time.perf_counter()
            lnp.fill_next_token_bitmask(m, mask, 0)
            times.append(time.perf_counter() - t)
            allowed = np.flatnonzero(np.unpackbits(mask[0].view(np.uint8), bitorder="little")[:len(vocab)])
            nxt = int(rng.choice(allowed.tolist()))
            assert m.consume_token(nxt), m.get_error()
            ids.append(nxt)
            if nxt == tok.eos_token:
                break
        outputs.append(b"".join(vocab[i] for i in ids if i != tok.eos_token).decode("utf-8"))
    return times, outputs, setup


def run_xgrammar(vocab: list[bytes], n_runs: int, rng: random.Random) -> tuple[list[float], list[str], float]:
    import torch
    import xgrammar as xgr

    v = _Vocab(vocab)
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, vocab_size=len(vocab),
                             stop_token_ids=[v.eos_token_id])
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA))
    setup = time.perf_counter() - t0
    times, outputs = [], []
    mask = xgr.allocate_token_bitmask(1, len(vocab))
    for _ in range(n_runs):
        m = xgr.GrammarMatcher(compiled)
        ids = []
        while not m.is_terminated():
            t = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            times.append(time.perf_counter() - t)
            bits = torch.zeros(len(vocab), dtype=torch.float32)
            xgr.apply_token_bitmask_inplace(bits, mask[0].clone())
            allowed = torch.nonzero(bits == 0).flatten().tolist()
            nxt = rng.choice(allowed)
            assert m.accept_token(nxt)
            ids.append(nxt)
        outputs.append(b"".join(vocab[i] for i in ids if i != v.eos_token_id).decode("utf-8"))
    return times, outputs, setup


def validate(outputs: list[str]) -> tuple[int, str | None]:
    """(outputs that parse as JSON and meet the schema, the first failure)."""
    import jsonschema

    ok, first = 0, None
    for o in outputs:
        try:
            jsonschema.validate(json.loads(o), SCHEMA)
            ok += 1
        except (ValueError, jsonschema.ValidationError) as e:
            first = first or f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return ok, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="JSON documents generated per engine (default 20)")
    ap.add_argument("--engines", default="llguidance,xgrammar")
    args = ap.parse_args()
    vocab = synthetic_vocab()
    print(f"vocabulary: {len(vocab):,} tokens (synthetic byte-level, see module doc)")
    for name in args.engines.split(","):
        fn = {"llguidance": run_llguidance, "xgrammar": run_xgrammar}[name]
        try:
            times, outputs, setup = fn(vocab, args.runs, random.Random(1))
        except ImportError as e:
            print(f"{name}: not installed ({e})")
            continue
        n_valid, failure = validate(outputs)
        us = sorted(t * 1e6 for t in times)
        print(f"{name}: tokenizer+grammar setup {setup:.2f} s; mask per token over {len(us)} tokens: "
              f"median {statistics.median(us):.0f} us, mean {statistics.fmean(us):.0f} us, "
              f"p99 {us[int(0.99 * (len(us) - 1))]:.0f} us, max {us[-1]:.0f} us; "
              f"{n_valid}/{len(outputs)} outputs schema-valid (jsonschema)")
        if failure:
            print(f"  first invalid output: {failure}")


if __name__ == "__main__":
    main()
