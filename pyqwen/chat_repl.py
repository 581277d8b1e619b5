"""`pyqwen chat`: a conversation that keeps its state between turns.

The REPL runs its turns through the server's Engine (pyqwen.server.engine) in-process: the same template
rendering, session cache (pyqwen.session), generation loop and reply split as `pyqwen serve`, on one
session. After each reply the session's state is lined up with the history the next turn renders, so
turn 2 prefills only the new user message (the stats line shows the cached tokens). Ctrl-C stops a
reply and keeps the session: the tokens consumed so far stay cached.

Commands: /reset, /save FILE, /load FILE, /help, /exit. A saved file is the conversation (JSON, with the
model it was held with); /load checks it field by field and refuses a corrupt or foreign file with one
line, then the next turn prefills the loaded conversation once.
"""

from __future__ import annotations

import json
import os
import queue
import sys
from pathlib import Path
from typing import Any

from .errors import ChatFileError  # re-exported: callers catch it from here

SAVE_FORMAT = "pyqwen-chat"
SAVE_VERSION = 1
SESSION_KEY = "pyqwen-chat"

CHAT_HELP = ("commands: /exit (or EOF) quits, /reset clears the conversation, /save FILE and /load FILE keep it, "
             "/help shows this; end a line with \\ to continue on the next; Ctrl-C stops a reply")

# A conversation that fits any context pyqwen can hold is far below this (262,144 tokens are ~1 MiB of text,
# a few MiB as escaped JSON); a larger file is refused before it is read, so /load never allocates by it.
MAX_FILE_BYTES = 64 << 20
MESSAGE_KEYS = {"role", "content", "reasoning_content"}


class _DirectLoop:
    """Stands in for the asyncio loop a Job reports to: events go straight into a thread-safe queue."""

    @staticmethod
    def call_soon_threadsafe(fn, *args):
        fn(*args)


def save_conversation(path: str | Path, model_name: str, system: str | None, history: list[dict]) -> None:
    """Write the conversation as JSON; to a temporary name first, then renamed: a crash or a full disk
    never leaves a half-written file where the previous save was."""
    p = Path(path)
    data = {"format": SAVE_FORMAT, "version": SAVE_VERSION, "model": model_name, "system": system,
            "messages": history}
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _check_text(p: Path, where: str, s: str) -> None:
    # JSON escapes can spell lone surrogates (\ud800), which no UTF-8 tokenizer can take
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ChatFileError(f"{p}: {where} is not valid Unicode (a lone surrogate)") from None


def load_conversation(path: str | Path, model_name: str) -> tuple[str | None, list[dict]]:
    """(system, messages) from a file written by save_conversation; ChatFileError names what is wrong."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ChatFileError(f"cannot read {p}: {e.strerror or e}") from None
    if size > MAX_FILE_BYTES:
        raise ChatFileError(f"{p} is not a saved conversation ({size} bytes; a saved conversation is "
                            f"at most {MAX_FILE_BYTES} bytes)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ChatFileError(f"cannot read {p}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ChatFileError(f"{p} is not a saved conversation (not valid JSON: {e})") from None
    except RecursionError:
        raise ChatFileError(f"{p} is not a saved conversation (JSON nested too deeply)") from None
    if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
        raise ChatFileError(f"{p} is not a saved conversation (no \"format\": \"{SAVE_FORMAT}\")")
    if type(data.get("version")) is not int or data.get("version") != SAVE_VERSION:
        raise ChatFileError(f"{p}: version {_short(data.get('version'))} is not supported (expected {SAVE_VERSION})")
    if data.get("model") != model_name:
        raise ChatFileError(f"{p} was saved with model {_short(data.get('model'))}, this is {model_name!r}")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise ChatFileError(f"{p}: \"system\" must be a string or null")
    if system is not None:
        _check_text(p, "\"system\"", system)
    msgs = data.get("messages")
    if not isinstance(msgs, list):
        raise ChatFileError(f"{p}: \"messages\" must be a list")
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != want:
            raise ChatFileError(f"{p}: message {i} must be {'a' if i % 2 == 0 else 'an'} {want} message")
        extra = sorted(set(m) - MESSAGE_KEYS)
        if extra:       # the template would read them (tool_calls, ...): nothing /save writes
            raise ChatFileError(f"{p}: message {i}: unexpected key {_short(extra[0])}")
        for k in ("content", "reasoning_content"):
            if k in m and not isinstance(m[k], str):
                raise ChatFileError(f"{p}: message {i}: {k!r} must be a string")
            if k in m:
                _check_text(p, f"message {i}: {k!r}", m[k])
        if "content" not in m:
            raise ChatFileError(f"{p}: message {i} has no content")
    return system, msgs


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


class ChatREPL:
    """One conversation on one Engine session."""

    def __init__(self, model, sampling: dict, max_tokens: int, *, system: str | None = None,
                 template_kwargs: dict | None = None, cache_ram_mib: float = 4096):
        from .server.engine import Engine

        self.model = model
        self.engine = Engine(model, cache_ram_mib=cache_ram_mib, max_queue=1)
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.system = system
        self.template_kwargs = dict(template_kwargs or {})
        self.history: list[dict] = []

    def close(self) -> None:
        self.engine.shutdown()

    def reset(self) -> None:
        self.history.clear()
        self.engine.cache.drop(SESSION_KEY)

    def save(self, path: str) -> None:
        save_conversation(path, self.engine.model_name, self.system, self.history)

    def load(self, path: str) -> None:
        system, msgs = load_conversation(path, self.engine.model_name)
        self.reset()
        self.system, self.history = system, msgs

    def _request(self, user: dict):
        from .server.protocol import ChatRequest, Sampling

        s = self.sampling
        sampling = Sampling(temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"], min_p=s["min_p"],
                            presence_penalty=s["presence_penalty"], repetition_penalty=s["repetition_penalty"],
                            seed=s["seed"], stop=list(s["stop"]), penalty_last_n=s["penalty_last_n"])
        messages = ([{"role": "system", "content": self.system}] if self.system is not None else [])
        messages += self.history + [user]
        return ChatRequest(messages=messages, tools=None, tool_choice=None, max_tokens=self.max_tokens, stream=True,
                           include_usage=False, sampling=sampling, template_kwargs=dict(self.template_kwargs),
                           session_key=SESSION_KEY)

    def turn(self, text: str, printer) -> tuple[str, bool]:
        """Send one user message, print the reply as it comes; returns (stats line, interrupted).
        Raises the server's APIError for a conversation that does not fit."""
        user = {"role": "user", "content": text}
        events: queue.Queue = queue.Queue()
        job = self.engine.prepare_chat(self._request(user), _DirectLoop(), events)
        self.engine.submit(job)
        reasoning, content = [], []
        interrupted = False
        payload: Any = None
        try:
            while True:
                try:
                    kind, payload = events.get()
                    if kind != "delta":
                        break
                    reasoning.append(payload.get("reasoning_content") or "")
                    content.append(payload.get("content") or "")
                    printer.reasoning(payload.get("reasoning_content"))
                    printer.content(payload.get("content"))
                except KeyboardInterrupt:
                    job.cancel()      # the worker stops between tokens and reports it; keep reading until then
                    interrupted = True
        finally:
            printer.finish()
        if kind == "done":
            reply = {"role": "assistant", "content": payload["content"]}
            if payload["reasoning_content"]:
                reply["reasoning_content"] = payload["reasoning_content"]
            self.history += [user, reply]
            return payload["stats"].summary(), False
        if interrupted or payload.status == 499:
            # Keep what was said: the session holds these tokens, so the next turn reuses them.
            reply = {"role": "assistant", "content": "".join(content)}
            if any(reasoning):
                reply["reasoning_content"] = "".join(reasoning)
            self.history += [user, reply]
            return "(interrupted)", True
        raise payload


def read_user(tty: bool) -> str | None:
    """One user message (backslash-continued lines joined), or None at EOF."""
    lines = []
    while True:
        if tty:
            try:
                line = input("> " if not lines else ". ")
            except EOFError:
                line = None
        else:
            line = sys.stdin.readline()
            line = line.rstrip("\n") if line else None
        if line is None:
            return "\n".join(lines) if lines else None
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def run(repl: ChatREPL, printer, tty: bool) -> int:
    from .server.protocol import APIError

    while True:
        try:
            text = read_user(tty)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        if text is None:
            break
        cmd = text.strip()
        if not cmd:
            continue
        word, _, arg = cmd.partition(" ")
        if word in ("/exit", "/quit", "/bye"):
            break
        if word == "/reset":
            repl.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if word == "/help":
            print(CHAT_HELP, file=sys.stderr)
            continue
        if word in ("/save", "/load"):
            if not arg.strip():
                print(f"pyqwen chat: error: {word} needs a file name", file=sys.stderr)
                continue
            try:
                if word == "/save":
                    repl.save(arg.strip())
                    print(f"(saved {len(repl.history)} messages to {arg.strip()})", file=sys.stderr)
                else:
                    repl.load(arg.strip())
                    print(f"(loaded {len(repl.history)} messages from {arg.strip()})", file=sys.stderr)
            except (ChatFileError, OSError) as e:
                print(f"pyqwen chat: error: {e}", file=sys.stderr)
            continue
        try:
            stats, _ = repl.turn(text, printer)
        except APIError as e:
            print(f"pyqwen chat: error: {e.message}; /reset to start a new conversation", file=sys.stderr)
            continue
        print(stats, file=sys.stderr)
        if not tty:
            sys.stdout.flush()
    return 0
