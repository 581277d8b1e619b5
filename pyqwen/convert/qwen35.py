"""Qwen3.5/3.6 (GGUF arch `qwen35`): hyper-parameters, metadata keys and the HF -> GGUF tensor map.

The output must be byte-compatible with what llama.cpp's converter writes, because the runtime
(and llama.cpp itself) read these files: same tensor names, ne order, metadata keys, and the same
weight transforms (V-head reorder, -exp(A_log), +1 on zero-centred RMSNorm weights, conv squeeze).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..rope_scaling import RopeScaling
from ..rope_scaling import from_hf as rope_scaling_from_hf
from .hf_checkpoint import ConvertError, HFCheckpoint
from .writer import add_metadata

ARCH = "qwen35"
# llama.cpp's loader requires rope.dimension_sections; this is what its converter writes when the
# checkpoint has no mrope_section.
DEFAULT_MROPE_SECTION = (11, 11, 10, 0)


@dataclass(frozen=True)
class Qwen35Params:
    n_layer: int  # main-model layers, without MTP
    n_vocab: int
    n_embd: int
    n_ff: int
    n_ctx: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    rope_dim: int
    rope_sections: tuple[int, int, int, int]
    conv_kernel: int
    n_k_heads: int  # GDN query/key heads
    n_v_heads: int  # GDN value heads
    k_head_dim: int
    v_head_dim: int
    full_attention_interval: int
    tie_embeddings: bool
    n_mtp_config: int  # mtp_num_hidden_layers as the config states it
    rope_scaling: RopeScaling = RopeScaling()

    def is_recurrent(self, il: int) -> bool:
        return (il + 1) % self.full_attention_interval != 0

    @property
    def key_dim(self) -> int:
        return self.n_k_heads * self.k_head_dim

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.v_head_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim


def _need(cfg: dict, key: str):
    if key not in cfg:
        raise ConvertError(f"config.json: missing {key!r}")
    return cfg[key]


def params_from_config(cfg: dict) -> Qwen35Params:
    """Read the text hyper-parameters (HF field names; `cfg` is already merged with text_config).
    A value of the wrong type or out of range is a ConvertError naming the problem."""
    try:
        p = _params_from_config(cfg)
    except ConvertError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError) as e:
        raise ConvertError(f"config.json: invalid hyper-parameter ({type(e).__name__}: {e})") from None
    counts = dict(n_layer=p.n_layer, n_vocab=p.n_vocab, n_embd=p.n_embd, n_ff=p.n_ff, n_head=p.n_head,
                  n_head_kv=p.n_head_kv, head_dim=p.head_dim, conv_kernel=p.conv_kernel, n_k_heads=p.n_k_heads,
                  n_v_heads=p.n_v_heads, k_head_dim=p.k_head_dim, full_attention_interval=p.full_attention_interval)
    bad = {k: v for k, v in counts.items() if v <= 0}
    if bad or p.n_mtp_config < 0 or not (p.rms_eps > 0 and p.rope_theta > 0):
        raise ConvertError(f"config.json: hyper-parameters must be positive, got {bad or 'eps/theta/mtp'}")
    return p


def _params_from_config(cfg: dict) -> Qwen35Params:
    # transformers >= 5 keeps theta and mrope in rope_parameters; older dumps use rope_scaling/rope_theta.
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    try:
        rope_scaling = rope_scaling_from_hf(rope)  # YaRN / linear, written as llama.cpp's keys
    except ValueError as e:
        raise ConvertError(f"config.json: {e}") from None
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise ConvertError("config.json: missing 'rope_theta'")
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25))
    sections = rope.get("mrope_section")
    if sections is None:
        sections = DEFAULT_MROPE_SECTION
    sections = tuple((list(sections) + [0, 0, 0, 0])[:4])

    n_layer = int(_need(cfg, "num_hidden_layers"))
    interval = int(cfg.get("full_attention_interval", 4))
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        # The GGUF has no per-layer type list: the runtime derives it from the interval, so the
        # checkpoint must follow that pattern exactly.
        expected = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layer)]
        if list(layer_types) != expected:
            raise ConvertError(
                f"config.json: layer_types does not follow full_attention_interval={interval}"
            )
    head_dim = int(cfg.get("head_dim") or _need(cfg, "hidden_size") // _need(cfg, "num_attention_heads"))
    p = Qwen35Params(
        n_layer=n_layer,
        n_vocab=int(_need(cfg, "vocab_size")),
        n_embd=int(_need(cfg, "hidden_size")),
        n_ff=int(_need(cfg, "intermediate_size")),
        n_ctx=int(cfg.get("max_position_embeddings", 32768)),
        n_head=int(_need(cfg, "num_attention_heads")),
        n_head_kv=int(_need(cfg, "num_key_value_heads")),
        head_dim=head_dim,
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_dim=int(head_dim * partial),
        rope_sections=sections,
        conv_kernel=int(_need(cfg, "linear_conv_kernel_dim")),
        n_k_heads=int(_need(cfg, "linear_num_key_heads")),
        n_v_heads=int(_need(cfg, "linear_num_value_heads")),
        k_head_dim=int(_need(cfg, "linear_key_head_dim")),
        v_head_dim=int(_need(cfg, "linear_value_head_dim")),
        full_attention_interval=interval,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        n_mtp_config=int(cfg.get("mtp_num_hidden_layers", 0) or 0),
        rope_scaling=rope_scaling,
    )
    if p.n_v_heads % p.n_k_heads != 0:
        raise ConvertError("config.json: linear_num_value_heads must be a multiple of linear_num_key_heads")
    if p.k_head_dim != p.v_head_dim:
        # GGUF has a single ssm.state_size that llama.cpp uses for both head dims.
        raise ConvertError("config.json: linear_key_head_dim != linear_value_head_dim cannot be stored as qwen35")
    if p.n_head % p.n_head_kv != 0:
        raise ConvertError("config.json: num_attention_heads must be a multiple of num_key_value_heads")
    return p


def write_metadata(writer, p: Qwen35Params, n_mtp: int) -> None:
    """The `qwen35.*` keys, with the values and types llama.cpp's converter writes."""
    writer.add_block_count(p.n_layer + n_mtp)
    writer.add_context_length(p.n_ctx)
    writer.add_embedding_length(p.n_embd)
    writer.add_feed_forward_length(p.n_ff)
    writer.add_head_count(p.n_head)
    writer.add_head_count_kv(p.n_head_kv)
    writer.add_rope_dimension_sections(list(p.rope_sections))
    writer.add_rope_freq_base(p.rope_theta)
    for key, value in p.rope_scaling.gguf_keys(ARCH).items():
        add_metadata(writer, key, value)
    writer.add_layer_norm_rms_eps(p.rms_eps)
    writer.add_key_length(p.head_dim)
    writer.add_value_length(p.head_dim)
    writer.add_ssm_conv_kernel(p.conv_kernel)
    # llama.cpp uses state_size for both the K and V head dims.
    writer.add_ssm_state_size(p.k_head_dim)
    writer.add_ssm_group_count(p.n_k_heads)
    writer.add_ssm_time_step_rank(p.n_v_heads)
    writer.add_ssm_inner_size(p.value_dim)
    writer.add_full_attention_interval(p.full_attention_interval)
    writer.add_rope_dimension_count(p.rope_dim)
    if n_mtp:
        writer.add_nextn_predict_layers(n_mtp)


# ---- weight transforms -------------------------------------------------------------------------

def reorder_v_heads(x: np.ndarray, axis: int, n_k: int, n_v: int, head_dim: int) -> np.ndarray:
    """Grouped -> tiled V-head order along `axis`.

    HF groups the value heads of one key head together (head k*r + j, r = n_v/n_k); ggml broadcasts
    key heads by tiling, so the GGUF stores value head g = j*n_k + k at position g.
    """
    r = n_v // n_k
    x = np.moveaxis(x, axis, 0)
    rest = x.shape[1:]
    x = x.reshape(n_k, r, head_dim, *rest).swapaxes(0, 1).reshape(n_v * head_dim, *rest)
    return np.ascontiguousarray(np.moveaxis(x, 0, axis))


def _plus_one(x: np.ndarray) -> np.ndarray:
    # HF's Qwen3_5RMSNorm multiplies by (1 + w); the GGUF stores the effective scale.
    return x + np.float32(1.0)


def _gdn_transforms(p: Qwen35Params) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    nk, nv, dv = p.n_k_heads, p.n_v_heads, p.v_head_dim
    qk = 2 * p.key_dim  # q and k channels come first and are not reordered

    def rows(block):
        return lambda x: reorder_v_heads(x, 0, nk, nv, block)

    def v_rows_after_qk(x):
        return np.concatenate([x[:qk], reorder_v_heads(x[qk:], 0, nk, nv, dv)], axis=0)

    return {
        "linear_attn.in_proj_qkv.weight": ("attn_qkv.weight", v_rows_after_qk),
        "linear_attn.in_proj_z.weight": ("attn_gate.weight", rows(dv)),
        "linear_attn.in_proj_b.weight": ("ssm_beta.weight", rows(1)),
        "linear_attn.in_proj_a.weight": ("ssm_alpha.weight", rows(1)),
        "linear_attn.conv1d.weight": ("ssm_conv1d.weight", lambda x: v_rows_after_qk(x[:, 0, :])),
        "linear_attn.dt_bias": ("ssm_dt.bias", rows(1)),
        # exp in float64, rounded once: matches torch's float32 exp (used by HF and llama.cpp) far
        # more often than numpy's float32 exp does.
        "linear_attn.A_log": ("ssm_a", lambda x: (-np.exp(rows(1)(x).astype(np.float64))).astype(np.float32)),
        "linear_attn.norm.weight": ("ssm_norm.weight", None),  # gated norm: plain w, no +1
        "linear_attn.out_proj.weight": ("ssm_out.weight", lambda x: reorder_v_heads(x, 1, nk, nv, dv)),
    }


def _layer_spec(p: Qwen35Params, recurrent: bool) -> dict[str, tuple[tuple[int, ...], str, Callable | None]]:
    """HF suffix -> (HF shape, GGUF suffix, transform) for one decoder layer."""
    H, I = p.n_embd, p.n_ff
    spec = {
        "input_layernorm.weight": ((H,), "attn_norm.weight", _plus_one),
        "post_attention_layernorm.weight": ((H,), "post_attention_norm.weight", _plus_one),
        "mlp.gate_proj.weight": ((I, H), "ffn_gate.weight", None),
        "mlp.up_proj.weight": ((I, H), "ffn_up.weight", None),
        "mlp.down_proj.weight": ((H, I), "ffn_down.weight", None),
    }
    if recurrent:
        shapes = {
            "linear_attn.in_proj_qkv.weight": (p.conv_dim, H),
            "linear_attn.in_proj_z.weight": (p.value_dim, H),
            "linear_attn.in_proj_b.weight": (p.n_v_heads, H),
            "linear_attn.in_proj_a.weight": (p.n_v_heads, H),
            "linear_attn.conv1d.weight": (p.conv_dim, 1, p.conv_kernel),
            "linear_attn.dt_bias": (p.n_v_heads,),
            "linear_attn.A_log": (p.n_v_heads,),
            "linear_attn.norm.weight": (p.v_head_dim,),
            "linear_attn.out_proj.weight": (H, p.value_dim),
        }
        for suffix, (gname, fn) in _gdn_transforms(p).items():
            spec[suffix] = (shapes[suffix], gname, fn)
    else:
        q_out, kv_out = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
        spec.update({
            # q_proj rows stay per-head [query | gate] interleaved; the runtime splits them.
            "self_attn.q_proj.weight": ((2 * q_out, H), "attn_q.weight", None),
            "self_attn.k_proj.weight": ((kv_out, H), "attn_k.weight", None),
            "self_attn.v_proj.weight": ((kv_out, H), "attn_v.weight", None),
            "self_attn.o_proj.weight": ((H, q_out), "attn_output.weight", None),
            "self_attn.q_norm.weight": ((p.head_dim,), "attn_q_norm.weight", _plus_one),
            "self_attn.k_norm.weight": ((p.head_dim,), "attn_k_norm.weight", _plus_one),
        })
    return spec


# ---- planning ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where it comes from and how to turn the HF array into the GGUF array."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # numpy order of the *output* array (GGUF ne reversed)
    transform: Callable[[np.ndarray], np.ndarray] | None

    def load(self, ckpt: HFCheckpoint) -> np.ndarray:
        x = ckpt.load(self.hf_name)
        if self.transform is not None:
            x = self.transform(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def streamable(self) -> bool:
        """Untransformed 2-D tensors can be read and written a block of rows at a time."""
        return self.transform is None and len(self.shape) == 2

    def load_rows(self, ckpt: HFCheckpoint, r0: int, r1: int) -> np.ndarray:
        return np.ascontiguousarray(ckpt.load_rows(self.hf_name, r0, r1), dtype=np.float32)


def _out_shape(hf_shape: tuple[int, ...], gguf_name: str) -> tuple[int, ...]:
    if gguf_name.endswith("ssm_conv1d.weight"):
        return (hf_shape[0], hf_shape[2])
    return hf_shape


_MTP_LAYER = re.compile(r"^mtp\.layers\.(\d+)\.")
_MTP_GLOBALS = {
    # HF name -> GGUF suffix under blk.{n_layer}
    "mtp.fc.weight": "nextn.eh_proj.weight",
    "mtp.pre_fc_norm_embedding.weight": "nextn.enorm.weight",
    "mtp.pre_fc_norm_hidden.weight": "nextn.hnorm.weight",
    "mtp.norm.weight": "nextn.shared_head_norm.weight",
}


def _skipped(name: str) -> bool:
    # Vision tower and projector go to a separate mmproj file; rotary buffers are recomputed.
    return "visual." in name or name.endswith("rotary_emb.inv_freq")


def count_mtp_layers(ckpt: HFCheckpoint) -> int:
    idx = [int(m.group(1)) for n in ckpt.tensors if (m := _MTP_LAYER.match(n))]
    return max(idx) + 1 if idx else 0


def expected_tensors(p: Qwen35Params, *, lm_head: bool, n_mtp: int = 0) -> dict[str, tuple[tuple[int, ...], str, Callable | None]]:
    """HF name -> (HF shape, GGUF name, transform) for every tensor a checkpoint of `p` holds, in
    output order (non-layer tensors first, then layers in order, as llama.cpp's quantizer sorts)."""
    H, V = p.n_embd, p.n_vocab
    expected: dict[str, tuple[tuple[int, ...], str, Callable | None]] = {
        "model.embed_tokens.weight": ((V, H), "token_embd.weight", None),
        "model.norm.weight": ((H,), "output_norm.weight", _plus_one),
    }
    if lm_head:
        expected["lm_head.weight"] = ((V, H), "output.weight", None)
    for il in range(p.n_layer):
        for suffix, (shape, gsuffix, fn) in _layer_spec(p, p.is_recurrent(il)).items():
            expected[f"model.layers.{il}.{suffix}"] = (shape, f"blk.{il}.{gsuffix}", fn)
    if n_mtp:
        # MTP blocks follow the main layers; the shared fc/norms sit on the first of them.
        base = p.n_layer
        for hf, gsuffix in _MTP_GLOBALS.items():
            if hf == "mtp.fc.weight":
                expected[hf] = ((H, 2 * H), f"blk.{base}.{gsuffix}", None)
            else:
                expected[hf] = ((H,), f"blk.{base}.{gsuffix}", _plus_one)
        for j in range(n_mtp):
            for suffix, (shape, gsuffix, fn) in _layer_spec(p, recurrent=False).items():
                expected[f"mtp.layers.{j}.{suffix}"] = (shape, f"blk.{base + j}.{gsuffix}", fn)
    return expected


def plan_tensors(ckpt: HFCheckpoint, p: Qwen35Params, keep_mtp: bool = True) -> tuple[list[TensorJob], int]:
    """Every output tensor in file order, plus the number of MTP layers written.

    Checks the checkpoint against the config first: a missing, unexpected or mis-shaped tensor raises
    ConvertError naming it, before any output is created.
    """
    # MTP is counted from the tensors present: a transformers save_pretrained drops `mtp.*` while
    # the config still says mtp_num_hidden_layers=1, and such a file must not claim an MTP block.
    n_mtp = count_mtp_layers(ckpt) if keep_mtp else 0
    if n_mtp and p.n_mtp_config and n_mtp != p.n_mtp_config:
        raise ConvertError(f"checkpoint has {n_mtp} MTP layers but config says mtp_num_hidden_layers={p.n_mtp_config}")
    lm_head = "lm_head.weight" in ckpt.tensors or not p.tie_embeddings
    expected = expected_tensors(p, lm_head=lm_head, n_mtp=n_mtp)

    for name, ref in ckpt.tensors.items():
        if name in expected or _skipped(name) or (not keep_mtp and name.startswith("mtp.")):
            continue
        raise ConvertError(f"unexpected tensor {name!r} {list(ref.shape)}")

    jobs = []
    for hf_name, (shape, gguf_name, fn) in expected.items():
        ref = ckpt.tensors.get(hf_name)
        if ref is None:
            raise ConvertError(f"missing tensor {hf_name!r} (for {gguf_name})")
        if ref.shape != shape:
            raise ConvertError(f"tensor {hf_name!r} has shape {list(ref.shape)}, config implies {list(shape)}")
        jobs.append(TensorJob(gguf_name, hf_name, _out_shape(shape, gguf_name), fn))
    return jobs, n_mtp
