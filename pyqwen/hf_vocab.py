"""HF tokenizer directory -> GGUF tokenizer metadata, laid out as llama.cpp's converter writes it for
Qwen3.5/3.6 (byte-level BPE, `tokenizer.ggml.model = "gpt2"`, `pre = "qwen35"`).

Shared by the runtime (pyqwen.tokenizer.Tokenizer.from_hf_dir) and the converter (pyqwen.convert.vocab
writes these keys), so it lives outside both.

Only tokenizer.json / tokenizer_config.json (and config.json for special-id gaps) are read, so converting
does not need transformers. Special ids, add_*_token flags, merges and the chat template come from
`gguf.SpecialVocab`, the same helper llama.cpp's converter uses, so precedence rules match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from .vocab_spec import CONTROL, NORMAL, PRE_BY_REGEX, PRE_REGEX, UNUSED, USER_DEFINED  # noqa: F401

QWEN35_REGEX = PRE_REGEX["qwen35"]
QWEN2_REGEX = PRE_REGEX["qwen2"]


def _looks_special(text: str) -> bool:
    """Added tokens that llama.cpp's converter promotes to CONTROL although HF calls them non-special."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))  # fullwidth-bar variant
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _split_regexes(pre_tok: Any) -> list[str]:
    """Every Split regex inside a (possibly nested) tokenizer.json pre_tokenizer."""
    if not isinstance(pre_tok, dict):
        return []
    if pre_tok.get("type") == "Sequence":
        return [r for p in pre_tok.get("pretokenizers", []) for r in _split_regexes(p)]
    if pre_tok.get("type") == "Split":
        pattern = pre_tok.get("pattern", {})
        return [pattern["Regex"]] if "Regex" in pattern else []
    return []


def _detect_pre(tok_json: dict) -> str:
    regexes = _split_regexes(tok_json.get("pre_tokenizer"))
    for r in regexes:
        if r in PRE_BY_REGEX:
            return PRE_BY_REGEX[r]
    raise ValueError(
        f"unrecognised pre-tokenizer regex {regexes!r}: only the Qwen3.5 (qwen35) and Qwen2 (qwen2) "
        "byte-level BPE pipelines are supported; pass pre= explicitly to override"
    )


def vocab_metadata(tokenizer_dir: Path | str, vocab_size: int, *, pre: str | None = None) -> dict[str, Any]:
    """The GGUF tokenizer keys as Python values, in the order llama.cpp writes them."""
    tokenizer_dir = Path(tokenizer_dir)
    tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    cfg_path = tokenizer_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}

    model = tok_json.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"expected a BPE tokenizer.json, got model type {model.get('type')!r}")

    # HF's view of the vocab is the BPE vocab plus the added tokens; the config's added_tokens_decoder
    # has the last word on whether an added token is special (transformers reads it the same way).
    added: dict[int, tuple[str, bool]] = {}
    for t in tok_json.get("added_tokens", []):
        added[int(t["id"])] = (t["content"], bool(t.get("special", False)))
    for sid, t in (tok_cfg.get("added_tokens_decoder") or {}).items():
        added[int(sid)] = (t["content"], bool(t.get("special", False)))
    id_to_text: dict[int, str] = {int(i): s for s, i in model["vocab"].items()}
    id_to_text.update({i: c for i, (c, _) in added.items()})
    if id_to_text and max(id_to_text) >= vocab_size:
        raise ValueError(f"tokenizer has id {max(id_to_text)} but vocab_size is {vocab_size}")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in id_to_text:
            # Embedding rows past the tokenizer (the model pads its vocab) get placeholder names.
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            text, special = added[i]
            if special or _looks_special(text):
                types.append(CONTROL)
            else:
                types.append(USER_DEFINED)
                text = text.replace("\u2581", " ")  # llama.cpp stores user-defined spaces pre-normalised
            tokens.append(text)
        else:
            tokens.append(id_to_text[i])
            types.append(NORMAL)

    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True)
    meta: dict[str, Any] = {
        gguf.Keys.Tokenizer.MODEL: "gpt2",
        gguf.Keys.Tokenizer.PRE: pre or _detect_pre(tok_json),
        gguf.Keys.Tokenizer.LIST: tokens,
        gguf.Keys.Tokenizer.TOKEN_TYPE: types,
    }
    if special.merges:
        meta[gguf.Keys.Tokenizer.MERGES] = list(special.merges)
    for typ, tid in special.special_token_ids.items():
        meta[_special_id_key(typ)] = int(tid)
    for typ, flag in special.add_special_token.items():
        meta[f"tokenizer.ggml.add_{typ}_token"] = bool(flag)
    meta.update(_chat_template_keys(special.chat_template))
    return meta


def _special_id_key(typ: str) -> str:
    # gguf's key names are not uniform ("padding_token_id" for pad), so ask its constants.
    consts = {"bos": "BOS_ID", "eos": "EOS_ID", "unk": "UNK_ID", "sep": "SEP_ID", "pad": "PAD_ID",
              "cls": "CLS_ID", "mask": "MASK_ID", "eot": "EOT_ID", "eom": "EOM_ID"}
    return getattr(gguf.Keys.Tokenizer, consts[typ])


def _chat_template_keys(template: Any) -> dict[str, Any]:
    """Key layout of GGUFWriter.add_chat_template: one default string plus optional named variants."""
    if template is None:
        return {}
    if isinstance(template, str):
        return {gguf.Keys.Tokenizer.CHAT_TEMPLATE: template}
    out: dict[str, Any] = {}
    names: list[str] = []
    default = None
    for choice in template:
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
        body = choice.get("template")
        if not name or body is None:
            continue
        if name == "default":
            default = body
        elif name not in names:
            names.append(name)
            out[gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name)] = body
    if names:
        out[gguf.Keys.Tokenizer.CHAT_TEMPLATES] = names
    if default is not None:
        out[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = default
    return out
