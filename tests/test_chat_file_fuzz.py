"""Session files (`pyqwen chat` /save, /load): a CI smoke of tools/chat_file_fuzz.py (fixed-seed
structure-aware mutations, truncations and byte flips of a saved conversation, run in a subprocess under
an address-space limit and a timeout), and regression tests for what the fuzzer and its review found:
an error outside pyqwen's hierarchy, deep JSON nesting escaping as RecursionError, lone surrogates
reaching the tokenizer, unknown message keys reaching the template, a file read whole whatever its size,
and a save that was not atomic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import pyqwen
from pyqwen.chat_repl import MAX_FILE_BYTES, load_conversation, save_conversation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chat_file_fuzz  # noqa: E402

N_CASES = 300
DEMO = Path(pyqwen.__file__).parent / "data" / "demo_model"


def test_fuzz_smoke():
    model = next(DEMO.glob("*.gguf"))
    rep = chat_file_fuzz.run_campaign(str(model), seed=2026, n_cases=N_CASES, case_timeout=60.0)
    assert rep["cases"] == N_CASES
    assert rep["bugs"] == 0, rep["findings"][:5]
    # the mutations reach every stage: refused at /load, refused at the turn, and loaded
    assert rep["outcomes"].get("file_error", 0) > N_CASES // 3, rep["outcomes"]
    assert rep["outcomes"].get("loaded", 0) > 10, rep["outcomes"]
    assert rep["outcomes"].get("turn_refused", 0) > 0, rep["outcomes"]


def test_mutations_are_reproducible():
    assert chat_file_fuzz.mutate(1, 17) == chat_file_fuzz.mutate(1, 17)
    assert len({chat_file_fuzz.mutate(1, i)[0] for i in range(30)}) == 30


def test_errors_are_pyqwen_errors(tmp_path):
    assert issubclass(pyqwen.ChatFileError, pyqwen.PyqwenError)
    p = tmp_path / "c.json"
    p.write_text("{")
    with pytest.raises(pyqwen.PyqwenError, match="not valid JSON"):
        load_conversation(p, chat_file_fuzz.MODEL_NAME)
    p.write_text(json.dumps(dict(chat_file_fuzz.seed_conversation(), version=True)))   # True == 1 in Python
    with pytest.raises(pyqwen.PyqwenError, match="version True is not supported"):
        load_conversation(p, chat_file_fuzz.MODEL_NAME)


def test_deep_nesting_is_a_clear_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('{"format": "pyqwen-chat", "messages": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(pyqwen.ChatFileError, match="nested too deeply"):
        load_conversation(p, chat_file_fuzz.MODEL_NAME)


def test_lone_surrogate_is_refused(tmp_path):
    p = tmp_path / "s.json"
    data = chat_file_fuzz.seed_conversation()
    data["messages"][0]["content"] = "a\ud800b"
    p.write_text(json.dumps(data), encoding="utf-8")      # ensure_ascii: the escape \ud800 is valid JSON
    with pytest.raises(pyqwen.ChatFileError, match=r"message 0: 'content' is not valid Unicode"):
        load_conversation(p, chat_file_fuzz.MODEL_NAME)


def test_unknown_message_keys_are_refused(tmp_path):
    data = chat_file_fuzz.seed_conversation()
    data["messages"][1]["tool_calls"] = 5
    p = tmp_path / "k.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(pyqwen.ChatFileError, match="message 1: unexpected key 'tool_calls'"):
        load_conversation(p, chat_file_fuzz.MODEL_NAME)


def test_a_huge_file_is_refused_unread(tmp_path):
    p = tmp_path / "huge.json"
    with open(p, "wb") as f:                   # sparse: no disk, and reading it would allocate 1 GiB
        f.truncate(1 << 30)
    with pytest.raises(pyqwen.ChatFileError, match=f"at most {MAX_FILE_BYTES} bytes"):
        load_conversation(p, chat_file_fuzz.MODEL_NAME)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failing write leaves the previous save intact and no temporary file behind."""
    p = tmp_path / "conv.json"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    save_conversation(p, "m", None, msgs)
    good = p.read_bytes()

    def boom(self, *a, **k):
        Path.write_bytes(self, b'{"format": "pyq')         # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError):
        save_conversation(p, "m", None, msgs + msgs)
    monkeypatch.undo()
    assert p.read_bytes() == good
    assert sorted(x.name for x in tmp_path.iterdir()) == ["conv.json"]
    assert load_conversation(p, "m") == (None, msgs)
