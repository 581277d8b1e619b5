"""The Qwen3.5/3.6 multi-token-prediction (MTP) head in PyTorch, as vLLM defines it.

transformers 5.23 has no MTP module for qwen3_5 (it drops `mtp.*` on load), so this is the independent
reference for pyqwen's C++ `eval_mtp` and the head the demo model is trained with
(tools/train_demo_model.py). Written from the published definition (vLLM's qwen3_5_mtp /
qwen3_next_mtp, summarised in shared/reference/hf-qwen35.md section 8), not from pyqwen's C++:

    u_t   = fc(cat[RMSNorm_e(embed(x_{t+1})), RMSNorm_h(h_t)])      embedding first, hidden second
    o_t   = norm(DecoderLayer_full_attention(u_t))                  own causal attention over u_0..u_t,
                                                                    RoPE at the main position t
    logits for token t+2 = lm_head(o_t)                             embed and lm_head shared

h_t is the main model's final hidden state AFTER its final norm. Every RMSNorm is Qwen3.5's zero-centred
one (scale 1 + w), taken from transformers (`Qwen3_5RMSNorm`), and the decoder layer is transformers'
own `Qwen3_5DecoderLayer` of type full_attention (gated attention, q/k norms, partial RoPE, SwiGLU MLP).
Parameter names are the checkpoint's: `mtp.pre_fc_norm_embedding.weight`, `mtp.pre_fc_norm_hidden.weight`,
`mtp.fc.weight` [H, 2H], `mtp.layers.0.*`, `mtp.norm.weight`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    Qwen3_5DecoderLayer,
    Qwen3_5RMSNorm,
    Qwen3_5TextRotaryEmbedding,
)

MTP_PREFIX = "mtp."


def _mtp_layer_config(config: Qwen3_5TextConfig) -> Qwen3_5TextConfig:
    """The main config with a single full-attention layer: the shape of mtp.layers.0."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = 1
    cfg.layer_types = ["full_attention"]
    # sdpa with an explicit causal mask (below); no flash-attn on CPU.
    cfg._attn_implementation = "sdpa"
    return cfg


class Qwen35MTP(nn.Module):
    """`mtp.*` of a Qwen3.5/3.6 checkpoint with mtp_num_hidden_layers == 1 (this module's attribute
    names give exactly the checkpoint's parameter names below the `mtp.` prefix)."""

    def __init__(self, config: Qwen3_5TextConfig):
        super().__init__()
        n = int(getattr(config, "mtp_num_hidden_layers", 1) or 1)
        if n != 1:
            raise ValueError(f"only mtp_num_hidden_layers == 1 is defined here (Qwen3.5/3.6), got {n}")
        H, eps = config.hidden_size, config.rms_norm_eps
        self.pre_fc_norm_embedding = Qwen3_5RMSNorm(H, eps=eps)
        self.pre_fc_norm_hidden = Qwen3_5RMSNorm(H, eps=eps)
        self.fc = nn.Linear(2 * H, H, bias=False)
        layer_cfg = _mtp_layer_config(config)
        self.layers = nn.ModuleList([Qwen3_5DecoderLayer(layer_cfg, 0)])
        self.norm = Qwen3_5RMSNorm(H, eps=eps)
        self.rotary_emb = Qwen3_5TextRotaryEmbedding(config=layer_cfg)

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """next_embeds = embed(x_{t+1}) and hidden = h_t (post final norm), both [B, T, H], for the
        main positions t = positions [T]. Returns the post-`mtp.norm` hidden [B, T, H] (lm_head of it
        gives the logits for token t+2; chained drafting feeds it back as the next h)."""
        u = self.fc(torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], dim=-1))
        B, T, _ = u.shape
        pos = positions.view(1, T).expand(B, T)
        cos_sin = self.rotary_emb(u, pos)  # text positions on all three mrope sections
        causal = torch.ones(T, T, dtype=torch.bool, device=u.device).tril().view(1, 1, T, T)
        out = self.layers[0](u, position_embeddings=cos_sin, attention_mask=causal)
        return self.norm(out)


def mtp_state_dict(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `mtp.*` entries of a checkpoint state dict, keyed for `Qwen35MTP.load_state_dict`."""
    return {k[len(MTP_PREFIX):]: v for k, v in full.items() if k.startswith(MTP_PREFIX)}


def load_checkpoint(hf_dir: str | Path) -> tuple[Qwen3_5ForCausalLM, Qwen35MTP]:
    """transformers' model and the MTP head of an HF checkpoint directory, both float32, eval mode."""
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    cfg_json = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if not int(cfg_json.get("mtp_num_hidden_layers", 0) or 0):
        raise ValueError(f"{hf_dir}/config.json has no MTP head (mtp_num_hidden_layers is 0 or missing)")
    model = Qwen3_5ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        tensors.update({k: v for k, v in load_file(str(f)).items() if k.startswith(MTP_PREFIX)})
    mtp = Qwen35MTP(model.config)
    missing, unexpected = mtp.load_state_dict({k: v.float() for k, v in mtp_state_dict(tensors).items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: MTP tensors do not match the head: missing {missing}, unexpected {unexpected}")
    return model, mtp.float().eval()


@torch.no_grad()
def mtp_logits(model: Qwen3_5ForCausalLM, mtp: Qwen35MTP, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(main logits [n, V], MTP draft logits [n-1, V]) for one sequence from a fresh state."""
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64)).view(1, -1)
    if x.shape[1] < 2:
        raise ValueError("MTP logits need at least 2 tokens (row t drafts token t+2 from ids[0..t+1])")
    out = model.model(input_ids=x, use_cache=False)
    h = out.last_hidden_state  # after model.norm
    main = model.lm_head(h)[0]
    n = x.shape[1]
    o = mtp(model.model.embed_tokens(x[:, 1:]), h[:, :-1], torch.arange(n - 1))
    return main, model.lm_head(o)[0]


def mtp_reference_logits(hf_dir: str | Path, ids) -> np.ndarray:
    """float32 [len(ids) - 1, vocab]: row t = the MTP draft logits for token t+2 given ids[0..t+1]."""
    model, mtp = load_checkpoint(hf_dir)
    return mtp_logits(model, mtp, ids)[1].float().numpy()


@torch.no_grad()
def chained_draft(model: Qwen3_5ForCausalLM, mtp: Qwen35MTP, ids, k: int) -> list[int]:
    """Greedy chained drafting after the prompt `ids` (n tokens): the main model's next token x_n, then
    k MTP drafts x_{n+1}..x_{n+k}. Step j > 1 feeds the MTP its own previous post-norm output as h and its
    own argmax as the next token (vLLM / llama.cpp chaining), at the following position. Returns
    [x_n, drafts...]. The MTP's attention is recomputed over all its inputs each step (same as a KV cache)."""
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64)).view(1, -1)
    n = x.shape[1]
    h = model.model(input_ids=x, use_cache=False).last_hidden_state
    nxt = int(model.lm_head(h[0, -1]).argmax())
    tokens = [nxt]
    emb = model.model.embed_tokens
    e_in = emb(torch.cat([x[:, 1:], torch.tensor([[nxt]])], dim=1))  # x_1..x_n
    h_in = h  # h_0..h_{n-1}
    for j in range(k):
        o = mtp(e_in, h_in, torch.arange(e_in.shape[1]))
        d = int(model.lm_head(o[0, -1]).argmax())
        tokens.append(d)
        e_in = torch.cat([e_in, emb(torch.tensor([[d]]))], dim=1)
        h_in = torch.cat([h_in, o[:, -1:]], dim=1)
    return tokens
