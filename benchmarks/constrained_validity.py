"""Schema-valid output under response_format json_schema, N generations per model (issue 14, item 1).

    python benchmarks/constrained_validity.py [--n 100] [--models trained,random] [--temperature 1.0]

For the trained demo model and the random-weight one (pyqwen.demo), N chat replies (thinking off, one
seed each, sampled at --temperature) under a strict json_schema; each reply is checked with json.loads and
the `jsonschema` package. The schema bounds every string, number and array, so a reply can finish inside
the token budget whatever the weights are: the mask makes it valid, the bounds make it end. Reports the
valid count, finish reasons, tokens per reply, decode speed, and the grammar mask's cost per token (worker
time, and the part the forward pass did not hide).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "rating": {"type": "number", "minimum": 0, "maximum": 10},
        "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "horror", "sci-fi"]}, "maxItems": 3},
        "director": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                       "born": {"type": "integer", "minimum": 1850, "maximum": 2010}},
                     "required": ["name"], "additionalProperties": False},
        "seen": {"type": "boolean"},
    },
    "required": ["title", "year", "genres", "director", "seen"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a film as JSON: title, year, rating, genres, director, seen."}]


def run(label: str, path, n: int, temperature: float, max_tokens: int, threads: int) -> None:
    import jsonschema

    import pyqwen

    model = pyqwen.Model.load(path, n_ctx=1024, threads=threads)
    fmt = {"type": "json_schema", "json_schema": {"name": "film", "schema": SCHEMA, "strict": True}}
    model.chat(MESSAGES, enable_thinking=False, max_tokens=2, response_format=fmt)   # warm the token table
    valid, finish, tokens, tps, mask_ms, wait_ms = 0, {}, [], [], 0.0, 0.0
    steps, first_bad = 0, None
    t0 = time.perf_counter()
    for seed in range(n):
        reply = model.chat(MESSAGES, enable_thinking=False, max_tokens=max_tokens, response_format=fmt,
                           sampling={"temperature": temperature, "seed": seed})
        for _ in reply:
            pass
        st = reply.stats
        finish[reply.finish_reason] = finish.get(reply.finish_reason, 0) + 1
        tokens.append(st.generated_tokens)
        tps.append(st.decode_tokens_per_second)
        mask_ms += 1e3 * st.grammar_mask_seconds
        wait_ms += 1e3 * st.grammar_wait_seconds
        steps += st.grammar_steps
        try:
            jsonschema.validate(json.loads(reply.content), SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError) as e:
            first_bad = first_bad or (seed, reply.content[:200], str(e).splitlines()[0])
    wall = time.perf_counter() - t0
    print(f"{label}: {valid}/{n} schema-valid (json.loads + jsonschema); finish {finish}; "
          f"tokens per reply median {statistics.median(tokens):.0f} (max {max(tokens)}); "
          f"decode {statistics.median(tps):.0f} tok/s median; grammar mask {mask_ms / steps:.3f} ms/token, "
          f"{wait_ms / steps:.3f} ms/token not hidden by the forward; {wall:.1f} s in all")
    if first_bad:
        print(f"  first invalid: seed {first_bad[0]}: {first_bad[1]!r}: {first_bad[2]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--models", default="trained,random")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from pyqwen.demo import random_demo_model_path

    for label in args.models.split(","):
        path = {"trained": None, "random": random_demo_model_path()}[label]
        run(f"{label} demo model", path, args.n, args.temperature, args.max_tokens, args.threads)


if __name__ == "__main__":
    main()
