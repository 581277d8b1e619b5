"""Bounds-check a GGUF file's header, metadata and tensor infos before the `gguf` package parses it.

gguf's reader trusts every count and length it reads: an array count or string length of 2^40 in a
crafted file makes it allocate (or loop) by that number before noticing the file is short. This walk
reads the same structure with every count checked against the bytes that are left, so such a file is
rejected at once with ModelFormatError naming the field. Arrays of fixed-size values are skipped by
arithmetic; only arrays of strings (the vocabulary) are walked item by item.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from .errors import ModelFormatError

# GGUF value type -> byte size (strings and arrays: variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STR, _ARR = 8, 9
MAX_NAME = 1 << 16          # keys and tensor names: far above any real one
MAX_DIMS = 4                # GGML_MAX_DIMS
MAX_NESTING = 4             # arrays of arrays: none in real files; bounded so recursion is too


class _Walk:
    def __init__(self, buf, path: Path):
        self.b, self.o, self.n, self.path = buf, 0, len(buf), path
        self.e = "<"

    def fail(self, what: str):
        raise ModelFormatError(f"{self.path}: invalid GGUF: {what} (at byte {self.o}); the file is truncated or corrupt")

    def need(self, k: int, what: str):
        if k < 0 or k > self.n - self.o:
            self.fail(f"{what} needs {k} bytes, {self.n - self.o} left")

    def u(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        self.need(size, what)
        v = struct.unpack_from(self.e + fmt, self.b, self.o)[0]
        self.o += size
        return v

    def string(self, what: str, limit: int | None = None) -> None:
        n = self.u("Q", f"{what} length")
        if limit is not None and n > limit:
            self.fail(f"{what} of {n} bytes (limit {limit})")
        self.need(n, what)
        self.o += n

    def value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in _FIXED:
            self.need(_FIXED[vtype], what)
            self.o += _FIXED[vtype]
        elif vtype == _STR:
            self.string(what)
        elif vtype == _ARR:
            et = self.u("I", f"{what}: array element type")
            count = self.u("Q", f"{what}: array count")
            if et in _FIXED:
                if count > (self.n - self.o) // _FIXED[et]:
                    self.fail(f"{what}: array of {count} values does not fit in the file")
                self.o += count * _FIXED[et]
            elif et == _STR:
                if count > (self.n - self.o) // 8:
                    self.fail(f"{what}: array of {count} strings does not fit in the file")
                for _ in range(count):
                    n = struct.unpack_from(self.e + "Q", self.b, self.o)[0] if self.n - self.o >= 8 else -1
                    if n < 0 or n > self.n - self.o - 8:
                        self.fail(f"{what}: a string in the array runs past the end of the file")
                    self.o += 8 + n
            elif et == _ARR:
                if depth >= MAX_NESTING:
                    self.fail(f"{what}: arrays nested more than {MAX_NESTING} deep")
                if count > (self.n - self.o) // 12:
                    self.fail(f"{what}: array of {count} arrays does not fit in the file")
                for _ in range(count):
                    self.value(_ARR, what, depth + 1)
            else:
                self.fail(f"{what}: unknown array element type {et}")
        else:
            self.fail(f"{what}: unknown value type {vtype}")


def prescan(path: Path) -> None:
    """Raise ModelFormatError if any count or length in the header, metadata or tensor infos does not fit
    in the file (or is beyond GGUF's own limits)."""
    with open(path, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            w = _Walk(buf, path)
            w.o = 4
            version = w.u("I", "version")
            if version & 0xFFFF == 0 and version != 0:   # a big-endian file: gguf reads those too
                w.e = ">"
                version = struct.unpack(">I", struct.pack("<I", version))[0]
            if version not in (2, 3):
                w.fail(f"GGUF version {version} is not supported (2 or 3)")
            n_tensors = w.u("Q", "tensor count")
            n_kv = w.u("Q", "metadata count")
            if n_kv > (w.n - w.o) // 13:      # a key of >= 1 byte, its length, type and a 1-byte value
                w.fail(f"metadata count {n_kv} does not fit in the file")
            if n_tensors > (w.n - w.o) // 24:
                w.fail(f"tensor count {n_tensors} does not fit in the file")
            for i in range(n_kv):
                w.string(f"metadata key #{i}", MAX_NAME)
                w.value(w.u("I", f"metadata #{i} type"), f"metadata #{i}")
            for i in range(n_tensors):
                w.string(f"tensor #{i} name", MAX_NAME)
                nd = w.u("I", f"tensor #{i} rank")
                if nd > MAX_DIMS:
                    w.fail(f"tensor #{i} has {nd} dimensions (GGUF allows {MAX_DIMS})")
                w.need(8 * nd + 12, f"tensor #{i} info")
                w.o += 8 * nd + 12
