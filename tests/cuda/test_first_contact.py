"""Issue 10's first-contact bugs of the CUDA model, shown under the emulator (which queues stream work
as a GPU does, cuda/emu/emu_runtime.h) and checked against the CPU backend.

- bug 1: forward() with n_batch = 1 over several tokens. Each one-token chunk used to write the pinned
  host word host_io[0] and queue an async copy from it; nothing waited between chunks, so by the time the
  stream ran the copies every one of them read the last token. The logits of the last token must be the
  CPU's (same tolerance as tests/cuda/test_model_emu.py's mmv path).
- bug 2: all-NaN logits. The model must refuse to feed the "no token" marker back (decode(-1) after a
  failed step raises) and get_rows must never read outside the table for a device-resident id (an id
  outside [0, rows) gives a NaN row, compared with numpy's gather of the valid rows).
"""

from __future__ import annotations

import numpy as np
import pytest

ATOL = 2e-2  # as test_model_emu.py for chunks of <= 16 tokens
PROMPT = [1, 5, 17, 300, 42]
F32 = 0  # ggml type id


def test_one_token_chunks_keep_every_token(emu_ops, tiny_f16):
    import pyqwen
    from pyqwen.cuda_backend import CudaCore
    from pyqwen.gguf_file import GGUFFile

    cpu = pyqwen.Model.load(str(tiny_f16), n_ctx=32, backend="cpu")
    cs = cpu._core.new_state(32, "f16")
    ref = cpu._core.forward(cs, np.array(PROMPT, np.int32), "last", 256)

    core = CudaCore.from_gguf(GGUFFile.open(tiny_f16), 32, n_batch=4, module=emu_ops, progress=False)
    gs = core.new_state(32)
    got = core.forward(gs, PROMPT, "last", 1)  # --batch-size 1: five one-token chunks, no wait between
    assert gs.pos == len(PROMPT)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def _nan_head_model(emu_ops, path):
    """The fixture model with a NaN final norm: every logit is NaN, whatever the input."""
    from pyqwen.gguf_file import GGUFFile

    g = GGUFFile.open(path)
    tensors, keep = g.core_tensors()
    t, ne0, ne1, _ = tensors["output_norm.weight"]
    nan = np.full(ne0 * ne1, np.nan, np.float32)
    keep.append(nan)
    tensors["output_norm.weight"] = (t, ne0, ne1, nan.ctypes.data)
    m = emu_ops.CudaModel(g.hparams.core_config(), tensors, n_batch=4, n_ctx=16, keepalive=keep)
    return m


def test_nan_logits_are_an_error_not_a_token(emu_ops, tiny_f16):
    m = _nan_head_model(emu_ops, tiny_f16)
    st = m.new_state(16, "f16")
    with pytest.raises(RuntimeError, match="NaN"):
        m.decode(st, 5)
    # the failed step's marker must not be fed back to the embedding gather
    with pytest.raises(ValueError, match="preceding decode step"):
        m.decode(st, -1)
    with pytest.raises(RuntimeError, match="NaN"):
        m.decode(st, 5, 0.8, 0, 1.0, 0.0, 1, 0)  # the sampler: same report


def test_get_rows_never_reads_outside_the_table(ops):
    rng = np.random.default_rng(10)
    K, rows = 64, 5
    w = rng.standard_normal((rows, K)).astype(np.float32)
    ids = np.array([0, -1, rows, 4, 2**31 - 1, 3], np.int32)
    out = ops.get_rows(F32, w.view(np.uint8).ravel(), K, ids)
    good = [0, 3, 5]
    np.testing.assert_array_equal(out[good], w[ids[good]])
    assert np.isnan(out[[1, 2, 4]]).all()
