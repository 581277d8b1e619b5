"""Tokenizer: HF tokenizer dir -> write_vocab -> real GGUF file -> GGUFReader -> Tokenizer.from_metadata
must tokenize exactly like the HF tokenizer, and the GGUF keys must be what llama.cpp's converter writes."""

from __future__ import annotations

import ctypes
import json
import shutil
import unicodedata
from pathlib import Path

import gguf
import pytest
import tokenizers

from pyqwen.convert.vocab import vocab_metadata, write_vocab
from pyqwen.tokenizer import CONTROL, NORMAL, UNUSED, USER_DEFINED, Tokenizer

DEMO = Path(__file__).resolve().parents[1] / "pyqwen" / "data" / "demo_tokenizer"
VOCAB_SIZE = 2560  # the demo models pad their vocab, like the real 248320 > 248070 tokens

CORPUS = [
    "Hello world", " Hello world", "hello", "", " ", "\n", "\n\n", "   leading and trailing   ",
    "The quick brown fox jumps over the lazy dog. It's, they're, we'll, I'd, you've, I'M, DON'T.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "if x:\n\tpass\r\n\r\n\telse:  # tabs\t\tand spaces\n",
    "你好，世界！今天天气很好。", "こんにちは、世界。カタカナ", "안녕하세요, 세계!", "Привет, мир! Γειά σου.",
    "नमस्ते दुनिया, आप कैसे हैं?", "Xin chào thế giới", "مرحبا بالعالم",
    "😀😃👍👍🏽❤️🔥 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵", "emoji😀inside", "🤖🤖🤖",
    "1234567890 3.14159 1,000,000 2024-06-13 0x1F $19.99 50%", "９８７ ½ ² ① Ⅻ",
    "e\u0301 a\u0300 o\u0308 n\u0303 (decomposed)", "caf\u00e9 vs cafe\u0301", "\u0301 leading mark",
    "a    b     c\n     \n    \n", "trailing spaces   \n", "\r\n\r\n\r", "\u00a0nbsp\u2003em\u3000ideo",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>", "<|endoftext|><|endoftext|>",
    "<|im_start <|im_end| |im_end|> <|IM_END|> < |im_end|> <think >  </ think> <|notatoken|>",
    "x<|vision_start|><|image_pad|><|vision_end|>y", "<think><think></think>",
    "{\"type\": \"function\", \"name\": \"x\", \"arguments\": {\"a\": [1, 2, 3]}}",
    "ZERO\u200bWIDTH\u200dJOINER \ufeffBOM", "\x00\x01\x7f control bytes", "a\u0000b",
]


def gguf_metadata(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.gguf"
    writer = gguf.GGUFWriter(path, "qwen35")
    write_vocab(writer, DEMO, VOCAB_SIZE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def meta(gguf_path) -> dict:
    return gguf_metadata(gguf_path)


@pytest.fixture(scope="module")
def tok(meta) -> Tokenizer:
    return Tokenizer.from_metadata(meta)


@pytest.fixture(scope="module")
def hf_fast():
    return tokenizers.Tokenizer.from_file(str(DEMO / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_auto():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(DEMO))


# -- encoding matches HF --------------------------------------------------------------------------

@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_hf(tok, hf_fast, hf_auto, text):
    expected = hf_fast.encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == expected
    assert hf_auto.encode(text, add_special_tokens=False) == expected


def test_encode_matches_qwen35_tokenizer_class(tok):
    # The class transformers uses for the real model rebuilds the pipeline from vocab+merges.
    mod = pytest.importorskip("transformers.models.qwen3_5.tokenization_qwen3_5")
    hf = mod.Qwen3_5Tokenizer.from_pretrained(str(DEMO))
    for text in CORPUS:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text


def test_long_mixed_text(tok, hf_fast):
    text = "\n".join(CORPUS) * 3
    assert tok.encode(text) == hf_fast.encode(text, add_special_tokens=False).ids


def test_parse_special_false(tok, hf_fast):
    text = "<|im_start|>user\n<think>hi</think><|im_end|><|fim_pad|>"
    ids = tok.encode(text, parse_special=False)
    # Control tokens become plain text ...
    for control in ("<|im_start|>", "<|im_end|>", "<|fim_pad|>"):
        assert tok.token_to_id(control) not in ids
    # ... while user-defined ones are still matched, as llama.cpp (and HF split_special_tokens) do.
    assert tok.token_to_id("<think>") in ids and tok.token_to_id("</think>") in ids
    assert tok.decode(ids) == text
    hf_fast.encode_special_tokens = True
    try:
        plain = "<|im_start|>user\n<think>hi</think><|im_end|>"  # no HF-non-special control tokens
        assert tok.encode(plain, parse_special=False) == hf_fast.encode(plain, add_special_tokens=False).ids
    finally:
        hf_fast.encode_special_tokens = False
    assert tok.encode(text, parse_special=True) != ids  # the flag does not stick


def test_known_special_ids(tok):
    assert tok.encode("<|im_start|>assistant\n")[0] == tok.token_to_id("<|im_start|>")
    think = tok.encode("<think>\n\n</think>\n\n")
    assert think == [tok.token_to_id("<think>"), tok.token_to_id("ĊĊ"), tok.token_to_id("</think>"),
                     tok.token_to_id("ĊĊ")]


def test_pad_tokens_never_produced(tok):
    ids = tok.encode("[PAD2500] [PAD2426]" + "".join(CORPUS))
    assert max(ids) < 2426


# -- decoding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", CORPUS)
def test_decode_round_trip(tok, hf_fast, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    assert tok.decode(ids) == hf_fast.decode(ids, skip_special_tokens=False)


def test_decode_special_and_errors(tok):
    im_end = tok.token_to_id("<|im_end|>")
    assert tok.decode([im_end]) == "<|im_end|>"
    assert tok.decode([im_end], skip_special=True) == ""
    assert tok.decode([2500]) == ""  # [PAD] rows decode to nothing
    assert tok.id_to_piece(im_end) == "<|im_end|>"
    assert tok.id_to_token(tok.token_to_id("Ġ")) == "Ġ" and tok.id_to_piece(tok.token_to_id("Ġ")) == " "
    for bad in (-1, VOCAB_SIZE, 10**9):
        with pytest.raises(ValueError):
            tok.decode([bad])
        with pytest.raises(ValueError):
            tok.id_to_piece(bad)


def test_decode_broken_utf8_matches_hf(tok, hf_fast):
    ids = tok.encode("😀日本")
    partial = ids[:1] + ids[2:]  # drop a middle token: invalid byte sequence
    assert tok.decode(partial) == hf_fast.decode(partial)
    assert "\ufffd" in tok.decode(partial)


@pytest.mark.parametrize("text", ["😀👍🏽🇫🇷 ok", "日本語のテキスト龘靐", "👨‍👩‍👧‍👦", "mixed 中文 and emoji 🚀!"])
def test_stream_decoder(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    # characters split across tokens are held back: some push emits nothing or less than its bytes
    split = [i for i in ids if not _complete_utf8(tok.id_to_bytes(i))]
    assert split, "fixture text should split a character across tokens"
    assert any(p.encode() != tok.id_to_bytes(i) for p, i in zip(pieces, ids))


def _complete_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_stream_decoder_split_character_and_flush(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # the demo vocab has no whole-emoji token
    dec = tok.stream_decoder()
    assert dec.push(ids[0]) == ""
    assert dec.flush() == "\ufffd"  # incomplete tail is replaced, not dropped
    assert [dec.push(i) for i in ids][-1] == "😀"  # flush reset the decoder
    assert dec.flush() == ""


def test_eog_and_special_ids(tok):
    name = tok.token_to_id
    assert tok.n_vocab == VOCAB_SIZE
    assert tok.eos_id == name("<|im_end|>")
    assert tok.pad_id == name("<|endoftext|>")
    assert tok.bos_id is None and tok.add_bos is False
    assert tok.eog_ids == {name(t) for t in ("<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>",
                                             "<|file_sep|>")}


# -- the GGUF as llama.cpp writes it -----------------------------------------------------------------

def test_gguf_keys_and_types(gguf_path, meta):
    reader = gguf.GGUFReader(gguf_path)
    f = reader.fields
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen35"
    assert f["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert f["tokenizer.ggml.tokens"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert f["tokenizer.ggml.eos_token_id"].types == [gguf.GGUFValueType.UINT32]
    assert f["tokenizer.ggml.padding_token_id"].types == [gguf.GGUFValueType.UINT32]
    assert f["tokenizer.ggml.add_bos_token"].types == [gguf.GGUFValueType.BOOL]
    assert "tokenizer.ggml.bos_token_id" not in meta  # Qwen has no BOS (tokenizer_config bos_token null)

    spec = json.loads((DEMO / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((DEMO / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == VOCAB_SIZE
    for text, i in spec["model"]["vocab"].items():
        assert tokens[i] == text and types[i] == NORMAL
    n_real = len(spec["model"]["vocab"]) + len(spec["added_tokens"])
    for i in range(n_real, VOCAB_SIZE):
        assert tokens[i] == f"[PAD{i}]" and types[i] == UNUSED
    expected_type = {}
    for t in spec["added_tokens"]:
        c = t["content"]
        # HF-special or <|...|>-shaped -> CONTROL (includes HF-non-special fim/repo/file_sep tokens)
        expected_type[c] = CONTROL if t["special"] or (c.startswith("<|") and c.endswith("|>")) else USER_DEFINED
        assert tokens[t["id"]] == c and types[t["id"]] == expected_type[c]
    assert expected_type["<|fim_pad|>"] == CONTROL and expected_type["<think>"] == USER_DEFINED
    assert expected_type["<tool_call>"] == USER_DEFINED and expected_type["<|im_end|>"] == CONTROL

    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in spec["model"]["merges"]]
    assert meta["tokenizer.ggml.eos_token_id"] == tokens.index("<|im_end|>")
    assert meta["tokenizer.ggml.padding_token_id"] == tokens.index("<|endoftext|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == cfg["chat_template"]


def test_vocab_metadata_matches_file(meta):
    direct = vocab_metadata(DEMO, VOCAB_SIZE)
    assert list(direct) == [k for k in meta if k.startswith("tokenizer.")]
    assert direct == {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


def test_special_ids_fall_back_to_config_json(tmp_path):
    # gguf.SpecialVocab (as in llama.cpp) takes tokenizer_config first, then config.json / text_config.
    d = tmp_path / "tok"
    shutil.copytree(DEMO, d)
    bos = 2400
    (d / "config.json").write_text(json.dumps({"text_config": {"bos_token_id": bos, "eos_token_id": bos}}))
    m = vocab_metadata(d, VOCAB_SIZE)
    assert m["tokenizer.ggml.bos_token_id"] == bos
    assert m["tokenizer.ggml.eos_token_id"] == 2402  # tokenizer_config's <|im_end|> wins


def test_chat_template_jinja_file(tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(DEMO, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "chat_template.jinja").write_text("{{ messages }}")
    assert vocab_metadata(d, VOCAB_SIZE)["tokenizer.chat_template"] == "{{ messages }}"


def test_vocab_size_too_small():
    with pytest.raises(ValueError):
        vocab_metadata(DEMO, 2000)


# -- other pre-tokenizers and errors -------------------------------------------------------------

def test_qwen2_pre(meta):
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2Tokenizer.from_pretrained(str(DEMO))  # rebuilds with the Qwen2 regex
    tok2 = Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "qwen2"})
    tok35 = Tokenizer.from_metadata(meta)
    for text in CORPUS:
        assert tok2.encode(text) == hf.encode(text, add_special_tokens=False), text
    marks = "नमस्ते दुनिया"  # \p{M} is where the two regexes differ
    assert tok2.encode(marks) != tok35.encode(marks)


def test_unknown_model_or_pre(meta):
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "falcon"})


def test_from_hf_dir(tok):
    direct = Tokenizer.from_hf_dir(DEMO, VOCAB_SIZE)
    for text in CORPUS:
        assert direct.encode(text) == tok.encode(text)


def test_demo_tokenizer_is_qwen35_pipeline():
    spec = json.loads((DEMO / "tokenizer.json").read_text(encoding="utf-8"))
    pre = spec["pre_tokenizer"]["pretokenizers"]
    assert spec["normalizer"] == {"type": "NFC"}
    assert pre[0]["type"] == "Split" and pre[0]["behavior"] == "Isolated" and not pre[0]["invert"]
    assert pre[1]["type"] == "ByteLevel" and not pre[1]["add_prefix_space"] and not pre[1]["use_regex"]
    assert spec["decoder"]["type"] == "ByteLevel"
    model = spec["model"]
    assert model["type"] == "BPE" and not model["byte_fallback"] and model["unk_token"] is None
    assert len(model["vocab"]) in range(2000, 3001)
    assert spec["added_tokens"][0]["id"] == len(model["vocab"])  # added tokens right after the BPE vocab
    assert [t["id"] for t in spec["added_tokens"]] == list(range(len(model["vocab"]), len(model["vocab"]) + 26))
    shared = Path("/work/shared/data")  # the facts this fixture was made from, when available
    if (shared / "qwen3.5-pretokenizer-regex.txt").is_file():
        assert pre[0]["pattern"]["Regex"] == (shared / "qwen3.5-pretokenizer-regex.txt").read_text().strip()
    if (shared / "qwen3.6-special-tokens.json").is_file():
        ref = json.loads((shared / "qwen3.6-special-tokens.json").read_text())["tokens"]
        assert [(t["content"], t["special"]) for t in spec["added_tokens"]] == [
            (t["content"], t["special"]) for t in ref]
    if (shared / "qwen3.6-chat-template.jinja").is_file():
        cfg = json.loads((DEMO / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert cfg["chat_template"] == (shared / "qwen3.6-chat-template.jinja").read_text(encoding="utf-8")


# -- llama.cpp itself, when llama-cpp-python (the `reference` extra) is installed ------------------

def test_matches_llama_cpp(gguf_path, tok):
    lc = pytest.importorskip("llama_cpp")
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(gguf_path).encode(), params)
    assert model, "llama.cpp could not load the vocab-only GGUF"
    try:
        vocab = lc.llama_model_get_vocab(model)

        def ll_encode(text: str, special: bool) -> list[int]:
            raw = text.encode("utf-8")
            buf = (lc.llama_token * (len(raw) + 8))()
            n = lc.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, special)
            assert n >= 0
            return list(buf[:n])

        def ll_piece(i: int) -> bytes:
            buf = (ctypes.c_char * 256)()
            n = lc.llama_token_to_piece(vocab, i, buf, len(buf), 0, True)
            assert n >= 0
            return bytes(buf[:n])

        assert lc.llama_vocab_n_tokens(vocab) == tok.n_vocab
        assert lc.llama_vocab_eos(vocab) == tok.eos_id
        assert {i for i in range(tok.n_vocab) if lc.llama_vocab_is_eog(vocab, i)} == tok.eog_ids
        for i in range(tok.n_vocab):
            assert ll_piece(i) == tok.id_to_bytes(i), i
        for text in CORPUS:
            # llama.cpp's BPE path does not NFC-normalise; on NFC text both must agree exactly.
            text = unicodedata.normalize("NFC", text)
            assert ll_encode(text, True) == tok.encode(text), text
            assert ll_encode(text, False) == tok.encode(text, parse_special=False), text
    finally:
        lc.llama_model_free(model)
