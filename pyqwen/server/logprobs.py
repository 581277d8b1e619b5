"""Token log-probabilities in OpenAI's two shapes (pyqwen.generation.TokenLogprob records in).

Chat completions: `choices[i].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}],
"refusal": None}`. Legacy completions: `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
"text_offset"}`. A token's text is its own piece (bytes of a partial UTF-8 character show as U+FFFD;
`bytes` has the exact bytes, as OpenAI documents for that case).
"""

from __future__ import annotations


def chat_logprobs(tok, records) -> dict:
    def entry(token_id: int, lp: float) -> dict:
        b = tok.id_to_bytes(token_id)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    content = []
    for r in records:
        e = entry(r.token, r.logprob)
        e["top_logprobs"] = [entry(i, lp) for i, lp in r.top]
        content.append(e)
    return {"content": content, "refusal": None}


def completion_logprobs(tok, records, text_offset: int = 0) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    pos = text_offset
    for r in records:
        text = tok.id_to_piece(r.token)
        tokens.append(text)
        lps.append(r.logprob)
        top: dict[str, float] = {}
        for i, lp in r.top:
            top.setdefault(tok.id_to_piece(i), lp)     # two ids may print alike; keep the likelier
        tops.append(top)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
