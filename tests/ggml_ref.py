"""ctypes access to llama.cpp's own ggml (shipped inside llama-cpp-python) as an independent reference.

Used only by tests. The shared libraries are found in the installed ``llama_cpp`` package (or in the
directory named by ``PYQWEN_GGML_LIB_DIR``). Importing llama_cpp itself is not needed; we only load
``libggml-base`` (quantizers, dequantizers, type traits) and ``libggml-cpu`` (activation quantizers and
vec_dot kernels, both the generic scalar ones and the SIMD ones the CPU backend really uses).

``REF`` is a :class:`GgmlRef` or ``None``; ``SKIP_REASON`` says why it is ``None``.
"""

from __future__ import annotations

import ctypes as C
import glob
import importlib.util
import os

import numpy as np

# ggml type ids (ggml.h); only those we test.
Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS = 8, 9, 12, 13, 14, 15, 20, 23

# Types that ggml_quantize_chunk handles without an importance matrix (others abort the process).
_CHUNK_TYPES = {Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS}

# Suffix of the exported scalar kernels: ggml_vec_dot_<w>_<act>_generic.
_GENERIC_DOT = {
    Q8_0: "q8_0_q8_0",
    Q4_K: "q4_K_q8_K",
    Q5_K: "q5_K_q8_K",
    Q6_K: "q6_K_q8_K",
    IQ4_NL: "iq4_nl_q8_0",
    IQ4_XS: "iq4_xs_q8_K",
}

_TO_FLOAT = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p, C.c_int64)
_FROM_FLOAT = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p, C.c_int64)
_VEC_DOT = C.CFUNCTYPE(None, C.c_int, C.POINTER(C.c_float), C.c_size_t, C.c_void_p, C.c_size_t, C.c_void_p,
                       C.c_size_t, C.c_int)


class _TypeTraits(C.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [
        ("type_name", C.c_char_p),
        ("blck_size", C.c_int64),
        ("blck_size_interleave", C.c_int64),
        ("type_size", C.c_size_t),
        ("is_quantized", C.c_bool),
        ("to_float", _TO_FLOAT),
        ("from_float_ref", _FROM_FLOAT),
    ]


class _TypeTraitsCpu(C.Structure):  # struct ggml_type_traits_cpu (ggml-cpu.h)
    _fields_ = [
        ("from_float", _FROM_FLOAT),
        ("vec_dot", _VEC_DOT),
        ("vec_dot_type", C.c_int),
        ("nrows", C.c_int64),
    ]


def _lib_dirs() -> list[str]:
    dirs = []
    if os.environ.get("PYQWEN_GGML_LIB_DIR"):
        dirs.append(os.environ["PYQWEN_GGML_LIB_DIR"])
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            for path in glob.glob(os.path.join(root, "**", "libggml-base.so*"), recursive=True):
                dirs.append(os.path.dirname(path))
    return dirs


def _ptr(a: np.ndarray) -> C.c_void_p:
    return C.c_void_p(a.ctypes.data)


class GgmlRef:
    def __init__(self, libdir: str):
        mode = getattr(C, "RTLD_GLOBAL", 0)
        self.base = C.CDLL(_find(libdir, "libggml-base.so"), mode=mode)
        self.cpu = C.CDLL(_find(libdir, "libggml-cpu.so"), mode=mode)
        self.libdir = libdir

        self.base.ggml_get_type_traits.restype = C.POINTER(_TypeTraits)
        self.base.ggml_get_type_traits.argtypes = [C.c_int]
        self.base.ggml_quantize_chunk.restype = C.c_size_t
        self.base.ggml_quantize_chunk.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.c_int64, C.c_int64, C.c_int64,
                                                  C.c_void_p]
        self.cpu.ggml_get_type_traits_cpu.restype = C.POINTER(_TypeTraitsCpu)
        self.cpu.ggml_get_type_traits_cpu.argtypes = [C.c_int]
        self.cpu.ggml_cpu_init.restype = None
        self.cpu.ggml_cpu_init()

        # Guard against a ggml whose structs differ from the layouts above.
        t = self.traits(Q4_K)
        if t.blck_size != 256 or t.type_size != 144 or t.type_name != b"q4_K":
            raise RuntimeError("unexpected ggml_type_traits layout")

    def traits(self, type_: int) -> _TypeTraits:
        return self.base.ggml_get_type_traits(type_).contents

    def row_bytes(self, type_: int, n: int) -> int:
        t = self.traits(type_)
        return n // t.blck_size * t.type_size

    def quantize(self, type_: int, x: np.ndarray) -> np.ndarray:
        """ggml_quantize_chunk without imatrix: the bytes llama-quantize would write."""
        if type_ not in _CHUNK_TYPES:
            raise ValueError(f"type {type_} not supported by ggml_quantize_chunk here")
        x = np.ascontiguousarray(x, dtype=np.float32)
        x2 = x.reshape(1, -1) if x.ndim == 1 else x
        out = np.zeros(x2.shape[0] * self.row_bytes(type_, x2.shape[1]), dtype=np.uint8)
        self.base.ggml_quantize_chunk(type_, _ptr(x2), _ptr(out), 0, x2.shape[0], x2.shape[1], None)
        return out

    def from_float_ref(self, type_: int, x: np.ndarray) -> np.ndarray:
        """quantize_row_*_ref through the type traits (used for the activation formats Q8_K/Q8_1)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.zeros(self.row_bytes(type_, x.size), dtype=np.uint8)
        self._fn(type_, "from_float_ref", _FROM_FLOAT, "quantize_row_{}_ref")(_ptr(x), _ptr(out), x.size)
        return out

    def dequantize(self, type_: int, data: np.ndarray, n: int) -> np.ndarray:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        out = np.empty(n, dtype=np.float32)
        self._fn(type_, "to_float", _TO_FLOAT, "dequantize_row_{}")(_ptr(data), _ptr(out), n)
        return out

    def _fn(self, type_: int, field: str, proto, symbol: str):
        """A traits function pointer, or the exported function of that name when the traits leave it
        NULL (Q8_K has no to_float/from_float_ref in ggml's table). Never calls a NULL pointer."""
        fn = getattr(self.traits(type_), field)
        if fn:
            return fn
        name = symbol.format(self.traits(type_).type_name.decode())
        if not hasattr(self.base, name):
            raise ValueError(f"ggml has no {field} for type {type_}")
        return proto((name, self.base))

    def vec_dot_type(self, type_: int) -> int:
        return self.cpu.ggml_get_type_traits_cpu(type_).contents.vec_dot_type

    def quantize_act(self, type_: int, x: np.ndarray) -> np.ndarray:
        """The activation quantizer the CPU backend uses for a weight type (SIMD from_float)."""
        vdt = self.vec_dot_type(type_)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.zeros(self.row_bytes(vdt, x.size), dtype=np.uint8)
        fn = self.cpu.ggml_get_type_traits_cpu(vdt).contents.from_float
        if not fn:
            raise ValueError(f"ggml has no CPU from_float for type {vdt}")
        fn(_ptr(x), _ptr(out), x.size)
        return out

    def vec_dot(self, type_: int, w: np.ndarray, act: np.ndarray, n: int, generic: bool = True) -> float:
        """Dot of one weight row with a quantized activation row: the scalar kernel (generic=True) or the
        SIMD kernel ggml's CPU backend dispatches to on this machine."""
        w = np.ascontiguousarray(w, dtype=np.uint8)
        act = np.ascontiguousarray(act, dtype=np.uint8)
        if generic:
            fn = _VEC_DOT(("ggml_vec_dot_" + _GENERIC_DOT[type_] + "_generic", self.cpu))
        else:
            fn = self.cpu.ggml_get_type_traits_cpu(type_).contents.vec_dot
            if not fn:
                raise ValueError(f"ggml has no vec_dot for type {type_}")
        s = C.c_float(0.0)
        fn(n, C.byref(s), 0, _ptr(w), 0, _ptr(act), 0, 1)
        return s.value


def _find(libdir: str, name: str) -> str:
    hits = sorted(glob.glob(os.path.join(libdir, name + "*")), key=len)
    if not hits:
        raise OSError(f"{name} not found in {libdir}")
    return hits[0]


def _load() -> tuple[GgmlRef | None, str]:
    dirs = _lib_dirs()
    if not dirs:
        return None, "llama-cpp-python (llama_cpp) with its libggml*.so is not installed"
    errors = []
    for d in dirs:
        try:
            return GgmlRef(d), ""
        except Exception as e:  # pragma: no cover - depends on the environment
            errors.append(f"{d}: {e}")
    return None, "could not load ggml from llama_cpp: " + "; ".join(errors)


REF, SKIP_REASON = _load()


def first_diff(ours: np.ndarray, ref: np.ndarray, block_bytes: int) -> str:
    """Where two quantized byte arrays first differ, for a byte-identity test's failure message."""
    i = int(np.flatnonzero(ours != ref)[0])
    return (f"first differing byte {i} (block {i // block_bytes}, offset {i % block_bytes}): "
            f"ours {ours[i]} ggml {ref[i]}")
