"""llama.cpp (llama-cpp-python) as the peer that benchmarks and tests compare pyqwen with.

One way to open a model for both: `open_llama(path, **kw)` is llama_cpp.Llama without llama.cpp's extra
weight buffer types (the repacked and AMX layouts). On a Xeon with AMX, llama-cpp-python 0.3.36's AMX
matmul (ggml_backend_amx_mul_mat) segfaults on qwen35 k-quant files (seen on 2026-12-01 with a 16-token
prompt and 1 or 2 threads); llama.cpp's plain CPU kernels run. `llama-cli --no-extra-bufts` is the same
switch on the command line.
"""

from __future__ import annotations

from pathlib import Path


def llama_cpp_available() -> str | None:
    """None when llama_cpp imports, else the reason it does not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or a broken shared library
        return f"llama_cpp (llama-cpp-python) is not importable: {type(e).__name__}: {e}"
    return None


def open_llama(path: str | Path, **kw):
    """llama_cpp.Llama(model_path=path, **kw) with use_extra_bufts off (see the module doc)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    # Llama.__init__ takes its model parameters from llama_model_default_params(): swap it for the call.
    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=str(path), **kw)
    finally:
        lib.llama_model_default_params = default
