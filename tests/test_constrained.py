"""Constrained decoding (issue 14, item 1): response_format json_schema / json_object, llama-server's
`grammar` (GBNF, Lark), tool_choice "required" and a named function, through the real `openai` client
against the server, on the trained demo model and on random weights (the mask, not the model, makes the
output valid). Outputs are checked with the `jsonschema` package and pyqwen's tool-call parser's
independent counterpart (the OpenAI response's `tool_calls`); greedy constrained decoding is checked
against masked argmax computed from Model.eval logits with llguidance's own tokenizer (built from the
HF tokenizer.json, not from pyqwen's token table) and its own mask application."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pyqwen
from pyqwen.demo import TOKENIZER_DIR, random_demo_model_path

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
llguidance = pytest.importorskip("llguidance")
pytest.importorskip("fastapi")

# Bounded everywhere (string lengths, integer ranges, array sizes, no extra keys), so even random weights
# finish the object well inside the token budget: the mask makes it valid, the bounds make it end.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "kind", "active"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
USER = [{"role": "user", "content": "Describe a pet as JSON."}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1,
                                                                             "maximum": 7},
                       "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "days"]}}},
    {"type": "function", "function": {"name": "set_alarm", "parameters": {
        "type": "object",
        "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}, "loud": {"type": "boolean"}},
        "required": ["hour"]}}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _serve(model):
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import serve_in_thread

    engine = Engine(model, cache_ram_mib=64)
    ctx = serve_in_thread(create_app(engine))
    url = ctx.__enter__()
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    return client, lambda: (ctx.__exit__(None, None, None), engine.shutdown())


@pytest.fixture(scope="module", params=["trained", "random"])
def served(request):
    path = None if request.param == "trained" else random_demo_model_path()
    model = pyqwen.Model.load(path, kv_type="f32", threads=1, n_ctx=1024)
    client, stop = _serve(model)
    yield request.param, model, client
    stop()


def test_json_schema_outputs_validate(served):
    kind, _, client = served
    for seed in range(4):
        r = client.chat.completions.create(model="m", messages=USER, max_tokens=120, temperature=1.0, seed=seed,
                                           response_format=RESPONSE_FORMAT, extra_body=NO_THINK)
        c = r.choices[0]
        assert c.finish_reason == "stop", (kind, c.message.content)
        jsonschema.validate(json.loads(c.message.content), SCHEMA)
    # Streamed: the deltas join to a valid document too.
    text = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="m", messages=USER, max_tokens=120, temperature=0.8, seed=9, stream=True,
        response_format=RESPONSE_FORMAT, extra_body=NO_THINK) if ch.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    # /v1/completions takes response_format too (and llama-server's bare `json_schema`).
    for extra in ({"response_format": RESPONSE_FORMAT}, {"json_schema": SCHEMA}):
        r = client.completions.create(model="m", prompt="pet = ", max_tokens=120, temperature=1.0, seed=3,
                                      extra_body=extra)
        jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)


def test_json_object(served):
    kind, _, client = served
    if kind == "random":
        pytest.skip("any JSON object has unbounded keys: random weights need not close one in the budget")
    r = client.completions.create(model="m", prompt="settings = ", max_tokens=200, temperature=0,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].text), dict)


def test_gbnf_and_lark_grammars_restrict_output(served):
    _, _, client = served
    seen = set()
    for seed in range(6):
        r = client.chat.completions.create(model="m", messages=USER, max_tokens=10, temperature=1.5, seed=seed,
                                           extra_body={"grammar": 'root ::= ("yes" | "no")', **NO_THINK})
        assert r.choices[0].message.content in ("yes", "no") and r.choices[0].finish_reason == "stop"
        seen.add(r.choices[0].message.content)
    r = client.completions.create(model="m", prompt="x = ", max_tokens=20, temperature=1.0, seed=1,
                                  extra_body={"grammar": 'start: NUM ("," NUM){2}\nNUM: /[1-9][0-9]?/'})
    parts = r.choices[0].text.split(",")
    assert len(parts) == 3 and all(p.isdigit() and 1 <= int(p) <= 99 for p in parts), r.choices[0].text


def _check_calls(calls, allowed: set[str]):
    assert calls
    for call in calls:
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_tool_choice_required_and_named(served):
    _, _, client = served
    for seed in range(3):
        r = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=300, temperature=1.0, seed=seed,
                                           extra_body=NO_THINK)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c.message.content
        _check_calls(c.message.tool_calls, {"get_weather", "set_alarm"})
    # Parallel calls allowed: a model that never learnt to stop calling may run to max_tokens, but every
    # call it completed is well formed.
    r = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, tool_choice="required",
                                       max_tokens=120, temperature=1.0, seed=7, extra_body=NO_THINK)
    _check_calls(r.choices[0].message.tool_calls, {"get_weather", "set_alarm"})
    r = client.chat.completions.create(
        model="m", messages=USER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "set_alarm"}},
        parallel_tool_calls=False, max_tokens=300, temperature=1.0, seed=5, extra_body=NO_THINK)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1
    _check_calls(calls, {"set_alarm"})


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"grammar": 'root ::= ("yes" | '}, "grammar"),
    ({"grammar": 'root ::= undefined_rule'}, "grammar"),
    ({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}, "grammar"),
])
def test_invalid_constraints_are_400(served, extra, param):
    _, _, client = served
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=USER, max_tokens=5, extra_body=extra)
    assert e.value.body["param"] == param and e.value.body["message"]


# ---- the Python API, against an independent masked argmax ------------------------------------------------

def _llg_reference(model, prompt_ids: list[int], grammar_text: str, n: int) -> list[int]:
    """Greedy under the grammar with llguidance's own HF-tokenizer table and mask application, and logits
    from fresh Model.eval calls."""
    import llguidance.numpy as lnp

    table = llguidance.LLTokenizer((TOKENIZER_DIR / "tokenizer.json").read_text(), n_vocab=model.n_vocab,
                                   eos_token=sorted(model.tokenizer.eog_ids))
    m = llguidance.LLMatcher(table, grammar_text)
    bits = lnp.allocate_token_bitmask(1, model.n_vocab)
    ids, out = list(prompt_ids), []
    for _ in range(n):
        logits = model.eval(ids)[-1:].copy()
        lnp.fill_next_token_bitmask(m, bits)
        lnp.apply_token_bitmask_inplace(logits, bits)
        tok = int(np.argmax(logits[0]))
        if tok in model.tokenizer.eog_ids:
            break
        assert m.consume_token(tok)
        out.append(tok)
        ids.append(tok)
    return out


@pytest.mark.parametrize("path", ["trained", "random"])
def test_greedy_constrained_equals_masked_argmax(path):
    from pyqwen.constrain import JSON_LAYOUT

    model = pyqwen.Model.load(None if path == "trained" else random_demo_model_path(), kv_type="f32", threads=1,
                              n_ctx=512)
    prompt = "config = "
    text = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults=JSON_LAYOUT)
    ref = _llg_reference(model, model.tokenize(prompt), text, 100)
    # Speculation asked for, and off under a grammar: the same tokens.
    for spec in ("off", "lookup"):
        g = model.generate(prompt, max_tokens=100, temperature=0, response_format=RESPONSE_FORMAT, spec=spec)
        list(g)
        assert g.tokens == ref, spec
        assert g.stats.spec == "off" and g.stats.grammar_steps == len(ref) + (g.finish_reason == "stop")
    assert g.finish_reason == "stop"
    jsonschema.validate(json.loads(model.detokenize(ref)), SCHEMA)


def test_python_api_chat_and_errors():
    model = pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=1024)
    reply = model.chat(USER, enable_thinking=False, max_tokens=100, sampling={"temperature": 0.7, "seed": 2},
                       response_format=RESPONSE_FORMAT)
    list(reply)
    jsonschema.validate(json.loads(reply.content), SCHEMA)
    from pyqwen.tool_calls import parse_tool_calls

    reply = model.chat(USER, tools=TOOLS, tool_choice="required", enable_thinking=False, max_tokens=300,
                       sampling={"temperature": 1.0, "seed": 4})
    list(reply)
    _, calls = parse_tool_calls(reply.content, TOOLS)
    assert calls and all(c.name in PARAMS for c in calls)
    for c in calls:
        jsonschema.validate(c.arguments, PARAMS[c.name])
    with pytest.raises(pyqwen.GrammarError, match="Invalid type"):
        model.generate("x", response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nah"}}})
    with pytest.raises(pyqwen.GrammarError):
        model.generate("x", grammar="root ::= (")


def test_reasoning_then_constraint_mask():
    """With the prompt inside <think>, reasoning is free (but cannot end the reply) until </think>; then
    only the constrained body: checked on the mask itself, token by token."""
    from pyqwen.constrain import Constraint

    model = pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=256)
    tok = model.tokenizer
    eog = sorted(tok.eog_ids)
    think_end = tok.token_to_id("</think>")
    g = Constraint.grammar('root ::= ("yes" | "no")').compile(tok, after_reasoning=True)
    m = g.mask()
    try:
        m.start()
        a = m.allowed()
        assert a[think_end] and not a[eog].any() and a.sum() > tok.n_vocab // 2   # free text, no end
        for t in tok.encode("so, maybe") + [think_end] + tok.encode("\n\n"):
            m.advance(t)
            a = m.allowed()
        texts = {tok.decode([int(i)]) for i in np.flatnonzero(a)}
        assert texts and all("yes".startswith(x) or "no".startswith(x) for x in texts), texts
        assert not a[eog].any()
        for t in tok.encode("yes"):
            m.advance(t)
            a = m.allowed()
        assert set(np.flatnonzero(a).tolist()) == set(eog)        # accepted: only the end is left
    finally:
        m.close()



def test_cli_grammar_and_json_schema(capsys, tmp_path):
    from pyqwen.cli import main

    def run(*argv):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = run("generate", "-p", "x = ", "-n", 20, "--temp", 1.2, "--seed", 3, "-t", 1,
                       "--grammar", 'root ::= ("yes" | "no")')
    assert rc == 0 and out.strip() in ("yes", "no"), err
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    rc, out, err = run("generate", "-p", "pet = ", "-n", 150, "--temp", 1.0, "--seed", 1, "-t", 1,
                       "--json-schema-file", schema)
    assert rc == 0, err
    jsonschema.validate(json.loads(out), SCHEMA)
    rc, out, err = run("generate", "-p", "x", "-n", 5, "-j", '{"type": "bogus"}')
    assert rc == 2 and "invalid JSON schema" in err and "bogus" in err
    rc, out, err = run("generate", "-p", "x", "-n", 5, "-j", "{}", "--grammar", "root ::= \"a\"")
    assert rc == 2 and "only one of" in err
