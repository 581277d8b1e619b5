"""qwen3_coder XML tool calls: parsing (whole and streamed), schema typing, malformed input, and the
round trip through the official Qwen3.6 chat template (OpenAI tool_calls -> template -> parser)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pyqwen.chat import ChatTemplate
from pyqwen.tool_calls import (ToolCallParser, ToolSpecError, convert_value, messages_for_template,
                               parse_tool_calls, validate_tools)

TEMPLATE = ChatTemplate((Path(__file__).resolve().parents[1] / "pyqwen" / "data" /
                         "qwen3.6-chat-template.jinja").read_text())

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
            "threshold": {"type": "number"}, "opts": {"type": "object"}, "tags": {"type": "array"},
            "note": {"type": ["string", "null"]}, "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        }, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "run_shell", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}},
]


def call_xml(name: str, **params) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def stream_parse(text: str, tools=TOOLS, pieces=None):
    p = ToolCallParser(tools)
    events = []
    rng = random.Random(len(text))
    i = 0
    while i < len(text):
        n = pieces or rng.randint(1, 7)
        events += p.push(text[i:i + n])
        i += n
    events += p.flush()
    content = "".join(v for k, v in events if k == "content")
    return content, [v for k, v in events if k == "tool_call"], events


def test_single_call_typed_by_schema():
    text = call_xml("get_weather", city="Paris", days="3", metric="true", threshold="2.5",
                    opts='{"a": [1, 2]}', tags='["x", "y"]', note="null", maybe="7")
    content, calls = parse_tool_calls(text, TOOLS)
    assert content == ""
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].arguments == {"city": "Paris", "days": 3, "metric": True, "threshold": 2.5,
                                  "opts": {"a": [1, 2]}, "tags": ["x", "y"], "note": None, "maybe": 7}
    oa = calls[0].to_openai()
    assert oa["type"] == "function" and oa["id"].startswith("call_")
    assert json.loads(oa["function"]["arguments"])["days"] == 3


def test_strings_kept_verbatim_and_untyped_values():
    text = call_xml("get_weather", city="  New York\nline 2  ", days="three")
    _, calls = parse_tool_calls(text, TOOLS)
    # One newline each side is the format's; the rest belongs to the value. Bad integers stay strings.
    assert calls[0].arguments == {"city": "  New York\nline 2  ", "days": "three"}
    # Unknown tool / no schema: everything is a string.
    _, calls = parse_tool_calls(call_xml("other", n="5"), TOOLS)
    assert calls[0].arguments == {"n": "5"}


def test_convert_value_edge_cases():
    assert convert_value("1e3", {"type": "number"}) == 1000.0
    assert convert_value("4.0", {"type": "integer"}) == 4
    assert convert_value("true", {"type": "integer"}) == "true"
    assert convert_value("{'a': True}", {"type": "object"}) == {"a": True}   # Python literal
    assert convert_value("[1,", {"type": "array"}) == "[1,"
    assert convert_value("False", {"type": "boolean"}) is False
    assert convert_value("x", {"enum": ["x", "y"]}) == "x"
    assert convert_value("5", None) == "5"


def test_text_before_and_several_calls():
    text = ("I'll check both cities.\n\n" + call_xml("get_weather", city="Paris") + "\n"
            + call_xml("get_weather", city="Rome", days="2"))
    for content, calls in (parse_tool_calls(text, TOOLS), stream_parse(text)[:2]):
        assert content == "I'll check both cities."
        assert [c.arguments for c in calls] == [{"city": "Paris"}, {"city": "Rome", "days": 2}]


@pytest.mark.parametrize("pieces", [1, 2, 3, 5, None])
def test_streaming_never_leaks_partial_xml(pieces):
    text = "Let me look.\n\n" + call_xml("run_shell", cmd="ls -la </tmp>") + "\n" + call_xml("get_weather", city="X")
    content, calls, events = stream_parse(text, pieces=pieces)
    for kind, v in events:
        if kind == "content":
            assert "<tool" not in v and "<" not in v and "function" not in v
    assert content == "Let me look."
    assert [c.name for c in calls] == ["run_shell", "get_weather"]
    assert calls[0].arguments == {"cmd": "ls -la </tmp>"}
    assert (content, [c.arguments for c in calls]) == (lambda r: (r[0], [c.arguments for c in r[1]]))(
        parse_tool_calls(text, TOOLS))


def test_content_with_angle_brackets_is_emitted():
    text = "a < b and <tool is not a call; x<tool_cal"
    content, calls, _ = stream_parse(text, pieces=1)
    assert calls == [] and content == text


@pytest.mark.parametrize("bad", [
    "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n",            # unterminated, no </function>
    "<tool_call>\nno function here\n</tool_call>",
    "<tool_call>\n<function=>\n</function>\n</tool_call>",
    "<tool_call>\n<function=f>\njunk<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<function=f>\n<function=g>\n</function>\n</tool_call>",
])
def test_malformed_is_returned_as_text(bad):
    text = "Before. " + bad
    content, calls = parse_tool_calls(text, TOOLS)
    assert calls == []
    assert content == text.strip()
    assert stream_parse(text)[0] == text.strip()


def test_lenient_forms():
    # Missing </parameter> and missing </tool_call> at the end of the generation are accepted.
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n2\n</function>"
    _, calls = parse_tool_calls(text, TOOLS)
    assert calls[0].arguments == {"city": "Oslo", "days": 2}
    # A valid call next to a malformed one: the valid one is parsed, the other stays text.
    text = call_xml("get_weather", city="A") + "\n<tool_call>\nbroken\n</tool_call>"
    content, calls = parse_tool_calls(text, TOOLS)
    assert [c.arguments for c in calls] == [{"city": "A"}]
    assert content == "<tool_call>\nbroken\n</tool_call>"


def test_template_round_trip():
    """OpenAI tool_calls -> template text -> parser gives the same calls back."""
    args = [{"city": "Paris", "days": 3, "metric": False, "opts": {"k": [1, "two"]}, "note": "multi\nline"},
            {"cmd": "echo 'hi' && ls"}]
    openai_msg = {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args[0])}},
        {"id": "call_2", "type": "function", "function": {"name": "run_shell", "arguments": json.dumps(args[1])}},
    ]}
    msgs = messages_for_template([
        {"role": "user", "content": "weather?"}, openai_msg,
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "hi"},
    ])
    text = TEMPLATE.render(msgs, tools=TOOLS, add_generation_prompt=True)
    assert "<tool_response>\nsunny\n</tool_response>" in text
    start = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    reply = text[start:text.index("<|im_end|>", start)]
    reply = reply.split("</think>")[-1].lstrip("\n")
    content, calls = parse_tool_calls(reply, TOOLS)
    assert content == "Checking."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", args[0]), ("run_shell", args[1])]


def test_messages_for_template_errors():
    with pytest.raises(ToolSpecError):
        messages_for_template([{"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}])
    with pytest.raises(ToolSpecError):
        messages_for_template([{"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}])
    out = messages_for_template([{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": ""}}]}])
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.parametrize("tools", [
    {"type": "function"},
    [{"type": "function"}],
    [{"type": "retrieval", "function": {"name": "x"}}],
    [{"type": "function", "function": {"name": "bad name!"}}],
    [{"type": "function", "function": {"name": "f", "parameters": "object"}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "x"}}}],
    [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}],
])
def test_validate_tools_rejects(tools):
    with pytest.raises(ToolSpecError) as e:
        validate_tools(tools)
    assert e.value.param and e.value.param.startswith("tools")


def test_validate_tools_accepts():
    assert validate_tools(TOOLS) is TOOLS
    assert validate_tools(None) is None
    assert validate_tools([{"type": "function", "function": {"name": "noargs"}}])
