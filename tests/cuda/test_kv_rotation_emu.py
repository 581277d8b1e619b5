"""A quantized KV cache on the CUDA backend stores Hadamard-rotated rows as the CPU backend does
(csrc/common/model_spec.h kv_rotation_block, llama.cpp's default), run on the CPU by the emulator, whole
model against the CPU backend on the same GGUF.

Model: tests/fixtures/hf/qwen35-r3-tied (head_dim 64: K and V both rotated in one 64-value block; the
other fixtures' head_dim 32 is never rotated) with a random MTP head (tests/mtp_fixture.py), in F16.
Chunks of <= 8 tokens: every matmul on the float-activation path. Covered: multi-token prefill (prefill
attention kernel), decode steps (decode kernel + its own split combine, replayed decode graphs), a
verification (one-token decode kernels per row) and a rollback, the MTP head's own cache (mtp_draft).

What must hold, per cache type:
- the cache: in the first attention layer (inputs ~1e-6 relative apart between the backends) the rotated
  rows are the CPU's blocks, nearly all byte for byte (the rotation is csrc's float arithmetic exactly,
  test_attention_rotation.py), and far from the CPU's unrotated rows;
- the logits: within the quantized-cache bound of test_longctx_emu.py against the CPU's rotated cache,
  and closer to it than to the CPU's unrotated one (a CUDA side that did not rotate, or rotated
  differently, fails both);
- kv_rotation=False is honoured: then the CUDA rows are the CPU's unrotated ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_model_emu import load_cuda_core

pytest.importorskip("gguf")

PROMPT = [(7 * i * i + 3 * i + 1) % 2400 + 1 for i in range(13)]
STEPS = [9, 1000]
VERIFY = [5, 17, 900]
N_CTX = 32
# Bounds against the CPU with the same cache types and rotation. Both store the same quantizer's blocks of
# K/V floats that differ by the backends' summation orders (~1e-6 relative); a value on a rounding boundary
# lands one level apart (1/127 of its block's largest value for q8_0, 1/7 for q4_0) and this fixture's
# logits amplify such flips more than test_longctx_emu.py's: the unrotated caches (the path the CUDA backend
# had before it rotated) agree to max 3.8e-2, mean 3.1e-3 for q8_0. Observed rotated: q8_0 2.8e-2 / 3.1e-3,
# q4_0 5.3e-2 / 4.1e-3 -- against the CPU's other rotation q8_0 0.15 / 1.1e-2, q4_0 1.6 / 0.14.
QUANT_MAX = {"q8_0": 6e-2, "q8_0,f16": 6e-2, "q4_0": 1e-1}
QUANT_MEAN = 6e-3


@pytest.fixture(scope="module")
def r3_mtp_f16(tmp_path_factory):
    from mtp_fixture import with_mtp

    from pyqwen.convert import convert

    root = tmp_path_factory.mktemp("kvrot")
    return convert(with_mtp("qwen35-r3-tied", root / "hf"), root / "r3-mtp-f16.gguf", "f16", progress=False)


@pytest.fixture(scope="module")
def cpu(r3_mtp_f16):
    import pyqwen

    m = pyqwen.Model.load(str(r3_mtp_f16), n_ctx=N_CTX, backend="cpu", threads=1, spec="mtp")
    assert m.has_mtp and m._core.config["head_dim"] == 64
    return m._core


@pytest.fixture(scope="module")
def core(emu_ops, r3_mtp_f16):
    return load_cuda_core(emu_ops, r3_mtp_f16, n_batch=8, n_ctx=N_CTX)


def run(backend, st):
    """Logits of: the prompt in chunks of 8, two decode steps, an MTP draft, a verification of 3 tokens
    rolled back to 1, one more step; rows stacked."""
    out = []
    for i in range(0, len(PROMPT), 8):
        out.append(backend.forward(st, np.array(PROMPT[i:i + 8], np.int32), "all", 8))
    for t in STEPS:
        out.append(backend.forward(st, np.array([t], np.int32), "all", 1))
    out.append(backend.mtp_draft(st, 44)[None])
    out.append(backend.verify(st, np.array(VERIFY, np.int32)))
    backend.rollback(st, 1)
    out.append(backend.forward(st, np.array([61], np.int32), "all", 1))
    return np.concatenate(out)


def kv_blocks(rows: bytes, t: str) -> np.ndarray:
    bb = 34 if t == "q8_0" else 18
    return np.frombuffer(rows, np.uint8).reshape(-1, bb)


def first_layer_rows(backend, st, cuda: bool):
    snap = backend.snapshot(st, True)
    return (backend._m.snapshot_kv_rows(snap) if cuda else snap.kv_rows)[0]


@pytest.mark.parametrize("kv", ["q8_0", "q4_0", "q8_0,f16"])
def test_rotated_cache_matches_the_cpu(cpu, core, kv):
    k_t, _, v_t = kv.partition(",")
    v_t = v_t or k_t
    gs = core.new_state(N_CTX, kv, mtp=True)
    cs = cpu.new_state(N_CTX, kv, mtp=True)
    cs_plain = cpu.new_state(N_CTX, kv, mtp=True, kv_rotation=False)
    assert gs.kv_rotation and cs.kv_rotation and not cs_plain.kv_rotation
    got, ref, plain = run(core, gs), run(cpu, cs), run(cpu, cs_plain)

    err, off = np.abs(got - ref), np.abs(got - plain)
    print(f"{kv}: CUDA vs CPU rotated max {err.max():.2e} mean {err.mean():.2e}; "
          f"vs CPU unrotated max {off.max():.2e} mean {off.mean():.2e}")
    assert err.max() < QUANT_MAX[kv] and err.mean() < QUANT_MEAN, (err.max(), err.mean())
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    assert err.mean() < off.mean() / 2, (err.mean(), off.mean())

    # The first attention layer's rows (snapshots hold the rows below pos: all written, the rollback's too).
    (kg, vg), (kc, vc), (kp, vp) = (first_layer_rows(core, gs, True), first_layer_rows(cpu, cs, False),
                                    first_layer_rows(cpu, cs_plain, False))
    for g, c, p, t in ((kg, kc, kp, k_t), (vg, vc, vp, v_t)):
        assert len(g) == len(c) == len(p) > 0
        if t == "f16":  # never rotated: the same rows as the unrotated CPU's
            np.testing.assert_allclose(np.frombuffer(g, np.float16).astype(np.float32),
                                       np.frombuffer(p, np.float16).astype(np.float32), atol=1e-3, rtol=2e-3)
            continue
        same = (kv_blocks(g, t) == kv_blocks(c, t)).all(-1).mean()
        same_plain = (kv_blocks(g, t) == kv_blocks(p, t)).all(-1).mean()
        assert same >= 0.9 and same_plain < 0.2, (t, same, same_plain)


def test_rotation_off_is_honoured(cpu, core):
    """kv_rotation=False (pyqwen.Model.load(kv_rotation=False)): the CUDA rows are the CPU's plain ones."""
    gs = core.new_state(N_CTX, "q4_0", mtp=True, kv_rotation=False)
    cs = cpu.new_state(N_CTX, "q4_0", mtp=True, kv_rotation=False)
    assert not gs.kv_rotation
    got, ref = run(core, gs), run(cpu, cs)
    err = np.abs(got - ref)
    assert err.max() < QUANT_MAX["q4_0"] and err.mean() < QUANT_MEAN, (err.max(), err.mean())
    # and the bound above tells the two apart: these unrotated CUDA rows against the CPU's rotated ones fail it
    rotated = run(cpu, cpu.new_state(N_CTX, "q4_0", mtp=True))
    assert np.abs(got - rotated).max() > 5 * QUANT_MAX["q4_0"]
    kg, _ = first_layer_rows(core, gs, True)
    kc, _ = first_layer_rows(cpu, cs, False)
    assert len(kg) == len(kc) > 0
    assert (kv_blocks(kg, "q4_0") == kv_blocks(kc, "q4_0")).all(-1).mean() >= 0.9
    # a rotated snapshot does not restore into an unrotated state
    with pytest.raises(ValueError):
        core.restore(gs, core.snapshot(core.new_state(N_CTX, "q4_0", mtp=True), True))


def test_model_new_state_passes_kv_rotation_to_the_cuda_core(core, r3_mtp_f16):
    """pyqwen.Model's option reaches the CUDA states as the CPU ones (it used to be refused on CUDA)."""
    from test_server_emu import model_on

    m = model_on(core, r3_mtp_f16, N_CTX)
    m.kv_type = "q8_0"
    assert m.kv_rotation and m.new_state(mtp=False).kv_rotation
    m.kv_rotation = False
    st = m.new_state(mtp=False)
    assert st.kv_type == "q8_0" and not st.kv_rotation
