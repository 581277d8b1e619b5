"""Shared by the agent-API tests (Anthropic Messages, OpenAI Responses, ollama): a live server on the demo
model, the OpenAI endpoint's answer to the same question as the reference, and independent counts of
what a follow-up turn must prefill (from the chat template and the tokenizer, not from the server).

Replies that the demo model never writes by itself (it always reasons to max_tokens when thinking is on,
and never calls tools) are queued with the TEST-ONLY Script hook (pyqwen.server.testing): the sampler
emits that text's tokens while prompt rendering, prefill, sessions, parsing and streaming run for real.
Every other test uses the model's own greedy output."""

from __future__ import annotations

from pq_testutil import scripted_server

API_KEY = "agent-key-123"

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city"]}
# A reply that reasons, says something, then calls the tool (the qwen3_coder format the template teaches).
SCRIPTED_CALL = ("The user wants weather.\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n"
                 "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")
SCRIPTED_ANSWER = "Done checking.\n</think>\n\nSunny in Paris."


def live_server():
    return scripted_server(api_key=API_KEY, n_ctx=1024)


def openai_reference(server, messages, *, max_tokens, thinking, tools=None, stop=None, session=None) -> dict:
    """The OpenAI chat endpoint's greedy answer to the same conversation (the reply stream's own split)."""
    import requests

    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "chat_template_kwargs": {"enable_thinking": thinking}}
    if tools:
        body["tools"] = tools
    if stop:
        body["stop"] = stop
    h = {"Authorization": f"Bearer {API_KEY}"}
    if session:
        h["X-Session-Id"] = session
    r = requests.post(server["url"] + "/v1/chat/completions", json=body, headers=h, timeout=120)
    r.raise_for_status()
    return r.json()


def prompt_ids(model, messages, *, thinking: bool, generation: bool = True, tools=None) -> list[int]:
    text = model.chat_template.render(messages, tools=tools, add_generation_prompt=generation,
                                      enable_thinking=thinking)
    return model.tokenize(text)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def expected_reuse(model, turn1: list[dict], reply: dict, turn2: list[dict], *, thinking: bool) -> tuple[int, int]:
    """(prompt tokens of turn 2, how many of them a session cache can reuse): the tokens turn 2 shares
    with turn 1's conversation + reply as the template renders them. (The template drops an earlier
    turn's empty think block, so a reply after one is re-rendered differently and only the prefix up to
    it is shared; a reply kept verbatim, as in a tool round trip, is shared whole.)"""
    history = prompt_ids(model, turn1 + [reply], thinking=thinking, generation=False)
    p1 = prompt_ids(model, turn1, thinking=thinking)
    p2 = prompt_ids(model, turn2, thinking=thinking)
    shared = common_prefix(p2, history)
    assert shared >= common_prefix(p2, p1) > 0
    return len(p2), shared
