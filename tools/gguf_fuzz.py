#!/usr/bin/env python3
"""Structure-aware GGUF fuzzer: every mutated file either loads and runs a forward pass, or raises
pyqwen.ModelFormatError naming the problem -- never a crash, a hang, a foreign exception, or an
allocation driven by an unchecked count.

A seed GGUF is parsed into its structure (header, key/value pairs with typed and nested values, tensor
infos, alignment, data) and re-serialized after 1-3 mutations, each free to write inconsistent lengths
and counts: header version and counts; key/value types, lengths, extreme numbers, nested and mistyped
arrays, deleted / duplicated / renamed keys, tokenizer arrays and ids; tensor names, ranks, dims, types,
offsets and alignment; truncation; random byte flips. Case i of seed s is a pure function of (s, i), so
every finding is reproducible: `python tools/gguf_fuzz.py --replay SEED:INDEX --out case.gguf`.

Cases run in subprocess batches (`run_campaign`), each worker under an address-space limit (RLIMIT_AS)
and a per-case timeout; the parent attributes a worker's death to the case it had announced. Outcomes:
  loaded          loaded and ran a forward pass (logits of the right shape)
  format_error    pyqwen.ModelFormatError (the expected rejection)
  pyqwen_error    another PyqwenError (e.g. ContextOverflowError)
  foreign         any other exception escaping pyqwen  -> a bug
  memory          MemoryError under the address-space limit -> an allocation from an unchecked count
  crash           the worker died by a signal           -> a bug
  hang            the case exceeded its timeout          -> a bug, unless it finishes when replayed alone
  worker          the worker died twice before reaching the case (e.g. it cannot start) -> a bug
  fuzzer_error    the mutation itself raised             -> a bug of this tool
Hangs are replayed one at a time at the end of a campaign (or with --replay-hangs LOG): a case that then
finishes was starved of CPU (counted under hang_starved, by its real outcome), one that hangs again is real.
Campaign: python tools/gguf_fuzz.py --seed-gguf MODEL.gguf --cases 10000 --log run.jsonl --report out.json
          python tools/gguf_fuzz.py --seed-gguf MODEL.gguf --summarize run.jsonl   (also while it runs)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
           U64: "<Q", I64: "<q", F64: "<d"}
BAD_COUNTS = [0, 1, 2, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63,
              (1 << 64) - 1]


# ---- structure --------------------------------------------------------------------------------------------

@dataclass
class Value:
    vtype: int
    v: object                        # python scalar, bytes (STR), or list[Value] (ARR)
    elem_type: int | None = None     # ARR: the declared element type
    len_override: int | None = None  # STR/ARR: a declared length that differs from the real one


@dataclass
class KV:
    key: bytes
    value: Value
    key_len_override: int | None = None


@dataclass
class TensorInfo:
    name: bytes
    dims: list[int]
    ttype: int
    offset: int
    n_dims_override: int | None = None


@dataclass
class GGUF:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data: bytes
    alignment: int = 32
    n_tensors_override: int | None = None
    n_kv_override: int | None = None
    magic: bytes = b"GGUF"
    extra: dict = field(default_factory=dict)


class _R:
    def __init__(self, b: bytes):
        self.b, self.o = b, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.o)[0]
        self.o += struct.calcsize(fmt)
        return v

    def bytes_(self):
        n = self.take("<Q")
        s = self.b[self.o:self.o + n]
        self.o += n
        return s

    def value(self, t):
        if t in _SCALAR:
            return Value(t, self.take(_SCALAR[t]))
        if t == STR:
            return Value(STR, self.bytes_())
        if t == ARR:
            et, n = self.take("<I"), self.take("<Q")
            return Value(ARR, [self.value(et) for _ in range(n)], elem_type=et)
        raise ValueError(f"bad type {t}")


def parse(b: bytes) -> GGUF:
    r = _R(b)
    magic = r.b[:4]
    r.o = 4
    version, nt, nkv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(nkv):
        k = r.bytes_()
        kvs.append(KV(k, r.value(r.take("<I"))))
    tensors = []
    for _ in range(nt):
        name = r.bytes_()
        nd = r.take("<I")
        dims = [r.take("<Q") for _ in range(nd)]
        tensors.append(TensorInfo(name, dims, r.take("<I"), r.take("<Q")))
    align = 32
    for kv in kvs:
        if kv.key == b"general.alignment" and kv.value.vtype == U32:
            align = kv.value.v
    start = -(-r.o // align) * align
    return GGUF(version, kvs, tensors, b[start:], align, magic=magic)


def _w_value(out: list, v: Value) -> None:
    if v.vtype in _SCALAR:
        fmt = _SCALAR[v.vtype]
        try:
            out.append(struct.pack(fmt, v.v))
        except (struct.error, TypeError):           # a value retyped by a mutation: its raw low bytes
            out.append((int(v.v) if isinstance(v.v, (int, bool)) else 0).to_bytes(16, "little", signed=False
                       if not isinstance(v.v, int) or v.v >= 0 else True)[:struct.calcsize(fmt)])
    elif v.vtype == STR:
        data = v.v if isinstance(v.v, bytes) else str(v.v).encode()
        out.append(struct.pack("<Q", v.len_override if v.len_override is not None else len(data)))
        out.append(data)
    elif v.vtype == ARR:
        items = v.v if isinstance(v.v, list) else []
        out.append(struct.pack("<IQ", v.elem_type if v.elem_type is not None else U8,
                               v.len_override if v.len_override is not None else len(items)))
        for it in items:
            _w_value(out, it)
    else:                                            # an invalid type id: no payload the reader knows
        out.append(b"\x00" * 8)


def serialize(g: GGUF) -> bytes:
    out = [g.magic, struct.pack("<I", g.version & 0xFFFFFFFF),
           struct.pack("<Q", (g.n_tensors_override if g.n_tensors_override is not None else len(g.tensors)) % (1 << 64)),
           struct.pack("<Q", (g.n_kv_override if g.n_kv_override is not None else len(g.kvs)) % (1 << 64))]
    for kv in g.kvs:
        out.append(struct.pack("<Q", kv.key_len_override if kv.key_len_override is not None else len(kv.key)))
        out.append(kv.key)
        out.append(struct.pack("<I", kv.value.vtype & 0xFFFFFFFF))
        _w_value(out, kv.value)
    for t in g.tensors:
        out.append(struct.pack("<Q", len(t.name)) + t.name)
        nd = t.n_dims_override if t.n_dims_override is not None else len(t.dims)
        out.append(struct.pack("<I", nd & 0xFFFFFFFF))
        out.extend(struct.pack("<Q", d % (1 << 64)) for d in t.dims)
        out.append(struct.pack("<IQ", t.ttype & 0xFFFFFFFF, t.offset % (1 << 64)))
    head = b"".join(out)
    align = g.alignment if isinstance(g.alignment, int) and 0 < g.alignment < (1 << 20) else 32
    pad = (-len(head)) % align
    return head + b"\x00" * pad + g.data


# ---- mutations --------------------------------------------------------------------------------------------

def _kv(g: GGUF, rng: random.Random, pred=lambda kv: True) -> KV | None:
    c = [kv for kv in g.kvs if pred(kv)]
    return rng.choice(c) if c else None


def _extreme(rng: random.Random, vtype: int):
    if vtype in (F32, F64):
        return rng.choice([0.0, -0.0, -1.0, 1e-45, 1e30, -1e30, float("nan"), float("inf"), float("-inf"), 3.4e38])
    if vtype == BOOL:
        return rng.choice([True, False])
    bits = {U8: 8, I8: 8, U16: 16, I16: 16, U32: 32, I32: 32, U64: 64, I64: 64}[vtype]
    signed = vtype in (I8, I16, I32, I64)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return rng.choice([lo, hi, 0, 1, -1 if signed else 2, rng.randint(lo, hi), hi // 2 + 1, 3, 7, 1000, 65537])


def m_version(g, rng, _):
    g.version = rng.choice([0, 1, 2, 4, 5, 0xFFFFFFFF, rng.getrandbits(32)])


def m_counts(g, rng, _):
    if rng.random() < 0.5:
        g.n_tensors_override = rng.choice(BAD_COUNTS + [len(g.tensors) + rng.choice([-1, 1, 2])])
    else:
        g.n_kv_override = rng.choice(BAD_COUNTS + [len(g.kvs) + rng.choice([-1, 1, 2])])


def m_magic(g, rng, _):
    g.magic = rng.choice([b"GGUF"[::-1], b"GGML", b"\x00\x00\x00\x00", bytes(rng.getrandbits(8) for _ in range(4))])


def m_kv_type(g, rng, _):
    kv = _kv(g, rng)
    if kv:
        kv.value.vtype = rng.choice(list(range(13)) + [13, 255, 0xFFFFFFFF])


def m_kv_extreme(g, rng, _):
    # an array's declared element type may have been retyped by another mutation: pick a scalar item
    kv = _kv(g, rng, lambda kv: kv.value.vtype in _SCALAR or (kv.value.vtype == ARR and isinstance(kv.value.v, list)
                                                                and any(it.vtype in _SCALAR for it in kv.value.v)))
    if kv is None:
        return
    if kv.value.vtype == ARR:
        it = rng.choice([it for it in kv.value.v if it.vtype in _SCALAR])
        it.v = _extreme(rng, it.vtype)
    else:
        kv.value.v = _extreme(rng, kv.value.vtype)


def m_hparam(g, rng, _):
    """Extreme values for the model's own hyper-parameters (qwen35.*) and the tokenizer's ids."""
    kv = _kv(g, rng, lambda kv: kv.key.startswith((b"qwen35.", b"tokenizer.ggml.")) and kv.key.endswith(b"_id")
             or kv.key.startswith(b"qwen35."))
    if kv is None:
        return
    if kv.value.vtype in _SCALAR:
        kv.value.v = _extreme(rng, kv.value.vtype)
    elif kv.value.vtype == ARR and kv.value.v:
        rng.choice(kv.value.v).v = _extreme(rng, kv.value.elem_type if kv.value.elem_type in _SCALAR else U32)


def m_str_len(g, rng, _):
    kv = _kv(g, rng, lambda kv: kv.value.vtype == STR)
    target = kv.value if kv and rng.random() < 0.6 else None
    if target is None:
        kv = _kv(g, rng, lambda kv: kv.value.vtype == ARR and kv.value.elem_type == STR and kv.value.v)
        if kv is None:
            return
        target = rng.choice(kv.value.v)
    n = len(target.v)
    target.len_override = rng.choice(BAD_COUNTS + [n + 1, n + 7, max(0, n - 1), n * 2 + 100])


def m_key_len(g, rng, _):
    kv = _kv(g, rng)
    if kv:
        kv.key_len_override = rng.choice(BAD_COUNTS + [len(kv.key) + 1, max(0, len(kv.key) - 1)])


def m_key_bytes(g, rng, _):
    kv = _kv(g, rng)
    if kv:
        kv.key = rng.choice([b"", b"\xff\xfe\xfd", kv.key + b"\x00", kv.key[:-1], b"x" * 70000, kv.key.upper(),
                             kv.key.replace(b".", b"\xc0")])


def m_arr_len(g, rng, _):
    kv = _kv(g, rng, lambda kv: kv.value.vtype == ARR)
    if kv:
        n = len(kv.value.v)
        kv.value.len_override = rng.choice(BAD_COUNTS + [n + 1, max(0, n - 1)])


def m_arr_elem_type(g, rng, _):
    kv = _kv(g, rng, lambda kv: kv.value.vtype == ARR)
    if kv:
        kv.value.elem_type = rng.choice(list(range(13)) + [13, 99, 0xFFFFFFFF])


def m_arr_resize(g, rng, _):
    """Tokenizer arrays (and others) shorter / longer than the vocabulary, or emptied."""
    kv = _kv(g, rng, lambda kv: kv.value.vtype == ARR and kv.value.v)
    if kv is None:
        return
    items = kv.value.v
    how = rng.random()
    if how < 0.3:
        kv.value.v = items[: rng.randrange(len(items))]
    elif how < 0.6:
        kv.value.v = items + [items[-1]] * rng.randint(1, 50)
    elif how < 0.8:
        kv.value.v = []
    else:
        rng.shuffle(items)


def m_nested(g, rng, _):
    """Replace a value by arrays nested up to hundreds deep, or arrays of mixed content."""
    kv = _kv(g, rng)
    if kv is None:
        return
    depth = rng.choice([1, 2, 3, 10, 100, 500])
    v = Value(STR, b"leaf") if rng.random() < 0.5 else Value(U32, 7)
    for level in range(depth):   # two children per level only near the leaves: the file stays small
        v = Value(ARR, [v] * (2 if level < 8 else 1), elem_type=ARR if v.vtype == ARR else v.vtype)
    kv.value = v


def m_kv_delete(g, rng, _):
    if g.kvs:
        del g.kvs[rng.randrange(len(g.kvs))]


def m_kv_duplicate(g, rng, _):
    if g.kvs:
        kv = rng.choice(g.kvs)
        other = rng.choice(g.kvs)
        g.kvs.insert(rng.randrange(len(g.kvs) + 1), KV(kv.key, other.value))


def m_kv_swap_values(g, rng, _):
    if len(g.kvs) > 1:
        a, b = rng.sample(g.kvs, 2)
        a.value, b.value = b.value, a.value


def m_string_content(g, rng, _):
    kv = _kv(g, rng, lambda kv: kv.value.vtype == STR or (kv.value.vtype == ARR and kv.value.elem_type == STR and kv.value.v))
    if kv is None:
        return
    target = kv.value if kv.value.vtype == STR else rng.choice(kv.value.v)
    target.v = rng.choice([b"", b"\xff\xfe", b"\xc3", b"\x00" * 5, target.v[::-1], target.v * 3,
                           b"{% for x in y %}{{", b"<|im_end|>", b"\xed\xa0\x80", "🙂".encode() * 100,
                           bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))])


def m_alignment(g, rng, _):
    val = rng.choice([0, 1, 2, 3, 8, 31, 64, 4096, 1 << 31, 0xFFFFFFFF])
    kv = _kv(g, rng, lambda kv: kv.key == b"general.alignment")
    vt = rng.choice([U32, U32, U64, STR, I32])
    v = Value(vt, val if vt != STR else b"32")
    if kv:
        kv.value = v
    else:
        g.kvs.append(KV(b"general.alignment", v))
    if vt == U32 and 0 < val < (1 << 16) and rng.random() < 0.5:
        g.alignment = val  # the writer honours it: offsets now misalign or not


def m_tensor_name(g, rng, _):
    if not g.tensors:
        return
    t = rng.choice(g.tensors)
    t.name = rng.choice([b"", b"\xff\xff", t.name + b".x", t.name.replace(b"weight", b"wieght"),
                         rng.choice(g.tensors).name, b"n" * 70000, t.name.upper()])


def m_tensor_dims(g, rng, _):
    if not g.tensors:
        return
    t = rng.choice(g.tensors)
    how = rng.random()
    if how < 0.25:
        t.dims = t.dims[: rng.randrange(len(t.dims) + 1)]
    elif how < 0.4:
        t.dims = t.dims + [rng.choice([1, 2, 1 << 40])] * rng.randint(1, 4)
    elif how < 0.55:
        t.n_dims_override = rng.choice([0, 5, 8, 255, 0xFFFFFFFF, len(t.dims) + 1])
    elif how < 0.7:
        t.dims = t.dims[::-1]
    else:
        i = rng.randrange(len(t.dims)) if t.dims else 0
        if t.dims:
            t.dims[i] = rng.choice([0, 1, t.dims[i] + 1, t.dims[i] * 2, t.dims[i] // 2, 1 << 32, 1 << 62,
                                    (1 << 64) - 1, (1 << 63) + 256, 255])


def m_tensor_type(g, rng, _):
    if g.tensors:
        rng.choice(g.tensors).ttype = rng.choice(list(range(42)) + [100, 0xFFFFFFFF])


def m_tensor_offset(g, rng, _):
    if not g.tensors:
        return
    t = rng.choice(g.tensors)
    t.offset = rng.choice([t.offset + 1, t.offset + g.alignment, max(0, t.offset - g.alignment), 0,
                           len(g.data), len(g.data) - 32, (1 << 64) - 32, 1 << 62, rng.choice(g.tensors).offset,
                           rng.randrange(max(1, len(g.data)))])


def m_tensor_drop_dup(g, rng, _):
    if not g.tensors:
        return
    if rng.random() < 0.5:
        del g.tensors[rng.randrange(len(g.tensors))]
    else:
        g.tensors.insert(rng.randrange(len(g.tensors) + 1), rng.choice(g.tensors))


def m_tensor_data(g, rng, _):
    """NaN / inf / huge bit patterns in the weights: must load; the logits may then be non-finite."""
    if not g.tensors or not g.data:
        return
    d = bytearray(g.data)
    for _ in range(rng.randint(1, 64)):
        o = rng.randrange(len(d) - 4)
        d[o:o + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x00\x7c\x00\x7c"])
    g.data = bytes(d)


STRUCT_MUTATORS = [m_version, m_counts, m_magic, m_kv_type, m_kv_extreme, m_hparam, m_hparam, m_str_len, m_key_len,
                   m_key_bytes, m_arr_len, m_arr_elem_type, m_arr_resize, m_nested, m_kv_delete, m_kv_duplicate,
                   m_kv_swap_values, m_string_content, m_alignment, m_tensor_name, m_tensor_dims, m_tensor_dims,
                   m_tensor_type, m_tensor_offset, m_tensor_offset, m_tensor_drop_dup, m_tensor_data]


def _byte_flips(b: bytes, rng: random.Random, head_len: int) -> bytes:
    d = bytearray(b)
    for _ in range(rng.randint(1, 32)):
        # mostly in the header + metadata + tensor infos, where the parser's decisions are
        o = rng.randrange(head_len) if rng.random() < 0.85 else rng.randrange(len(d))
        d[o] = rng.getrandbits(8) if rng.random() < 0.7 else d[o] ^ (1 << rng.randrange(8))
    return bytes(d)


def mutate(seed_bytes: bytes, seed: int, index: int) -> tuple[bytes, list[str]]:
    """Case `index` of campaign `seed`: the mutated file and the names of the mutations applied."""
    rng = random.Random(f"{seed}:{index}")
    g = parse(seed_bytes)
    head_len = len(seed_bytes) - len(g.data)
    ops = []
    kind = rng.random()
    if kind < 0.70:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            m = rng.choice(STRUCT_MUTATORS)
            m(g, rng, None)
            ops.append(m.__name__[2:])
        out = serialize(g)
    else:
        out = seed_bytes
    if kind >= 0.70 and kind < 0.85 or (kind < 0.70 and rng.random() < 0.05):
        out = _byte_flips(out, rng, min(head_len, len(out)))
        ops.append("byte_flips")
    elif kind >= 0.85:
        cut = rng.randrange(head_len) if rng.random() < 0.7 else rng.randrange(len(out))
        out = out[:cut]
        ops.append(f"truncate@{cut}")
    return out, ops


# ---- the worker (one subprocess, many cases) -----------------------------------------------------------------

def _classify(e: BaseException) -> str:
    import pyqwen

    if isinstance(e, pyqwen.ModelFormatError):
        return "format_error"
    if isinstance(e, pyqwen.PyqwenError):
        return "pyqwen_error"
    if isinstance(e, MemoryError):
        return "memory"
    return "foreign"


def run_case(path: str) -> dict:
    import warnings

    import numpy as np

    import pyqwen

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = pyqwen.Model.load(path, threads=1, n_ctx=64, kv_type="f32", backend="cpu")
        ids = m.tokenize("Hello, world! 123") or [0]
        logits = m.eval(ids[:16])
        if logits.shape != (len(ids[:16]), m.n_vocab):
            return {"outcome": "foreign", "error": f"logits shape {logits.shape}"}
        return {"outcome": "loaded", "finite": bool(np.isfinite(logits).all())}
    except BaseException as e:  # noqa: BLE001 -- classifying is the point
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"outcome": _classify(e), "error": f"{type(e).__name__}: {str(e)[:300]}"}


def worker_main(seed_path: str, seed: int, indices: list[int], tmpdir: str) -> None:
    seed_bytes = Path(seed_path).read_bytes()
    for i in indices:
        # announced before the file is made: whatever happens from here on is this case's
        print(json.dumps({"start": i}), flush=True)
        t0 = time.monotonic()
        try:
            data, ops = mutate(seed_bytes, seed, i)
        except Exception as e:  # noqa: BLE001 -- a fuzzer bug must not stall the campaign
            print(json.dumps({"index": i, "outcome": "fuzzer_error", "ops": None,
                              "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
            continue
        p = os.path.join(tmpdir, f"case-{os.getpid()}.gguf")
        with open(p, "wb") as f:
            f.write(data)
        res = run_case(p)
        res.update(index=i, ops=ops, seconds=round(time.monotonic() - t0, 3),
                   maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        print(json.dumps(res), flush=True)


# ---- the parent: batches, limits, attribution ---------------------------------------------------------------

def _limit(mem_bytes: int):
    def f():
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return f


def worker_command(script: str, path: str, seed: int) -> list[str]:
    """The command line of a fuzzer's worker: `script --worker PATH SEED`; run_worker appends the temp dir
    and the case indices (I,J,...), and `as_worker` in the worker reads them back."""
    return [sys.executable, "-P", os.path.abspath(script), "--worker", path, str(seed)]


def as_worker(argv: list[str], worker_main) -> bool:
    """In a fuzzer's main: when argv is a `worker_command` (plus what run_worker appends), run
    worker_main(path, seed, indices, tmpdir) and return True; else False (argv is the user's)."""
    if not argv or argv[0] != "--worker":
        return False
    path, seed, tmp, idx = argv[1:5]
    worker_main(path, int(seed), [int(i) for i in idx.split(",")], tmp)
    return True


def add_runner_args(ap) -> None:
    """The command-line options of run_worker's limits (both fuzzers take them)."""
    ap.add_argument("--mem-gib", type=float, default=3.0, help="address-space limit of each worker")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--nice", type=int, default=0)


def run_worker(cmd: list[str], indices: list[int], *, mem_bytes: int, case_timeout: float, nice: int = 0,
               startup_timeout: float | None = None) -> list[dict]:
    """Run `cmd` (a worker speaking the start/result line protocol) over `indices`, restarting it after a
    crash or hang; one result per index, in order.

    Why it is written this way (the first version stalled a campaign on one batch):
    - the worker's stdout is read from the raw file descriptor and split into lines here: a buffered
      readline() can swallow two lines while select() then waits on an empty descriptor, so a finished case
      went unseen until the deadline and the batch was re-run;
    - stderr goes to a file, not a pipe nobody reads while the worker runs (a full pipe blocks the worker);
    - every wait has a deadline, re-armed after each result, and a worker that dies or stalls before
      announcing a case still makes progress: after two such runs the next case is recorded as `worker`."""
    results: dict[int, dict] = {}
    todo = list(indices)
    startup_timeout = startup_timeout or case_timeout * 4
    fruitless = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-worker-") as tmp:
        while todo:
            err_path = os.path.join(tmp, "stderr.txt")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "0"}
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(cmd + [tmp, ",".join(map(str, todo))], stdout=subprocess.PIPE,
                                        stderr=err, env=env, preexec_fn=_limit(mem_bytes))
            if nice:
                try:
                    os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
                except OSError:
                    pass
            fd = proc.stdout.fileno()
            current, deadline, buf, progressed = None, time.monotonic() + startup_timeout, b"", False
            eof = False
            while not eof:
                r, _, _ = select.select([fd], [], [], 1.0)
                if r:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        eof = True
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        msg = json.loads(line)
                        if "start" in msg:
                            current, deadline = msg["start"], time.monotonic() + case_timeout
                        else:
                            results[msg["index"]] = msg
                            current, progressed = None, True
                            deadline = time.monotonic() + case_timeout
                elif time.monotonic() > deadline:
                    proc.kill()
                    if current is not None:
                        results[current] = {"index": current, "outcome": "hang", "ops": None,
                                            "timeout_s": case_timeout}
                        progressed = True
                    break
            rc = proc.wait()
            proc.stdout.close()
            with open(err_path, "rb") as f:
                f.seek(max(0, os.path.getsize(err_path) - 2000))
                stderr = f.read().decode("utf-8", "replace")
            if current is not None and current not in results:
                outcome = "memory" if rc >= 0 and "MemoryError" in stderr else "crash"
                results[current] = {"index": current, "outcome": outcome, "rc": rc, "stderr": stderr[-500:]}
                progressed = True
            todo = [i for i in todo if i not in results]
            fruitless = 0 if progressed else fruitless + 1
            if todo and fruitless >= 2:       # the worker cannot even reach a case: say so, move on
                results[todo[0]] = {"index": todo[0], "outcome": "worker", "rc": rc, "stderr": stderr[-500:]}
                todo, fruitless = todo[1:], 0
    return [results[i] for i in indices]


def run_batch(seed_path: str, seed: int, indices: list[int], *, mem_bytes: int, case_timeout: float,
              nice: int = 0) -> list[dict]:
    """Run GGUF cases in one worker, restarting after a crash or hang; one result per index."""
    return run_worker(worker_command(__file__, seed_path, seed), indices, mem_bytes=mem_bytes, case_timeout=case_timeout, nice=nice)


def run_campaign(seed_path: str, seed: int, n_cases: int, *, jobs: int = 1, batch: int = 50,
                 mem_bytes: int = 3 << 30, case_timeout: float = 60.0, nice: int = 0, progress=None,
                 log_path: str | None = None, first: int = 0, skip: frozenset = frozenset()) -> dict:
    """Run cases first..n_cases-1 in batches on `jobs` workers; `log_path` gets every result as a JSON line
    as soon as its batch ends, in completion order (a partial campaign can be summarized from it:
    --summarize LOG; a slow batch no longer holds back the ones after it)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    todo = [i for i in range(first, n_cases) if i not in skip]      # skip: cases a resumed log already holds
    chunks = [todo[a:a + batch] for a in range(0, len(todo), batch)]
    out: list[dict] = []
    t0 = time.monotonic()
    with ThreadPoolExecutor(jobs) as ex:
        futs = [ex.submit(run_batch, seed_path, seed, c, mem_bytes=mem_bytes, case_timeout=case_timeout, nice=nice)
                for c in chunks]
        for fut in as_completed(futs):
            res = fut.result()
            out.extend(res)
            if log_path:
                with open(log_path, "a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in res)
            if progress:
                progress(len(out), len(todo))
    out.sort(key=lambda r: r["index"])
    rep = summarize(out, seed, seed_path, time.monotonic() - t0, mem_bytes)
    rep["_results"] = out           # for the hang replay; main() drops it before writing the report
    return rep


def replay_hangs(seed_path: str, seed: int, results: list[dict], *, mem_bytes: int, case_timeout: float,
                 nice: int = 0) -> list[dict]:
    """Re-run each case recorded as a hang alone, one at a time, to tell CPU starvation (the case finishes
    when it has the machine: `replayed_outcome` set, `starved` True) from a real hang (it hangs again)."""
    out = []
    for r in results:
        if r["outcome"] != "hang":
            continue
        again = run_batch(seed_path, seed, [r["index"]], mem_bytes=mem_bytes, case_timeout=case_timeout, nice=nice)[0]
        out.append({"index": r["index"], "replayed_outcome": again["outcome"], "seconds": again.get("seconds"),
                    "starved": again["outcome"] != "hang", "error": again.get("error")})
    return out


BUG_OUTCOMES = ("foreign", "memory", "crash", "hang", "worker", "fuzzer_error")


def summarize(results: list[dict], seed: int, seed_path: str, seconds: float, mem_bytes: int,
              replays: list[dict] | None = None) -> dict:
    """Counts by outcome and by mutation. A hang whose lone replay finished (`replays`, from replay_hangs)
    was CPU starvation: it is counted under `hang_starved` and by its replayed outcome, not as a bug."""
    from collections import Counter

    replayed = {r["index"]: r for r in replays or []}
    results = [dict(r, outcome=replayed[r["index"]]["replayed_outcome"], starved=True)
               if r["outcome"] == "hang" and replayed.get(r["index"], {}).get("starved") else r for r in results]
    counts = Counter(r["outcome"] for r in results)
    by_op: dict[str, Counter] = {}
    for r in results:
        for op in r.get("ops") or []:
            by_op.setdefault(op.split("@")[0], Counter())[r["outcome"]] += 1
    return {
        "seed": seed, "seed_file": str(seed_path), "cases": len(results), "seconds": round(seconds, 1),
        "address_space_limit_bytes": mem_bytes,
        "outcomes": dict(counts), "bugs": sum(counts[k] for k in BUG_OUTCOMES),
        "hang_recorded": sum(1 for r in results if r.get("starved")) + counts["hang"],
        "hang_starved": sum(1 for r in results if r.get("starved")),
        "loaded_nonfinite": sum(1 for r in results if r["outcome"] == "loaded" and not r.get("finite", True)),
        "max_rss_mib": round(max((r.get("maxrss_kib", 0) for r in results), default=0) / 1024, 1),
        "max_case_seconds": max((r.get("seconds") or 0 for r in results), default=0),
        "by_mutation": {k: dict(v) for k, v in sorted(by_op.items())},
        "findings": [r for r in results if r["outcome"] in BUG_OUTCOMES][:200],
    }


def read_log(path: str) -> tuple[list[dict], list[dict]]:
    """(case results, hang replays) of a --log file; a case logged twice keeps its last result."""
    cases: dict[int, dict] = {}
    replays = []
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        if "replayed_outcome" in r:
            replays.append(r)
        else:
            cases[r["index"]] = r
    return [cases[i] for i in sorted(cases)], replays


SHORT_KEYS = ("cases", "outcomes", "bugs", "hang_recorded", "hang_starved", "loaded_nonfinite", "max_rss_mib",
              "max_case_seconds", "seconds")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if as_worker(argv, worker_main):
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-gguf", required=True, help="a valid qwen35 GGUF to mutate (small: every case loads it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50)
    add_runner_args(ap)
    ap.add_argument("--report", type=Path, help="write the JSON summary here")
    ap.add_argument("--replay", help="SEED:INDEX -- write that case's file to --out and print its mutations")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--log", help="append each result as a JSON line (for partial summaries)")
    ap.add_argument("--summarize", help="print the summary of a --log file and exit")
    ap.add_argument("--resume", action="store_true", help="skip the cases --log already holds (a campaign "
                    "stopped part way, e.g. to change --nice, continues; the report covers the whole log)")
    ap.add_argument("--replay-hangs", metavar="LOG", help="re-run each case LOG records as a hang alone (with "
                    "--timeout), append the verdicts to LOG, and print the summary")
    a = ap.parse_args(argv)
    mem = int(a.mem_gib * (1 << 30))
    if a.summarize or a.replay_hangs:
        res, replays = read_log(a.summarize or a.replay_hangs)
        if a.replay_hangs:
            done = {r["index"] for r in replays}
            new = replay_hangs(str(a.seed_gguf), a.seed, [r for r in res if r["index"] not in done], mem_bytes=mem,
                               case_timeout=a.timeout, nice=a.nice)
            with open(a.replay_hangs, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in new)
            replays += new
        rep = summarize(res, a.seed, a.seed_gguf, 0.0, mem, replays)
        print(json.dumps({k: rep[k] for k in SHORT_KEYS if k != "seconds"}))
        print(json.dumps(rep["by_mutation"]))
        if rep["findings"]:
            print(json.dumps(rep["findings"][:20], indent=1))
        return 1 if rep["bugs"] else 0
    if a.replay:
        s, i = map(int, a.replay.split(":"))
        data, ops = mutate(Path(a.seed_gguf).read_bytes(), s, i)
        (a.out or Path("case.gguf")).write_bytes(data)
        print(ops, run_case(str(a.out or "case.gguf")))
        return 0

    def progress(done, total):
        print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True)

    done = frozenset(r["index"] for r in read_log(a.log)[0]) if a.resume and a.log and os.path.exists(a.log) \
        else frozenset()
    rep = run_campaign(str(a.seed_gguf), a.seed, a.cases, jobs=a.jobs, batch=a.batch, mem_bytes=mem,
                       case_timeout=a.timeout, nice=a.nice, progress=progress, log_path=a.log, skip=done)
    print(file=sys.stderr)
    if done:                            # the report covers the whole campaign: the log's earlier cases too
        rep["_results"] = [r for r in read_log(a.log)[0] if r["index"] < a.cases]
        rep.update({k: v for k, v in summarize(rep["_results"], a.seed, a.seed_gguf, rep["seconds"], mem).items()
                    if k != "seconds"})
    if rep["outcomes"].get("hang"):     # tell starvation from real hangs: each one again, alone
        res = sorted(rep.pop("_results"), key=lambda r: r["index"])
        replays = replay_hangs(str(a.seed_gguf), a.seed, res, mem_bytes=mem, case_timeout=a.timeout, nice=a.nice)
        if a.log:
            with open(a.log, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in replays)
        rep = dict(summarize(res, a.seed, a.seed_gguf, rep["seconds"], mem, replays))
    rep.pop("_results", None)
    text = json.dumps(rep, indent=1)
    if a.report:
        a.report.write_text(text)
    print(json.dumps({k: rep[k] for k in SHORT_KEYS}))
    return 1 if rep["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
