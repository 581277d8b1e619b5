"""Tokenizer built from GGUF tokenizer metadata (byte-level BPE, llama.cpp's `gpt2` model).

The heavy lifting (regex split + BPE) is done by the `tokenizers` library, configured to reproduce the
HF pipeline of the model (`pre = qwen35` or `qwen2`). Decoding is done here from the token strings so
that special tokens, padding ids and partial UTF-8 are handled the way llama.cpp does.

Token types follow llama.cpp: CONTROL tokens are special (matched in text only with parse_special=True),
USER_DEFINED tokens (`<think>`, `<tool_call>`, ...) are always matched, like llama.cpp and HF do, and
UNUSED `[PADn]` placeholders are never produced and decode to nothing.
"""

from __future__ import annotations

import codecs
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import tokenizers

from .vocab_spec import BYTE, CONTROL, NORMAL, PRE_REGEX, UNKNOWN, UNUSED, USER_DEFINED  # noqa: F401

# Texts llama.cpp adds to the end-of-generation set whenever the vocab has them.
EOG_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


def _byte_decoder() -> dict[str, int]:
    """Inverse of byte-level BPE's byte -> printable-character mapping (GPT-2 scheme)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_OF = _byte_decoder()


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, tokens: list[str], types: list[int],
                 meta: Mapping[str, object]):
        self._backend = backend
        self._encode_lock = threading.Lock()  # encode_special_tokens is a flag on the shared backend
        self._tokens = tokens
        self._types = types
        self._piece_bytes: list[bytes | None] = [None] * len(tokens)  # lazily filled decode cache
        self._token_ids: dict[str, int] = {}
        for i, t in enumerate(tokens):
            self._token_ids.setdefault(t, i)

        def opt_id(key: str) -> int | None:
            v = meta.get(f"tokenizer.ggml.{key}")
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        self.bos_id = opt_id("bos_token_id")
        self.eos_id = opt_id("eos_token_id")
        self.pad_id = opt_id("padding_token_id")
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        self.chat_template: str | None = meta.get("tokenizer.chat_template")  # type: ignore[assignment]
        eog = {i for i in (self.eos_id, opt_id("eot_token_id"), opt_id("eom_token_id")) if i is not None}
        eog.update(i for t in EOG_TEXTS if (i := self._token_ids.get(t)) is not None)
        self.eog_ids: set[int] = eog

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> Tokenizer:
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"unsupported tokenizer.ggml.model {model!r}: only 'gpt2' (byte-level BPE) is supported")
        pre = meta.get("tokenizer.ggml.pre")
        if pre not in PRE_REGEX:
            raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r}: expected one of {sorted(PRE_REGEX)}")
        if "tokenizer.ggml.tokens" not in meta:
            raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
        tokens = [_text(t) for t in meta["tokenizer.ggml.tokens"]]  # type: ignore[union-attr]
        types = [int(t) for t in meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)]  # type: ignore[union-attr]
        if len(types) != len(tokens):
            raise ValueError(f"token_type has {len(types)} entries for {len(tokens)} tokens")
        merges = [_text(m) for m in meta.get("tokenizer.ggml.merges") or []]  # type: ignore[union-attr]
        backend = _build_backend(tokens, types, merges, PRE_REGEX[pre])
        return cls(backend, tokens, types, meta)

    @classmethod
    def from_hf_dir(cls, tokenizer_dir: Path | str, vocab_size: int | None = None) -> Tokenizer:
        """Same tokenizer as after a GGUF round trip, straight from an HF tokenizer directory."""
        from .hf_vocab import vocab_metadata

        if vocab_size is None:
            vocab_size = tokenizers.Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).get_vocab_size()
        return cls.from_metadata(vocab_metadata(tokenizer_dir, vocab_size))

    # -- encoding ----------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        # encode_special_tokens=True makes the backend treat *special* (CONTROL) added tokens as plain
        # text while still matching non-special (USER_DEFINED) ones: llama.cpp's parse_special=false.
        with self._encode_lock:
            self._backend.encode_special_tokens = not parse_special
            return self._backend.encode(text, add_special_tokens=False).ids

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocab entry given as stored (byte-level form, e.g. 'Ġworld', or '<|im_end|>')."""
        return self._token_ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocab entry as stored in the GGUF (byte-level form)."""
        self._check(token_id)
        return self._tokens[token_id]

    def token_type(self, token_id: int) -> int:
        self._check(token_id)
        return self._types[token_id]

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    # -- decoding ----------------------------------------------------------------------------------

    def id_to_bytes(self, token_id: int) -> bytes:
        """Raw bytes this token contributes to the output (may be part of a UTF-8 character)."""
        self._check(token_id)
        b = self._piece_bytes[token_id]
        if b is None:
            b = self._piece_bytes[token_id] = self._compute_bytes(token_id)
        return b

    def id_to_piece(self, token_id: int) -> str:
        """Text of one token on its own (llama.cpp's token_to_piece); broken UTF-8 becomes U+FFFD."""
        return self.id_to_bytes(token_id).decode("utf-8", errors="replace")

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        parts = []
        for i in ids:
            i = int(i)
            if skip_special and self.token_type(i) == CONTROL:
                continue
            parts.append(self.id_to_bytes(i))
        return b"".join(parts).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def _compute_bytes(self, token_id: int) -> bytes:
        text, typ = self._tokens[token_id], self._types[token_id]
        if typ == UNUSED:
            return b""
        if typ in (CONTROL, USER_DEFINED):
            return text.encode("utf-8")  # added tokens are stored as their literal text
        # Normal tokens are in byte-level form; a character outside the byte map (never seen in real
        # vocabs) is kept as its own UTF-8 rather than failing.
        return b"".join(bytes([_BYTE_OF[c]]) if c in _BYTE_OF else c.encode("utf-8") for c in text)

    def _check(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._tokens):
            raise ValueError(f"token id {token_id} out of range [0, {len(self._tokens)})")


class StreamDecoder:
    """Incremental detokenizer: push ids one by one, get only text whose UTF-8 is complete.

    Bytes of a character split across tokens are held back until the character is complete; invalid
    sequences are replaced by U+FFFD as soon as they are known to be invalid. `flush()` emits what is
    still held (an incomplete tail becomes U+FFFD) and resets the decoder.
    """

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.id_to_bytes(int(token_id)))

    def flush(self) -> str:
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out


def _text(value: object) -> str:
    # GGUF strings are UTF-8; some readers hand them back as bytes.
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _build_backend(tokens: list[str], types: list[int], merges: list[str], regex: str) -> tokenizers.Tokenizer:
    """Assemble a tokenizer.json spec so every id lands exactly where the GGUF puts it."""
    vocab: dict[str, int] = {}
    added = []
    for i, (text, typ) in enumerate(zip(tokens, types)):
        if typ in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": typ == CONTROL})
        elif typ != UNUSED:  # UNUSED placeholders stay out of the BPE so they can never be produced
            vocab.setdefault(text, i)
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"malformed merge {m!r}")
        pairs.append(parts)
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": pairs},
    }
    return tokenizers.Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
