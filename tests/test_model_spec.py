"""The model spec (csrc/common/model_spec.h through pyqwen._spec) against independent references: the
gguf package's tensor list for llama.cpp's qwen35 architecture, our converter's output files, and the
CPU backend's list of weight types."""

from __future__ import annotations

import re

from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

from pyqwen import _core, _spec


def _base(name: str) -> str:
    """'blk.{i}.attn_q.weight' -> 'blk.{bid}.attn_q' (the gguf package's spelling)."""
    name = name.replace("blk.{i}.", "blk.{bid}.")
    return re.sub(r"\.(weight|bias)$", "", name)


def test_tensor_names_are_llama_cpps():
    rows = _spec.tensor_spec()
    main = {_base(r["name"]) for r in rows if "mtp" not in r["blocks"] or len(r["blocks"]) > 1}
    assert main == {TENSOR_NAMES[t] for t in MODEL_TENSORS[MODEL_ARCH.QWEN35]}
    nextn = {_base(r["name"]) for r in rows if r["blocks"] == ["mtp"]}
    assert nextn and nextn <= {v for v in TENSOR_NAMES.values() if ".nextn." in v}
    assert [r["name"] for r in rows if r["optional"]] == ["output.weight"]


def test_weight_types_are_what_the_cpu_backend_reads():
    assert set(_spec.weight_types()) == {t for t in range(64) if _core.type_supported(t)}


def test_expected_tensors_are_the_converters_output(gguf_cache):
    from pyqwen.gguf_file import GGUFFile

    for name in ("qwen35-r2-untied", "qwen35-r3-tied"):
        gf = GGUFFile.open(gguf_cache(name, "f16"))
        want = gf.expected_tensors()
        assert sorted(want) == sorted(gf.tensors)  # every tensor the converter (as llama.cpp) writes
        for n, t in want.items():
            ne = [t["ne0"], t["ne1"]]
            got = list(gf.tensors[n].shape) + [1]
            assert got[:2] == ne, n
        cfg = gf.hparams.core_config()
        # the MTP block is declared but only walked when the config asks for it
        assert not any(".nextn." in n for n in _spec.expected_tensors(cfg))
        assert any(".nextn." in n for n in _spec.expected_tensors(dict(cfg, n_nextn=1)))


def test_state_buffers():
    cfg = {"n_embd": 64, "n_ff": 128, "n_vocab": 100, "n_layer": 4, "recurrent": [True, True, True, False],
           "n_head": 4, "n_head_kv": 2, "head_dim": 32, "n_rot": 16, "rope_base": 1e7, "ssm_conv": 4,
           "ssm_k_heads": 2, "ssm_v_heads": 4, "ssm_k_dim": 16, "ssm_v_dim": 8, "rms_eps": 1e-6}
    bufs = {b["name"]: b for b in _spec.state_buffers(cfg)}
    channels = 2 * 2 * 16 + 4 * 8
    assert bufs["conv"]["values"] == 3 * channels and bufs["conv"]["n_layers"] == 3
    assert bufs["ssm"]["values"] == 4 * 8 * 16 and not bufs["ssm"]["per_position"]
    assert bufs["k"]["values"] == bufs["v"]["values"] == 2 * 32 and bufs["k"]["per_position"]
    st = _spec.state_bytes(cfg, 10, "f16")
    assert st["recurrent"] == 3 * 4 * (3 * channels + 4 * 8 * 16)
    assert st["kv_per_token"] == 2 * 1 * 64 * 2
    assert st["total"] == st["recurrent"] + 10 * st["kv_per_token"]
    assert _spec.state_bytes(cfg, 10, "f32")["kv_per_token"] == 2 * st["kv_per_token"]
