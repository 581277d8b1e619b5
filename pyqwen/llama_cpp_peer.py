"""llama.cpp (llama-cpp-python) as the peer that benchmarks and tests compare pyqwen with.

One way to open a model for both: `open_llama(path, **kw)` is llama_cpp.Llama, by default without
llama.cpp's extra weight buffer types (the repacked and AMX layouts). On a Xeon with AMX, llama-cpp-python
0.3.36's AMX matmul (ggml_backend_amx_mul_mat) segfaults on qwen35 k-quant files (seen on 2026-12-01 with a
16-token prompt and 1 or 2 threads); llama.cpp's plain CPU kernels run. `llama-cli --no-extra-bufts` is the
same switch on the command line. Tests use the plain kernels (a reference, the same on every CPU); the
benchmark asks `extra_bufts_usable(path)` first and gives llama.cpp its fastest path where it runs.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path


def llama_cpp_available() -> str | None:
    """None when llama_cpp imports, else the reason it does not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or a broken shared library
        return f"llama_cpp (llama-cpp-python) is not importable: {type(e).__name__}: {e}"
    return None


def open_llama(path: str | Path, extra_bufts: bool = False, **kw):
    """llama_cpp.Llama(model_path=path, **kw), with llama.cpp's extra buffer types only if extra_bufts."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = extra_bufts
        return p

    # Llama.__init__ takes its model parameters from llama_model_default_params(): swap it for the call.
    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=str(path), **kw)
    finally:
        lib.llama_model_default_params = default


_PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=16, n_ubatch=16, n_threads=1, verbose=False)
arr = (llama_cpp.llama_token * 16)(*range(1, 17))
sys.exit(llama_cpp.llama_decode(llm._ctx.ctx, llama_cpp.llama_batch_get_one(arr, 16)))
"""


@functools.lru_cache(maxsize=None)
def extra_bufts_usable(path: str) -> bool:
    """Whether llama.cpp runs this file with its extra CPU buffer types (AMX, repacked GEMM weights): a
    16-token prefill in a subprocess, since a crash there would take the caller's process with it."""
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0
