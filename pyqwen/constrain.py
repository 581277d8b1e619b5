"""Constrained decoding: what a request says the output must be -- JSON matching a schema, any JSON object,
a qwen3_coder tool call, or a GBNF / Lark grammar -- as an llguidance grammar, and, per generation, the
mask of the tokens that grammar allows at each step.

llguidance (a maintained Rust engine; benchmarks/grammar_mask_cost.md measures why it and not xgrammar)
does all the grammar work: JSON schemas, GBNF and Lark are compiled by it, and it computes the masks.
pyqwen only gives it the vocabulary as token bytes (`token_table`), writes the small Lark grammars that
wrap a body (the reasoning before `</think>`, the tool-call XML), and applies the masks.

The mask for step t+1 depends only on the token chosen at step t, not on the logits, so `TokenMask`
computes it on a worker thread (llguidance drops the GIL) while the C++ forward pass of that token runs
(it drops the GIL too); the loop waits only for what is left of it when the logits are ready. Its
`compute_seconds` and `wait_seconds` measure how much of the mask's cost the forward hides.

End of generation: the end-of-generation tokens are the grammar engine's EOS tokens, so they are allowed
only where the grammar accepts (and are the only tokens allowed once it can take nothing more).

Reasoning: a chat reply whose prompt ends inside `<think>` is free text up to the `</think>` token and the
constraint applies to what follows it, as vLLM's structured outputs do with a reasoning parser.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import GrammarError

# Where reasoning ends: the `</think>` token (an added token of the Qwen3.5/3.6 vocabulary), then the
# newlines the template writes after it (two; fewer are allowed, more are not: they would be free tokens).
_REASONING = 'REASONING: /(?s:.*)/\nNEWLINES: /\\n{1,2}/\n'
_AFTER_THINK = "REASONING </think> NEWLINES?"


# JSON is written with one space after ':' and ',' and no other whitespace (a schema's own "x-guidance"
# options override this). With llguidance's default of whitespace anywhere, a model can fill its token
# budget with newlines and never close the object; random weights do exactly that.
JSON_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a dependency of pyqwen; only a broken install lacks it
        raise GrammarError("constrained decoding needs the llguidance package (pip install llguidance)") from None
    return llguidance


# ---- the vocabulary as llguidance sees it ---------------------------------------------------------------

class _Vocab:
    """What llguidance.TokenizerWrapper reads: each token's bytes, the EOS id, which ids are special, and
    a callable that tokenizes text (llguidance uses it for text it forces)."""

    def __init__(self, tokenizer):
        from .vocab_spec import CONTROL, USER_DEFINED

        self._tok = tokenizer
        n = tokenizer.n_vocab
        self.tokens = [tokenizer.id_to_bytes(i) for i in range(n)]
        eog = sorted(tokenizer.eog_ids)
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else (eog[0] if eog else 0)
        self.bos_token_id = None
        # Control tokens, and added tokens spelled like tags (<think>, </think>, <tool_call> ...): llguidance
        # keeps them apart from text, so a text rule never produces them and a grammar names them as <...>
        # (as llguidance's own llama.cpp adapter classifies them).
        self.special_token_ids = [i for i in range(n) if tokenizer.token_type(i) == CONTROL or (
            tokenizer.token_type(i) == USER_DEFINED and self.tokens[i].startswith(b"<") and self.tokens[i].endswith(b">"))]

    def __call__(self, text):
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        return self._tok.encode(text, parse_special=False)


_table_lock = threading.Lock()


def token_table(tokenizer):
    """llguidance's LLTokenizer for a pyqwen Tokenizer, with every end-of-generation token as its EOS.
    Built once per tokenizer and kept on it (about 6 s at Qwen3.6's 248,320 tokens, 0.1 s for the demo)."""
    table = getattr(tokenizer, "_llguidance_table", None)
    if table is not None:
        return table
    llg = _llguidance()
    with _table_lock:
        table = getattr(tokenizer, "_llguidance_table", None)
        if table is None:
            vocab = _Vocab(tokenizer)
            eos = sorted(tokenizer.eog_ids) or [vocab.eos_token_id]
            table = llg.LLTokenizer(llg.TokenizerWrapper(vocab), n_vocab=tokenizer.n_vocab, eos_token=eos)
            tokenizer._llguidance_table = table
    return table


# ---- what to enforce ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Constraint:
    """What the output must be, before it is compiled against a vocabulary.

    kind: "json" (value: a JSON schema), "grammar" (value: GBNF or Lark text) or "tool_call" (value:
    (tools, the forced function's name or None for any, whether several calls may follow each other)).
    param: the request field errors name.
    """

    kind: str
    value: Any
    param: str

    # -- from request fields (shape checks; the content is checked by compile()) --

    @staticmethod
    def json_schema(schema: Any, param: str = "json_schema") -> "Constraint":
        if not isinstance(schema, Mapping):
            raise GrammarError(f"'{param}' must be a JSON schema object", param)
        return Constraint("json", dict(schema), param)

    @staticmethod
    def grammar(text: Any, param: str = "grammar") -> "Constraint":
        if not isinstance(text, str) or not text.strip():
            raise GrammarError(f"'{param}' must be a non-empty GBNF or Lark grammar", param)
        return Constraint("grammar", text, param)

    @staticmethod
    def response_format(rf: Any, param: str = "response_format") -> "Constraint | None":
        """OpenAI's response_format: {"type": "text"} (None: no constraint), {"type": "json_object"} (any
        JSON object; llama-server's {"type": "json_object", "schema": {...}} too) or {"type": "json_schema",
        "json_schema": {"name", "schema", "strict"}} (strict or not, the schema is enforced)."""
        if not isinstance(rf, Mapping):
            raise GrammarError(f"'{param}' must be an object", param)
        kind = rf.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            if rf.get("schema") is not None:
                return Constraint.json_schema(rf["schema"], f"{param}.schema")
            return Constraint("json", {"type": "object"}, param)
        if kind == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, Mapping):
                raise GrammarError(f"'{param}.json_schema' must be an object", f"{param}.json_schema")
            if js.get("strict") is not None and not isinstance(js["strict"], bool):
                raise GrammarError(f"'{param}.json_schema.strict' must be a boolean", f"{param}.json_schema.strict")
            return Constraint.json_schema(js.get("schema"), f"{param}.json_schema.schema")
        raise GrammarError(f"'{param}.type' must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                           f"{param}.type")

    @staticmethod
    def tool_choice(tools: list[dict] | None, choice: Any, parallel: bool = True,
                    param: str = "tool_choice") -> "Constraint | None":
        """tool_choice "required" (a call to any of `tools`) or {"type": "function", "function": {"name"}}
        (a call to that one); None for "auto", "none" or no choice."""
        if choice is None or choice in ("auto", "none"):
            return None
        names = [t.get("function", t).get("name") for t in tools or [] if isinstance(t, Mapping)]
        if choice == "required":
            if not names:
                raise GrammarError("tool_choice 'required' needs 'tools'", param)
            return Constraint("tool_call", (list(tools), None, bool(parallel)), param)
        fn = choice.get("function") if isinstance(choice, Mapping) else None
        if not isinstance(fn, Mapping) or choice.get("type") != "function" or fn.get("name") not in names:
            raise GrammarError("'tool_choice' names no function in 'tools'", param)
        return Constraint("tool_call", (list(tools), fn["name"], bool(parallel)), param)

    # -- compiling --

    def compile(self, tokenizer, *, after_reasoning: bool = False) -> "Grammar":
        """The llguidance grammar for this constraint over tokenizer's vocabulary, checked by llguidance;
        after_reasoning: the output first closes a <think> block. GrammarError names what is wrong."""
        llg = _llguidance()
        table = token_table(tokenizer)
        try:
            if self.kind == "json":
                body = json.loads(llg.LLMatcher.grammar_from_json_schema(self.value, defaults=JSON_LAYOUT))
            elif self.kind == "grammar":
                from llguidance.gbnf_to_lark import any_to_lark   # GBNF -> Lark; Lark passes through

                body = {"grammars": [{"lark_grammar": any_to_lark(self.value)}]}
            elif self.kind == "tool_call":
                body = {"grammars": [{"lark_grammar": tool_call_lark(*self.value)}]}
            else:
                raise GrammarError(f"unknown constraint kind {self.kind!r}", self.param)
        except GrammarError:
            raise
        except Exception as e:  # llguidance reports unparseable input as ValueError (or its own types)
            raise GrammarError(f"invalid {self._what()}: {e}", self.param) from None
        if after_reasoning:
            body = _after_reasoning(body)
        text = json.dumps(body)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(text, table)
        if is_error:
            raise GrammarError(f"invalid {self._what()}: {messages[0]}", self.param)
        return Grammar(text, table, tokenizer.n_vocab)

    def _what(self) -> str:
        return {"json": "JSON schema", "grammar": "grammar", "tool_call": "tool schema"}.get(self.kind, self.kind)


def request_constraint(*, response_format: Any = None, grammar: Any = None, json_schema: Any = None,
                       tools: list[dict] | None = None, tool_choice: Any = None,
                       parallel_tool_calls: bool = True) -> Constraint | None:
    """The one constraint a request asks for, from whichever of its fields is set (OpenAI's response_format
    and tool_choice, llama-server's grammar and json_schema), or None. More than one is a GrammarError:
    their languages would have to be intersected, which no client expects."""
    found = []
    if response_format is not None:
        c = Constraint.response_format(response_format)
        if c is not None:
            found.append(c)
    if grammar is not None:
        found.append(grammar if isinstance(grammar, Constraint) else Constraint.grammar(grammar))
    if json_schema is not None:
        found.append(Constraint.json_schema(json_schema))
    c = Constraint.tool_choice(tools, tool_choice, parallel_tool_calls) if tool_choice is not None else None
    if c is not None:
        found.append(c)
    if len(found) > 1:
        raise GrammarError(f"give only one of {', '.join(repr(c.param) for c in found)}: the output cannot be held "
                           "to two grammars", found[1].param)
    return found[0] if found else None


def _after_reasoning(body: dict) -> dict:
    """Prefix a compiled grammar with free reasoning text up to `</think>` (the body is referenced as a
    named sub-grammar, so its own rule names cannot clash with the wrapper's)."""
    subs = body["grammars"]
    head, rest = dict(subs[0]), subs[1:]
    head["name"] = "pyqwen_body"
    wrapper = {"lark_grammar": f"start: {_AFTER_THINK} @pyqwen_body\n{_REASONING}"}
    return {**{k: v for k, v in body.items() if k != "grammars"}, "grammars": [wrapper, head, *rest]}


# ---- qwen3_coder tool calls ---------------------------------------------------------------------------
#
# The chat template writes a call as
#   <tool_call>\n<function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n ... </function>\n</tool_call>
# where <tool_call> and </tool_call> are added tokens, a string VALUE is raw text and any other VALUE is
# JSON (pyqwen.tool_calls.convert_value reads them back by the parameter's schema). The grammar below
# allows exactly that: the forced function (or any of the tools), its declared parameters in declaration
# order (required ones present, optional ones optional), string values as text that cannot close the
# element early, other values as JSON that llguidance holds to the parameter's schema.

# Text a raw string value must not contain: each would end the value or the call when it is parsed back.
# (JSON strings inside non-string values are not held to this: such a value holding "</parameter>" would
# be cut there when parsed back.)
_CLOSERS = r"(<parameter=|<\/parameter>|<function=|<\/function>|<tool_call>|<\/tool_call>)"


def _raw_value(schema: Any) -> str:
    """Terminal of a raw string value and the element's end: text without a closer, of the schema's
    minLength..maxLength characters (`pattern` and `format` are not enforced on raw strings)."""
    lo = schema.get("minLength") if isinstance(schema, Mapping) else None
    hi = schema.get("maxLength") if isinstance(schema, Mapping) else None
    lo = lo if isinstance(lo, int) and not isinstance(lo, bool) and lo >= 0 else 0
    hi = hi if isinstance(hi, int) and not isinstance(hi, bool) and hi >= lo else None
    length = "*" if (lo, hi) == (0, None) else f"{{{lo},{'' if hi is None else hi}}}"
    return f'(/(?s:.){length}/ & ~/(?s:.*){_CLOSERS}(?s:.*)/) "\\n</parameter>\\n"'


def _lit(s: str) -> str:
    return json.dumps(s)


def _is_raw_string(schema: Any) -> bool:
    """Parameters written as raw text: strings, untyped ones, and unions with string (the text is then a
    valid string whatever it says; see tool_calls.convert_value)."""
    from .tool_calls import _schema_types

    types = _schema_types(schema)
    return not types or "string" in types


def _string_choices(schema: Any) -> list[str] | None:
    if not isinstance(schema, Mapping):
        return None
    if isinstance(schema.get("const"), str):
        return [schema["const"]]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        return list(enum)
    return None


def tool_call_lark(tools: list[dict], name: str | None, parallel: bool) -> str:
    """Lark grammar of one qwen3_coder call (several, newline-separated, if parallel) to `name` or any tool."""
    lines, fns = [], []
    for i, t in enumerate(tools):
        fn = t.get("function", t)
        if name is not None and fn["name"] != name:
            continue
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        required = set(params.get("required") or [])
        parts = []
        for j, (pname, schema) in enumerate(props.items()):
            rule = f"f{i}_p{j}"
            head = _lit(f"<parameter={pname}>\n")
            choices = _string_choices(schema)
            if choices is not None:
                lines.append(f"{rule}: {head} ({' | '.join(_lit(c) for c in choices)}) \"\\n</parameter>\\n\"")
            elif _is_raw_string(schema):
                lines.append(f"{rule}: {head} F{i}_P{j}")
                lines.append(f"F{i}_P{j}: {_raw_value(schema)}")
            else:
                lines.append(f"{rule}: {head} {rule}_v \"\\n</parameter>\\n\"")
                xg = {**JSON_LAYOUT, **(schema.get("x-guidance") or {})}
                lines.append(f"{rule}_v: %json {json.dumps({**schema, 'x-guidance': xg})}")
            parts.append(rule if pname in required else f"{rule}?")
        lines.append(f"f{i}: {_lit('<function=' + fn['name'] + '>' + chr(10))} {' '.join(parts)} \"</function>\\n\"")
        fns.append(f"f{i}")
    if not fns:
        raise GrammarError(f"no tool named {name!r}", "tool_choice")
    calls = 'call ("\\n" call)*' if parallel else "call"
    head = [f"start: {calls}", f"call: <tool_call> \"\\n\" ({' | '.join(fns)}) </tool_call>"]
    return "\n".join(head + lines) + "\n"


# ---- compiled, and per generation -----------------------------------------------------------------------

class Grammar:
    """A compiled constraint: llguidance grammar text and the vocabulary table it runs on. Reusable; each
    generation takes its own `mask()`."""

    def __init__(self, text: str, table, n_vocab: int):
        self.text = text
        self.table = table
        self.n_vocab = n_vocab

    def mask(self) -> "TokenMask":
        return TokenMask(self)


# Byte of the mask's bitmap -> the additive bias of its 8 tokens (0 allowed, -inf not): np.take over the
# bitmap's bytes builds the bias row in ~50 us at 248,320 tokens on the worker, and the loop then only adds
# it to the logits (~50 us); a boolean np.where there cost 1.5-2.7 ms per token on this machine.
_BIAS_OF_BYTE = np.array([[0.0 if (b >> k) & 1 else -np.inf for k in range(8)] for b in range(256)], np.float32)


class TokenMask:
    """One generation's grammar state and its next-token mask, computed ahead on a worker thread.

    The loop calls start() before the prefill, then for each token it feeds: advance(token) before the
    forward pass and apply(logits) after it. apply() returns the logits with disallowed tokens at -inf.
    The worker hands over the mask as an additive bias row (0 / -inf), so applying it is one addition.
    """

    def __init__(self, grammar: Grammar):
        self._grammar = grammar
        self._m = None               # the llguidance matcher, made by the first job (during the prefill)
        self._n = grammar.n_vocab
        self._words = np.full((grammar.table.vocab_size + 31) // 32, -1, dtype=np.int32)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pyqwen-grammar")
        self._pending: Future | None = None
        self.steps = 0               # masks applied
        self.compute_seconds = 0.0   # worker time: consuming the token and computing the mask
        self.wait_seconds = 0.0      # loop time blocked on the worker (the part the forward did not hide)
        self.step_seconds: list[float] = []   # worker time of each mask (for benchmarks)

    def start(self) -> None:
        self._pending = self._pool.submit(self._next, None)

    def advance(self, token: int) -> None:
        self._pending = self._pool.submit(self._next, int(token))

    def _next(self, token: int | None) -> np.ndarray:
        t0 = time.perf_counter()
        if self._m is None:
            g = self._grammar
            self._m = _llguidance().LLMatcher(g.table, g.text, log_level=0)
        m = self._m
        if token is not None and not m.consume_token(token):
            raise GrammarError(f"token {token} is not allowed by the grammar here: {m.get_error()}")
        m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if m.is_error():
            raise GrammarError(f"the grammar failed: {m.get_error()}")
        bias = np.take(_BIAS_OF_BYTE, self._words.view(np.uint8), axis=0).reshape(-1)[:self._n]
        dt = time.perf_counter() - t0
        self.compute_seconds += dt
        self.step_seconds.append(dt)
        return bias

    def bias(self) -> np.ndarray:
        """The mask for the next token as a bias row (float32 [n_vocab]: 0 allowed, -inf not), waiting for
        the worker if it is not done."""
        t0 = time.perf_counter()
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("TokenMask: start() or advance() must come before the mask is read")
        try:
            return pending.result()
        finally:
            self.wait_seconds += time.perf_counter() - t0
            self.steps += 1

    def allowed(self) -> np.ndarray:
        """The mask for the next token (bool [n_vocab])."""
        return self.bias() == 0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The logits with the tokens the grammar does not allow at -inf (a new array)."""
        return np.asarray(logits, dtype=np.float32) + self.bias()

    @property
    def accepting(self) -> bool:
        return self._m is not None and self._m.is_accepting()

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._pool.shutdown(wait=True)
