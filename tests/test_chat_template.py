"""ChatTemplate renders the official Qwen3.6 template exactly like transformers' apply_chat_template;
split_reasoning / ReasoningSplitter undo the template's think block."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from pyqwen.chat import ChatTemplate, ChatTemplateError, ReasoningSplitter, split_reasoning

DEMO = Path(__file__).resolve().parents[1] / "pyqwen" / "data" / "demo_tokenizer"
# The demo tokenizer carries the official Qwen3.6 template verbatim (checked in test_tokenizer.py).
TEMPLATE = json.loads((DEMO / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city. Uses <b>HTML</b> & \"quotes\" — 天气",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {"name": "search", "description": "Web search",
                 "parameters": {"type": "object", "properties": {"q": {"type": "string"},
                                                                 "top_k": {"type": "integer"}}}},
}

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    "system_whitespace": [{"role": "system", "content": "  \n padded system \n"},
                          {"role": "user", "content": "  padded user\n\n"}],
    "multi_turn": [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "reasoning_content": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "reasoning_content": "\nthink about Q1\n", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "reasoning_content": "think about Q2", "content": "A2"},
    ],
    "inline_think_in_content": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\ninline reasoning\n</think>\n\nvisible answer"},
        {"role": "user", "content": "Q2"},
    ],
    "reasoning_alias": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "reasoning": "via the 'reasoning' key", "content": "A"},
        {"role": "user", "content": "again"},
    ],
    "tools_flow": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris and news?"},
        {"role": "assistant", "reasoning_content": "Need two tools.", "content": "Let me check.",
         "tool_calls": [
             {"id": "c1", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
             {"id": "c2", "type": "function",
              "function": {"name": "search", "arguments": {"q": "news \"today\"", "top_k": 3,
                                                          "filters": {"lang": ["en", "fr"], "safe": True}}}},
         ]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "c2", "content": "Headlines: ..."},
        {"role": "assistant", "content": "It is 21°C. Headlines: ..."},
        {"role": "user", "content": "Thanks"},
    ],
    "tool_call_no_content_last": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "cold"},
    ],
    "tool_call_flat": [  # tool_call without the "function" wrapper, arguments with non-string values
        {"role": "user", "content": "Search"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"name": "search", "arguments": {"q": "x", "top_k": 5, "extra": None}}]},
        {"role": "tool", "content": "results"},
        {"role": "user", "content": "ok"},
    ],
    "multimodal_list_content": [
        {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image", "image": "x.png"},
                                     {"type": "text", "text": " please"}]},
    ],
    "unicode": [{"role": "user", "content": "你好 😀 <b>&amp;</b> \"q\" \\ end"}],
}

OPTIONS = [
    {},
    {"enable_thinking": False},
    {"enable_thinking": True},
    {"preserve_thinking": True},
    {"preserve_thinking": False, "enable_thinking": False},
]


@pytest.fixture(scope="module")
def ct():
    return ChatTemplate(TEMPLATE)


def _hf_render(hf, messages, tools, add_generation_prompt, **kwargs):
    return hf.apply_chat_template(copy.deepcopy(messages), tools=tools, tokenize=False,
                                  add_generation_prompt=add_generation_prompt, **kwargs)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("gen", [True, False])
def test_matches_transformers(ct, hf, name, opts, gen):
    messages = CONVERSATIONS[name]
    tools = [WEATHER_TOOL, SEARCH_TOOL] if name.startswith("tool") else None
    before = copy.deepcopy(messages)
    ours = ct.render(messages, add_generation_prompt=gen, tools=tools, **opts)
    assert ours == _hf_render(hf, messages, tools, gen, **opts)
    assert messages == before  # rendering never edits the caller's messages


def test_tools_without_system(ct, hf):
    messages = [{"role": "user", "content": "hi"}]
    ours = ct.render(messages, tools=[WEATHER_TOOL])
    assert ours == _hf_render(hf, messages, [WEATHER_TOOL], True)
    assert "<tools>\n{\"type\": \"function\"" in ours
    assert "<b>HTML</b> & \\\"quotes\\\" — 天气" in ours  # tojson: no HTML escaping, no \\u escapes


def test_generation_prompt_shapes(ct):
    msgs = [{"role": "user", "content": "hi"}]
    assert ct.render(msgs).endswith("<|im_start|>assistant\n<think>\n")
    assert ct.render(msgs, enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ct.render(msgs, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_template_errors(ct):
    with pytest.raises(ChatTemplateError, match="No user query"):
        ct.render([{"role": "system", "content": "only system"}])
    with pytest.raises(ChatTemplateError, match="No messages"):
        ct.render([])
    with pytest.raises(ChatTemplateError, match="System message must be at the beginning"):
        ct.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(ChatTemplateError, match="Unexpected message role"):
        ct.render([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% if %}")  # syntax error at construction
    with pytest.raises(ChatTemplateError):
        ct.render([{"role": "user", "content": "a"}], tools=[lambda x: x])
    assert issubclass(ChatTemplateError, ValueError)


def test_sandbox_and_globals():
    t = ChatTemplate("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 1 %}{% break %}"
                     "{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}|{{ dict(a=1) | tojson }}|"
                     "{{ strftime_now('%Y') | length }}|{{ bos_token }}|{% generation %}g{% endgeneration %}",
                     special_tokens={"bos_token": "<s>"})
    assert t.render([{"role": "user"}, {"role": "user"}]) == '1|{"a": 1}|4|<s>|g'
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}").render(
            [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([])
    t = ChatTemplate("{{ x | tojson(indent=2) }}|{{ x | tojson(separators=(',', ':')) }}")
    assert t.render([], x={"k": [1, "é"]}) == json.dumps({"k": [1, "é"]}, indent=2, ensure_ascii=False) + \
        '|{"k":[1,"é"]}'


# -- reasoning split ---------------------------------------------------------------------------------

SPLIT_CASES = [
    # (generated text, started_in_think, reasoning, content)
    ("I should greet.\n</think>\n\nHello!", True, "I should greet.", "Hello!"),
    ("\nplan\n\n</think>\n\nanswer\n", True, "plan", "answer\n"),
    ("</think>\n\nno thoughts", True, "", "no thoughts"),
    ("still thinking when cut off\n", True, "still thinking when cut off", ""),
    ("a</think>b</think>c", True, "a", "b</think>c"),
    ("plain answer", False, None, "plain answer"),
    ("\n<think>\nself-opened\n</think>\n\nok", False, "self-opened", "ok"),
    ("<thinking> is not the tag", False, None, "<thinking> is not the tag"),
    ("", True, "", ""),
    ("", False, None, ""),
]


@pytest.mark.parametrize("text,started,reasoning,content", SPLIT_CASES)
def test_split_reasoning(text, started, reasoning, content):
    assert split_reasoning(text, started) == (reasoning, content)


def _stream(text: str, started: bool, cuts: list[int]) -> tuple[str | None, str, list]:
    sp = ReasoningSplitter(started_in_think=started)
    events = []
    prev = 0
    for c in cuts + [len(text)]:
        events += sp.push(text[prev:c])
        prev = c
    events += sp.flush()
    reasoning = "".join(t for k, t in events if k == "reasoning")
    content = "".join(t for k, t in events if k == "content")
    return reasoning, content, events


@pytest.mark.parametrize("text,started,reasoning,content", SPLIT_CASES)
def test_splitter_matches_split_reasoning_any_chunking(text, started, reasoning, content):
    rng = random.Random(len(text))
    chunkings = [list(range(1, len(text)))]  # one character at a time
    for _ in range(30):
        n_cuts = min(rng.randint(0, 5), max(len(text) - 1, 0))
        chunkings.append(sorted(rng.sample(range(1, len(text)), n_cuts)) if n_cuts else [])
    for cuts in chunkings:
        r, c, events = _stream(text, started, cuts)
        assert (r, c) == (reasoning or "", content)
        assert all(t for _, t in events)  # never empty pieces
        assert all("</think>" not in t for k, t in events if k == "reasoning")


def test_splitter_tag_split_across_pushes():
    sp = ReasoningSplitter()
    assert sp.push("Let me think.</th") == [("reasoning", "Let me think.")]
    assert sp.push("in") == []
    assert sp.push("k>\n\nThe answer") == [("content", "The answer")]
    assert sp.push(" is 42.") == [("content", " is 42.")]
    assert sp.flush() == []


def test_splitter_partial_tag_that_is_not_a_tag():
    sp = ReasoningSplitter()
    assert sp.push("a </thin") == [("reasoning", "a ")]
    assert sp.push("g> b") == [("reasoning", "</thing> b")]
    assert sp.flush() == []
    sp = ReasoningSplitter()
    assert sp.push("cut off </thi") == [("reasoning", "cut off ")]
    assert sp.flush() == [("reasoning", "</thi")]


def test_splitter_not_started():
    sp = ReasoningSplitter(started_in_think=False)
    assert sp.push("\n<thi") == []
    assert sp.push("nk>\nx</think>y") == [("reasoning", "x"), ("content", "y")]
    sp = ReasoningSplitter(started_in_think=False)
    assert sp.push("<b>") == [("content", "<b>")]


def test_round_trip_through_template(ct):
    # What split_reasoning extracts re-renders to exactly the tokens the model generated.
    generated = "I think.\n</think>\n\nHello there."
    prompt = ct.render([{"role": "user", "content": "hi"}])
    reasoning, content = split_reasoning(generated, True)
    history = ct.render([{"role": "user", "content": "hi"},
                         {"role": "assistant", "reasoning_content": reasoning, "content": content}],
                        add_generation_prompt=False)
    assert history == prompt + generated + "<|im_end|>\n"
