"""Open and validate a qwen35 GGUF file: metadata, hyper-parameters, tensor table.

Parsing is done by the `gguf` package (memory-mapped); everything is checked here before the C++ core
sees a single pointer, so a truncated or hostile file raises ModelFormatError naming the problem
instead of crashing the process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from .errors import ModelFormatError
from .rope_scaling import RopeScaling
from .rope_scaling import from_gguf as rope_scaling_from_gguf

ARCH = "qwen35"

# Types of the tensors the spec stores as floats (widened to F32 for the kernels).
FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


def _weight_types() -> set[int]:
    from . import _spec  # the spec: the weight types every backend reads

    return set(_spec.weight_types())


class _CheckedReader(GGUFReader):
    """GGUFReader that checks each tensor's type and byte range before mapping it."""

    def _build_tensors(self, start_offs: int, fields: list) -> None:  # noqa: D401 (gguf API)
        file_size = len(self.data)
        for f in fields:
            _name_len, name_data, _n_dims, dims, raw_dtype, offset_tensor = f.parts
            name = bytes(name_data).decode("utf-8", errors="replace")
            try:
                qtype = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise ModelFormatError(f"tensor {name!r}: unknown ggml type id {int(raw_dtype[0])}") from None
            if any(int(d) <= 0 for d in dims):
                raise ModelFormatError(f"tensor {name!r}: non-positive dimension {list(map(int, dims))}")
            block, size = GGML_QUANT_SIZES[qtype]
            n = int(np.prod([int(d) for d in dims], dtype=object))
            if int(dims[0]) % block:
                raise ModelFormatError(f"tensor {name!r}: row of {int(dims[0])} values is not a multiple of "
                                       f"the {qtype.name} block size {block}")
            start = int(start_offs) + int(offset_tensor[0])
            if start % self.alignment:
                raise ModelFormatError(f"tensor {name!r}: data offset {start} is not {self.alignment}-byte aligned")
            end = start + n * size // block
            if end > file_size:
                raise ModelFormatError(f"tensor {name!r}: data [{start}, {end}) lies past the end of the file "
                                       f"({file_size} bytes); the file is truncated or corrupt")
        super()._build_tensors(start_offs, fields)


def _field_value(f) -> Any:
    """A GGUF KV field as a plain Python value (str, int, float, bool or list of those)."""
    t = f.types[0]
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    if t == GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [v.item() for i in f.data for v in f.parts[i]]
    v = f.parts[f.data[0]][0]
    return bool(v) if t == GGUFValueType.BOOL else v.item()


@dataclass
class HParams:
    """qwen35 hyper-parameters, read from the metadata keys llama.cpp uses."""

    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int              # block_count - nextn_predict_layers (the MTP block is not a layer)
    n_nextn: int
    n_ctx_train: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rms_eps: float
    ssm_conv: int
    ssm_k_heads: int
    ssm_v_heads: int
    ssm_k_dim: int
    ssm_v_dim: int
    full_attention_interval: int
    recurrent: list[bool] = field(repr=False)
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # the file's, or the user's override

    @property
    def n_ctx_max(self) -> int:
        """The longest context the model serves: the training context, times the RoPE scaling factor."""
        return self.rope_scaling.max_context(self.n_ctx_train)

    def core_config(self, mtp: bool = False) -> dict:
        """The C++ config; mtp=True includes the MTP block(s) (the spec then walks their tensors too)."""
        return {
            "n_embd": self.n_embd, "n_ff": self.n_ff, "n_vocab": self.n_vocab, "n_layer": self.n_layer,
            "n_nextn": self.n_nextn if mtp else 0,
            "recurrent": self.recurrent, "n_head": self.n_head, "n_head_kv": self.n_head_kv,
            "head_dim": self.head_dim, "n_rot": self.n_rot, "rope_base": self.rope_base,
            "ssm_conv": self.ssm_conv, "ssm_k_heads": self.ssm_k_heads, "ssm_v_heads": self.ssm_v_heads,
            "ssm_k_dim": self.ssm_k_dim, "ssm_v_dim": self.ssm_v_dim, "rms_eps": self.rms_eps,
            **self.rope_scaling.core_fields(),
        }

    @property
    def n_attn_layers(self) -> int:
        return self.recurrent.count(False)

    def state_bytes(self, n_ctx: int, kv_type: str = "f16") -> dict:
        """Bytes of one sequence's state (recurrent, kv_per_token, kv_cache, total), from the C++ spec."""
        from . import _spec

        return _spec.state_bytes(self.core_config(), n_ctx, kv_type)


@dataclass
class TensorInfo:
    name: str
    type: int          # ggml type id
    shape: tuple       # ne: contiguous dimension first, as in ggml
    offset: int        # absolute byte offset in the file
    nbytes: int
    data: np.ndarray = field(repr=False)  # memory-mapped bytes/values

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.type).name


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Every KV pair of a GGUF file as Python values (see docs/CONTRACTS.md)."""
    return GGUFFile.open(path, validate=False).metadata


class GGUFFile:
    """A memory-mapped GGUF file with its metadata and tensor table (validated for qwen35)."""

    def __init__(self, path: Path, reader: GGUFReader, metadata: dict, tensors: dict[str, TensorInfo]):
        self.path = path
        self.reader = reader
        self.metadata = metadata
        self.tensors = tensors
        self.hparams: HParams | None = None
        self._mtp_problem: str | None | bool = False  # False: not checked yet (see mtp_problem)

    @classmethod
    def open(cls, path: str | os.PathLike, validate: bool = True) -> "GGUFFile":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such model file: {path}")
        if path.stat().st_size < 24:
            raise ModelFormatError(f"{path}: too small to be a GGUF file ({path.stat().st_size} bytes)")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelFormatError(f"{path}: not a GGUF file (wrong magic)")
        from .gguf_prescan import prescan

        prescan(path)  # every count and length fits in the file before gguf's reader trusts them
        try:
            reader = _CheckedReader(path, "r")
        except ModelFormatError as e:
            raise ModelFormatError(f"{path}: {e}") from None
        except Exception as e:  # the gguf parser raises many types on corrupt input
            raise ModelFormatError(f"{path}: cannot parse GGUF ({type(e).__name__}: {e}); "
                                   "the file is truncated or corrupt") from None
        metadata = {}
        for name, f in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            try:
                metadata[name] = _field_value(f)
            except Exception as e:
                raise ModelFormatError(f"{path}: metadata key {name!r} cannot be read ({e})") from None
        tensors = {}
        for t in reader.tensors:
            tensors[t.name] = TensorInfo(t.name, int(t.tensor_type), tuple(int(d) for d in t.shape),
                                         int(t.data_offset), int(t.n_bytes), t.data)
        gf = cls(path, reader, metadata, tensors)
        if validate:
            gf.hparams = gf._read_hparams()
            gf._check_tensors()
        return gf

    # ---- hyper-parameters ----------------------------------------------------------------------

    def _key(self, key: str, kind: type, default: Any = None, required: bool = True):
        full = f"{ARCH}.{key}" if not key.startswith(("general.", "tokenizer.")) else key
        if full not in self.metadata:
            if required and default is None:
                raise ModelFormatError(f"{self.path}: missing metadata key {full!r}")
            return default
        v = self.metadata[full]
        if kind is int and isinstance(v, list) and v and all(isinstance(x, int) for x in v):
            if len(set(v) - {0}) > 1:  # per-layer arrays (0 for layers without the feature) must agree
                raise ModelFormatError(f"{self.path}: per-layer values of {full!r} differ ({sorted(set(v))})")
            v = max(v)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise ModelFormatError(f"{self.path}: metadata key {full!r} has type {type(v).__name__}, "
                                   f"expected {kind.__name__}")
        return v

    def _read_hparams(self) -> HParams:
        arch = self.metadata.get("general.architecture")
        if arch is None:
            raise ModelFormatError(f"{self.path}: missing metadata key 'general.architecture'")
        if arch != ARCH:
            raise ModelFormatError(f"{self.path}: architecture is {arch!r}; pyqwen runs only {ARCH!r} "
                                   "(Qwen3.5/Qwen3.6 dense hybrid models)")
        block_count = self._key("block_count", int)
        n_nextn = self._key("nextn_predict_layers", int, 0, required=False)
        n_layer = block_count - n_nextn
        n_embd = self._key("embedding_length", int)
        n_head = self._key("attention.head_count", int)
        head_dim = self._key("attention.key_length", int, n_embd // max(n_head, 1), required=False)
        value_dim = self._key("attention.value_length", int, head_dim, required=False)
        if value_dim != head_dim:
            raise ModelFormatError(f"{self.path}: attention key_length {head_dim} != value_length {value_dim}")
        interval = self._key("full_attention_interval", int, 4, required=False)
        k_heads = self._key("ssm.group_count", int)
        v_heads = self._key("ssm.time_step_rank", int)
        inner = self._key("ssm.inner_size", int)
        positive = dict(block_count=block_count, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        head_dim=head_dim, full_attention_interval=interval, k_heads=k_heads, v_heads=v_heads,
                        inner=inner)
        for k, v in positive.items():
            if v <= 0:
                raise ModelFormatError(f"{self.path}: {k} must be positive (got {v})")
        if n_layer > 4096 or n_embd > 1 << 20:
            raise ModelFormatError(f"{self.path}: implausible model size (n_layer {n_layer}, n_embd {n_embd})")
        if inner % v_heads:
            raise ModelFormatError(f"{self.path}: ssm.inner_size {inner} not divisible by ssm.time_step_rank {v_heads}")
        rec = self.metadata.get(f"{ARCH}.attention.recurrent_layers")
        if isinstance(rec, list) and len(rec) >= n_layer:
            recurrent = [bool(x) for x in rec[:n_layer]]
        else:
            recurrent = [(i + 1) % interval != 0 for i in range(n_layer)]
        tok = self.tensors.get("token_embd.weight")
        if tok is None:
            raise ModelFormatError(f"{self.path}: missing tensor 'token_embd.weight'")
        if len(tok.shape) != 2:
            raise ModelFormatError(f"{self.path}: tensor 'token_embd.weight' must be 2-D, has shape {tok.shape}")
        n_vocab = tok.shape[1]
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list) and len(tokens) != n_vocab:
            raise ModelFormatError(f"{self.path}: tokenizer has {len(tokens)} tokens but token_embd.weight has "
                                   f"{n_vocab} rows")
        hp = HParams(
            n_vocab=n_vocab, n_embd=n_embd, n_ff=self._key("feed_forward_length", int), n_layer=n_layer,
            n_nextn=n_nextn, n_ctx_train=self._key("context_length", int, 262144, required=False),
            n_head=n_head, n_head_kv=self._key("attention.head_count_kv", int, n_head, required=False),
            head_dim=head_dim, n_rot=self._key("rope.dimension_count", int, head_dim, required=False),
            rope_base=self._key("rope.freq_base", float, 10000.0, required=False),
            rms_eps=self._key("attention.layer_norm_rms_epsilon", float),
            ssm_conv=self._key("ssm.conv_kernel", int), ssm_k_heads=k_heads, ssm_v_heads=v_heads,
            ssm_k_dim=self._key("ssm.state_size", int), ssm_v_dim=inner // v_heads,
            full_attention_interval=interval, recurrent=recurrent)
        hp.rope_scaling = rope_scaling_from_gguf(self.metadata, ARCH, hp.n_ctx_train, self.path)
        if hp.n_head % max(hp.n_head_kv, 1) or hp.n_head_kv <= 0:
            raise ModelFormatError(f"{self.path}: head_count {hp.n_head} not a multiple of head_count_kv {hp.n_head_kv}")
        if v_heads % k_heads:
            raise ModelFormatError(f"{self.path}: ssm.time_step_rank {v_heads} not a multiple of ssm.group_count {k_heads}")
        if hp.n_rot % 2 or hp.n_rot > head_dim or hp.n_rot < 0:
            raise ModelFormatError(f"{self.path}: rope.dimension_count {hp.n_rot} invalid for head dim {head_dim}")
        if not 1 <= hp.ssm_conv <= 16 or hp.ssm_k_dim <= 0 or hp.n_ff <= 0:
            raise ModelFormatError(f"{self.path}: invalid ssm.conv_kernel/state_size/feed_forward_length")
        if not hp.rms_eps > 0 or not hp.rope_base > 0:
            raise ModelFormatError(f"{self.path}: layer_norm_rms_epsilon and rope.freq_base must be positive")
        # The C++ config holds these in 32-bit ints: a value past that is a corrupt file, said here rather
        # than as a failed conversion inside the extension.
        for k, v in hp.core_config().items():
            if k.startswith(("rope_", "yarn_")):
                continue
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v < 2**31:
                raise ModelFormatError(f"{self.path}: hyper-parameter {k} = {v} is out of range")
        return hp

    # ---- tensors -------------------------------------------------------------------------------
    # What a qwen35 model reads is the C++ spec (csrc/common/model_spec.h, through pyqwen._spec), not a
    # table kept here: the same walk binds the weights on the CPU, uploads them on CUDA and plans GPU memory.

    def expected_tensors(self, mtp: bool = False) -> dict[str, dict]:
        """name -> {ne0, ne1, storage, optional} of every tensor the forward pass reads that this file has
        or must have (an absent optional one -- output.weight, tied -- is left out), in file order; with
        mtp, the MTP block's too."""
        from . import _spec

        spec = _spec.expected_tensors(self.hparams.core_config(mtp=mtp))
        return {name: t for name, t in spec.items() if not t["optional"] or name in self.tensors}

    def mtp_problem(self) -> str | None:
        """Why the file's MTP head cannot draft (None: it can). A file without one, or with a damaged one,
        still loads: the head is only needed for speculative decoding. Checked once per file (generation
        asks on every call)."""
        if self._mtp_problem is False:
            self._mtp_problem = self._find_mtp_problem()
        return self._mtp_problem

    def _find_mtp_problem(self) -> str | None:
        if self.hparams.n_nextn <= 0:
            return (f"{self.path} has no MTP head (no nextn_predict_layers / blk.{self.hparams.n_layer}.nextn.* "
                    "tensors; convert the checkpoint with them, as llama.cpp's converter does by default)")
        main = self.expected_tensors()
        try:
            self._check_tensors({n: t for n, t in self.expected_tensors(mtp=True).items() if n not in main})
        except ModelFormatError as e:
            return f"the MTP head is unusable: {e}"
        return None

    def _check_tensors(self, expected: dict[str, dict] | None = None) -> None:
        supported = _weight_types()
        for name, want in (self.expected_tensors() if expected is None else expected).items():
            t = self.tensors.get(name)
            if t is None:
                raise ModelFormatError(f"{self.path}: missing tensor {name!r}")
            shape = (want["ne0"], want["ne1"])
            # ggml drops trailing 1s inconsistently between writers: compare with them stripped.
            if _strip_ones(t.shape) != _strip_ones(shape):
                raise ModelFormatError(f"{self.path}: tensor {name!r} has shape {list(t.shape)}, "
                                       f"expected {list(_strip_ones(shape))}")
            if t.type not in supported:
                raise ModelFormatError(f"{self.path}: tensor {name!r} has type {t.type_name}, which pyqwen does "
                                       "not support yet")
            if want["storage"] == "float" and t.type not in FLOAT_TYPES:
                raise ModelFormatError(f"{self.path}: tensor {name!r} must be F32/F16/BF16 (the kernels read it as "
                                       f"floats), not {t.type_name}")

    def core_tensors(self, mtp: bool = False) -> tuple[dict, list]:
        """(name -> (type, ne0, ne1, address)) for the C++ core, and the arrays that must stay alive.

        Weights are passed as pointers into the mapping. Tensors the spec stores as floats (norms, conv
        taps, decay parameters) that a writer stored as F16/BF16 are widened to F32 copies: the kernels
        read those as floats and they are a few KB.
        """
        out, keep = {}, []
        for name, want in self.expected_tensors(mtp=mtp).items():
            t = self.tensors[name]
            arr = t.data
            ttype = t.type
            if want["storage"] == "float" and t.type != int(GGMLQuantizationType.F32):
                arr = _widen_to_f32(t)
                ttype = int(GGMLQuantizationType.F32)
            arr = np.ascontiguousarray(arr)
            keep.append(arr)
            ne0, ne1 = _ne01(t.shape)
            out[name] = (ttype, ne0, ne1, arr.ctypes.data)
        return out, keep

    def tensor_table(self) -> dict[str, tuple[int, int, int]]:
        """name -> (type, ne0, ne1) of every tensor in the file (what the memory planner walks)."""
        return {name: (t.type, *_ne01(t.shape)) for name, t in self.tensors.items()}


def _strip_ones(s) -> tuple:
    s = tuple(int(d) for d in s)
    while len(s) > 1 and s[-1] == 1:
        s = s[:-1]
    return s


def _ne01(shape) -> tuple[int, int]:
    """ggml shape -> (ne0, rows): higher dimensions fold into rows."""
    ne1 = 1
    for d in shape[1:]:
        ne1 *= int(d)
    return int(shape[0]), ne1


def _widen_to_f32(t: TensorInfo) -> np.ndarray:
    if t.type == int(GGMLQuantizationType.F16):
        return np.asarray(t.data, dtype=np.float16).astype(np.float32)
    raw = np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16  # BF16: high half of an f32
    return raw.view(np.float32)
