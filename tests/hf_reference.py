"""The transformers side of the made-at-test-time fixtures (tests/real_shape.py, tests/real_vocab_model.py):
a Qwen3.5 text model with our random weights (pyqwen.demo.random_weight, rounded through BF16 as the
checkpoint stores them), its float32 logits of a prompt and its greedy continuation, saved as an HF
checkpoint for our converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def random_model(config: dict, vocab: int, seed: int):
    """A Qwen3_5ForCausalLM (eager attention, eval mode) with every parameter drawn by random_weight."""
    import torch
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from pyqwen.demo import random_weight

    cfg = Qwen3_5TextConfig(vocab_size=vocab, **config)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3_5ForCausalLM(cfg).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.copy_(torch.from_numpy(random_weight(rng, name, tuple(p.shape))).to(torch.bfloat16).float())
    return model


def logits_and_greedy(model, ids: list[int], gen_len: int) -> tuple[np.ndarray, list[int]]:
    """float32 logits of ids [len, vocab] (one prefill, one thread: the same sums every run) and the
    gen_len greedy tokens after them (decoded one at a time through the cache)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            o = model(input_ids=torch.tensor([ids]), use_cache=True)
            logits = o.logits[0].float().numpy().copy()
            cache, nxt, greedy = o.past_key_values, int(o.logits[0, -1].argmax()), []
            for _ in range(gen_len):
                greedy.append(nxt)
                o = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
                cache, nxt = o.past_key_values, int(o.logits[0, -1].argmax())
    finally:
        torch.set_num_threads(threads)
    return logits, greedy


def save_bf16(model, hf_dir: Path) -> None:
    import torch

    model.to(torch.bfloat16).save_pretrained(hf_dir, safe_serialization=True)
