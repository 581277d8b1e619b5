"""logprobs / top_logprobs (issue 14, item 2), chat and completions, streaming and not, read through the
real `openai` client and checked against an independent reference: log_softmax (torch) of the logits of a
fresh evaluation of prompt + generated tokens (`Model.eval`), greedy, step by step."""

from __future__ import annotations

import numpy as np
import pytest

import pyqwen

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

N_TOKENS = 6
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def server():
    from pyqwen.server.app import create_app
    from pyqwen.server.engine import Engine
    from pyqwen.server.testing import serve_in_thread

    m = pyqwen.Model.load(kv_type="f32", threads=1, n_ctx=512)
    engine = Engine(m, cache_ram_mib=128)
    with serve_in_thread(create_app(engine)) as url:
        yield m, openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    engine.shutdown()


def reference(model, prompt_ids: list[int], n: int, k: int) -> list[dict]:
    """Greedy continuation with each step's chosen id, its logprob and the k likeliest, from fresh evals."""
    ids, out = list(prompt_ids), []
    for _ in range(n):
        lp = torch.log_softmax(torch.from_numpy(model.eval(ids)[-1].astype(np.float64)), dim=-1).numpy()
        tok = int(np.argmax(lp))
        if tok in model.tokenizer.eog_ids:
            break
        top = np.argsort(-lp, kind="stable")[:k]
        out.append({"id": tok, "bytes": model.tokenizer.id_to_bytes(tok), "logprob": lp[tok],
                    "top": [(model.tokenizer.id_to_bytes(int(i)), lp[i]) for i in top]})
        ids.append(tok)
    return out


def check_chat_entries(entries, ref, k):
    assert len(entries) == len(ref) > 0
    for e, r in zip(entries, ref):
        assert bytes(e.bytes) == r["bytes"] and e.token == r["bytes"].decode("utf-8", errors="replace")
        assert abs(e.logprob - r["logprob"]) < 2e-4
        assert len(e.top_logprobs) == k
        for t, (b, lp) in zip(e.top_logprobs, r["top"]):
            assert abs(t.logprob - lp) < 2e-4
            assert bytes(t.bytes) == b or abs(t.logprob - lp) < 1e-6   # ties may order differently
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-9)   # greedy: the chosen is the top


def test_chat_logprobs_whole_and_streamed(server):
    model, client = server
    k = 3
    prompt = model.tokenize(model.chat_template.render(MESSAGES, add_generation_prompt=True))
    ref = reference(model, prompt, N_TOKENS, k)
    r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=N_TOKENS, temperature=0,
                                       logprobs=True, top_logprobs=k)
    assert r.usage.completion_tokens == len(ref)
    check_chat_entries(r.choices[0].logprobs.content, ref, k)

    streamed = []
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=N_TOKENS, temperature=0,
                                                logprobs=True, top_logprobs=k, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content
    check_chat_entries(streamed, ref, k)

    plain = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_whole_and_streamed(server):
    model, client = server
    k = 2
    prompt = "The capital of France is"
    ref = reference(model, model.tokenize(prompt), N_TOKENS, k)
    r = client.completions.create(model="m", prompt=prompt, max_tokens=N_TOKENS, temperature=0, logprobs=k)
    lp = r.choices[0].logprobs

    def check(tokens, token_logprobs, top_logprobs):
        assert len(tokens) == len(token_logprobs) == len(top_logprobs) == len(ref)
        for t, l, top, rf in zip(tokens, token_logprobs, top_logprobs, ref):
            assert t == rf["bytes"].decode("utf-8", errors="replace") and abs(l - rf["logprob"]) < 2e-4
            assert len(top) <= k and max(top.values()) == pytest.approx(l, abs=1e-9)

    check(lp.tokens, lp.token_logprobs, lp.top_logprobs)
    assert lp.text_offset[0] == 0 and all(b >= a for a, b in zip(lp.text_offset, lp.text_offset[1:]))

    tokens, lps, tops = [], [], []
    for chunk in client.completions.create(model="m", prompt=prompt, max_tokens=N_TOKENS, temperature=0, logprobs=k,
                                           stream=True):
        c = chunk.choices[0] if chunk.choices else None
        if c is not None and c.logprobs is not None:
            tokens += c.logprobs.tokens
            lps += c.logprobs.token_logprobs
            tops += c.logprobs.top_logprobs
    check(tokens, lps, tops)


def test_bad_logprobs_requests_are_400(server):
    _, client = server
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="m", prompt="x", max_tokens=1, logprobs=50)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1, n=2)
