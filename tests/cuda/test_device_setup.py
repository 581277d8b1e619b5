"""Issue 10, bug 4: device and cuBLAS set-up of the CUDA backend, on the emulated module.

- A failed device query that is not "no device" (cudaErrorInsufficientDriver: a CUDA 13 static runtime on
  an older driver) is reported, and 'auto' warns instead of silently running on the CPU.
- --device N: an index that does not exist is refused with a message naming CUDA_VISIBLE_DEVICES, both
  by select_backend and by the C++ model.
- cuBLAS is initialised (handle, workspace, warm-up) before free memory is measured for the plan, and a
  build without cuBLAS warns.
"""

from __future__ import annotations

import warnings

import pytest

INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver


def test_driver_error_is_reported_not_swallowed(emu_ops):
    from pyqwen.cuda_backend import cuda_available, select_backend

    assert emu_ops.device_query() == (1, "")
    emu_ops._set_device_count_error(INSUFFICIENT_DRIVER)
    try:
        n, why = emu_ops.device_query()
        assert n == 0 and why.startswith("cudaErrorInsufficientDriver")
        assert emu_ops.device_count() == 0
        reason = cuda_available(emu_ops)
        assert "cudaErrorInsufficientDriver" in reason and "driver" in reason
        with pytest.warns(RuntimeWarning, match="cudaErrorInsufficientDriver"):
            assert select_backend("auto", module=emu_ops) == "cpu"
        with pytest.raises(RuntimeError, match="cudaErrorInsufficientDriver"):
            select_backend("cuda", module=emu_ops)
    finally:
        emu_ops._set_device_count_error(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_backend("auto", module=emu_ops) == "cuda"


def test_device_index(emu_ops, tiny_f16):
    from pyqwen.cuda_backend import select_backend
    from pyqwen.gguf_file import GGUFFile

    with pytest.raises(RuntimeError, match="device 1 does not exist.*CUDA_VISIBLE_DEVICES"):
        select_backend("cuda", module=emu_ops, device=1)
    g = GGUFFile.open(tiny_f16)
    tensors, keep = g.core_tensors()
    with pytest.raises(RuntimeError, match="CUDA device 1 cannot be used"):
        emu_ops.CudaModel(g.hparams.core_config(), tensors, n_batch=4, device=1, keepalive=keep)
    m = emu_ops.CudaModel(g.hparams.core_config(), tensors, n_batch=4, device=0, keepalive=keep)
    assert m.new_state(8, "f16").n_ctx == 8


class _Recorder:
    """The emulated module, recording the order of set-up calls; init_blas answers `blas`."""

    def __init__(self, mod, blas: bool):
        self._mod, self._blas, self.calls = mod, blas, []

    def __getattr__(self, name):
        return getattr(self._mod, name)

    def init_blas(self, device=0):
        self.calls.append("init_blas")
        return self._blas and self._mod.init_blas(device)

    def mem_get_info(self, device=0):
        self.calls.append("mem_get_info")
        return self._mod.mem_get_info(device)


@pytest.mark.parametrize("blas", [True, False])
def test_blas_before_planning_and_warning_without_it(emu_ops, tiny_f16, blas):
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    assert emu_ops.has_cublas() and emu_ops.init_blas(0)
    rec = _Recorder(emu_ops, blas)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        CudaCore.from_gguf(GGUFFile.open(tiny_f16), 16, n_batch=4, module=rec, progress=False)
    assert rec.calls[:2] == ["init_blas", "mem_get_info"]
    msgs = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert any("without cuBLAS" in m for m in msgs) == (not blas)
