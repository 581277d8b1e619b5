"""`pyqwen chat` keeps one session (issue 14, item 4): turn 2 prefills only the new user message (counted
here from the chat template and the tokenizer, independently of the session cache), /save and /load keep
the conversation (a corrupt file is one clear line), and Ctrl-C stops a reply but keeps the session."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

import pyqwen
from pyqwen.cli import main

STATS = re.compile(r"prompt (\d+) tok \((\d+) cached\)")


@pytest.fixture(scope="module")
def model():
    return pyqwen.Model.load(threads=1)


def chat(capsys, monkeypatch, stdin: str, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["chat", "-n", "10", "--temp", "0", "-t", "1", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return [(int(a), int(b)) for a, b in STATS.findall(err)], err


def n_tokens(model, messages, gen: bool, **kw) -> int:
    return len(model.tokenize(model.chat_template.render(messages, add_generation_prompt=gen, **kw)))


@pytest.mark.parametrize("no_think", [False, True])
def test_turn_two_prefills_only_the_new_message(capsys, monkeypatch, tmp_path, model, no_think):
    saved = tmp_path / "conv.json"
    extra = ["--no-think"] if no_think else []
    turns, err = chat(capsys, monkeypatch, f"Hello there\nTell me more about it\n/save {saved}\n", *extra)
    assert len(turns) == 2, err
    msgs = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    kw = dict(preserve_thinking=True, **({"enable_thinking": False} if no_think else {}))
    history = n_tokens(model, msgs[:2], False, **kw)     # turn 1 as turn 2 renders it
    prompt2 = n_tokens(model, msgs[:3], True, **kw)
    (p1, c1), (p2, c2) = turns
    assert c1 == 0 and p1 == n_tokens(model, msgs[:1], True, **kw)
    assert p2 == prompt2 and c2 == history, (turns, history, prompt2)
    new_turn = len(model.tokenize("<|im_start|>user\nTell me more about it<|im_end|>\n<|im_start|>assistant\n"
                                  + ("<think>\n\n</think>\n\n" if no_think else "<think>\n")))
    assert p2 - c2 == new_turn


def test_save_load_and_corrupt_files(capsys, monkeypatch, tmp_path, model):
    saved = tmp_path / "conv.json"
    chat(capsys, monkeypatch, f"Hello there\n/save {saved}\n")
    msgs = json.loads(saved.read_text())["messages"]
    bad = tmp_path / "bad.json"
    bad.write_text(saved.read_text()[:40])                      # truncated
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(dict(json.loads(saved.read_text()), model="another-model")))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(dict(json.loads(saved.read_text()), messages=[{"role": "assistant", "content": 3}])))
    turns, err = chat(capsys, monkeypatch,
                      f"/load {bad}\n/load {foreign}\n/load {wrong}\n/load {tmp_path / 'none.json'}\n"
                      f"/load {saved}\nGo on\n")
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 4 and "Traceback" not in err, err
    assert "not valid JSON" in errors[0] and "another-model" in errors[1]
    assert "message 0 must be a user message" in errors[2] and "cannot read" in errors[3]
    # The loaded conversation is the context of the next turn: prefilled once, whole.
    ((p, c),) = turns
    assert c == 0 and p == n_tokens(model, msgs + [{"role": "user", "content": "Go on"}], True,
                                    preserve_thinking=True)


def test_ctrl_c_stops_the_reply_and_keeps_the_session(model):
    from pyqwen.chat_repl import ChatREPL
    from pyqwen.cli import ReplyPrinter

    class InterruptOnce(ReplyPrinter):
        fired = False

        def reasoning(self, text):
            if text and not self.fired:
                self.fired = True
                raise KeyboardInterrupt
            super().reasoning(text)

    sampling = dict(temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, presence_penalty=0.0, repetition_penalty=1.0,
                    penalty_last_n=64, seed=None, stop=[])
    repl = ChatREPL(model, sampling, 200, template_kwargs={"preserve_thinking": True})
    try:
        out = io.StringIO()
        stats, interrupted = repl.turn("Hello there", InterruptOnce(out))
        assert interrupted and stats == "(interrupted)"
        assert [m["role"] for m in repl.history] == ["user", "assistant"]
        # The session kept its state: the next turn resumes from the checkpoint at the reply's start (the
        # cut reply itself re-renders differently: the template trims the reasoning it was cut inside).
        reply_start = len(model.tokenize(model.chat_template.render(repl.history[:1], add_generation_prompt=False)
                                         + "<|im_start|>assistant\n"))
        stats, interrupted = repl.turn("Go on", ReplyPrinter(io.StringIO()))
        p, c = map(int, STATS.match(stats).groups())
        assert not interrupted and reply_start <= c < p, (stats, reply_start)
    finally:
        repl.close()
