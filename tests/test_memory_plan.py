"""The GPU memory planner (pyqwen/memory_plan.py) on the real Qwen3.6-27B Q4_K_M shapes (synthesised:
the 851-tensor table with llama.cpp's Q4_K_M mix, /work/shared/reference/gguf-qwen35.md section 5), and
on a converted fixture GGUF."""

from __future__ import annotations

import pytest

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from pyqwen.memory_plan import CUDA_CONTEXT_BYTES, OutOfGPUMemory, plan, plan_for

GiB = 2**30
Q4_K, Q6_K, F32 = 12, 14, 0
N_CTX_TRAIN = 262144
CONFIG_27B = {"n_embd": 5120, "n_ff": 17408, "n_vocab": 248320, "n_layer": 64,
              "recurrent": [(i + 1) % 4 != 0 for i in range(64)], "n_head": 24, "n_head_kv": 4, "head_dim": 256,
              "n_rot": 64, "rope_base": 1e7, "ssm_conv": 4, "ssm_k_heads": 16, "ssm_v_heads": 48, "ssm_k_dim": 128,
              "ssm_v_dim": 128, "rms_eps": 1e-6}


def nbytes(t: int, ne0: int, ne1: int = 1) -> int:
    """Bytes of a tensor by the gguf package's block sizes (independent of our C++)."""
    bs, bb = GGML_QUANT_SIZES[GGMLQuantizationType(t)]
    return ne0 // bs * bb * ne1


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def qwen36_27b_q4km() -> tuple[dict, dict]:
    """(core config, tensor table name -> (type, ne0, ne1)) of Qwen3.6-27B Q4_K_M, written out by hand."""
    E, F, V, L = 5120, 17408, 248320, 64
    ws: dict[str, tuple[int, int, int]] = {}

    def add(name, t, ne0, ne1=1):
        ws[name] = (t, ne0, ne1)

    add("token_embd.weight", Q4_K, E, V)
    add("output_norm.weight", F32, E)
    add("output.weight", Q6_K, E, V)
    for i in range(L):
        p = f"blk.{i}."
        more = Q6_K if use_more_bits(i, L) else Q4_K
        add(p + "attn_norm.weight", F32, E)
        add(p + "post_attention_norm.weight", F32, E)
        add(p + "ffn_gate.weight", Q4_K, E, F)
        add(p + "ffn_up.weight", Q4_K, E, F)
        add(p + "ffn_down.weight", more, F, E)
        if (i + 1) % 4:
            add(p + "attn_qkv.weight", more, E, 10240)
            add(p + "attn_gate.weight", Q4_K, E, 6144)
            add(p + "ssm_conv1d.weight", F32, 4, 10240)
            add(p + "ssm_dt.bias", F32, 48)
            add(p + "ssm_a", F32, 48)
            add(p + "ssm_beta.weight", Q4_K, E, 48)
            add(p + "ssm_alpha.weight", Q4_K, E, 48)
            add(p + "ssm_norm.weight", F32, 128)
            add(p + "ssm_out.weight", Q4_K, 6144, E)
        else:
            add(p + "attn_q.weight", Q4_K, E, 12288)
            add(p + "attn_k.weight", Q4_K, E, 1024)
            add(p + "attn_v.weight", more, E, 1024)
            add(p + "attn_q_norm.weight", F32, 256)
            add(p + "attn_k_norm.weight", F32, 256)
            add(p + "attn_output.weight", Q4_K, 6144, E)
    return dict(CONFIG_27B), ws


def plan27(n_ctx: int, gpu_mem: int | None = None, kv_type: str = "f16", **kw):
    cfg, ws = qwen36_27b_q4km()
    return plan_for(cfg, ws, n_ctx, kv_type, gpu_mem, n_ctx_train=N_CTX_TRAIN, **kw)


def test_27b_tensor_table_matches_the_reference():
    cfg, ws = qwen36_27b_q4km()
    assert len(ws) == 851
    total = sum(nbytes(*t) for t in ws.values())
    assert 16.0e9 < total < 17.2e9  # "about 16.8 GB" with the Q4_K_M mix
    p = plan27(4096)
    assert p.n_weights == 851  # the spec walks every tensor of the table
    aligned = sum(-(-nbytes(*t) // 256) * 256 for t in ws.values())
    assert p.weights == aligned
    assert p.recurrent == 48 * 4 * (3 * 10240 + 48 * 128 * 128)  # ~150 MiB
    assert p.kv_per_token == 16 * 2 * 4 * 256 * 2                # 64 KiB per token
    assert p.kv_cache == 4096 * p.kv_per_token
    # checkpoints live in pinned host memory: nothing on the device, n_snapshots x recurrent on the host
    assert p.snapshots == 0 and p.host_snapshots == 2 * p.recurrent


@pytest.mark.parametrize("kv", ["q8_0", "q4_0", "q8_0,q4_0", "f16,q8_0"])
def test_27b_quantized_kv_cache(kv):
    """KV rows in llama.cpp's block formats (sizes from the gguf package), K and V independent."""
    k, _, v = kv.partition(",")
    row = {t: nbytes(getattr(GGMLQuantizationType, t.upper()), 4 * 256) for t in (k, v or k)}
    p = plan27(262144, 32 * GiB, kv)
    assert p.kv_per_token == 16 * (row[k] + row[v or k])
    assert p.kv_cache == 262144 * p.kv_per_token
    assert p.total == plan27(262144, 32 * GiB).total - 262144 * (16 * 2 * 4 * 256 * 2 - p.kv_per_token)
    assert kv.upper() in "\n".join(p.lines())
    assert not any("not runnable" in n for n in p.notes)  # the CUDA kernels keep all of these


def test_27b_full_context_on_24_and_32_gib():
    """The issue's goal, as the plan states it: all 262,144 tokens with q4_0 KV on 24 GiB, with q8_0 on 32."""
    p24 = plan27(262144, 24 * GiB, "q4_0")
    assert p24.fits and p24.max_ctx == 262144, "\n".join(p24.lines())
    p32 = plan27(262144, 32 * GiB, "q8_0")
    assert p32.fits and p32.max_ctx == 262144, "\n".join(p32.lines())
    assert not plan27(262144, 24 * GiB, "f16").fits
    assert plan27(262144, 24 * GiB, "f32").notes  # f32 KV: planned, CPU-only


def test_a_missing_tensor_is_named():
    cfg, ws = qwen36_27b_q4km()
    del ws["blk.3.attn_k.weight"]
    with pytest.raises(ValueError, match="blk.3.attn_k.weight"):
        plan_for(cfg, ws, 4096)
    cfg, ws = qwen36_27b_q4km()
    del ws["output.weight"]  # optional: tied to token_embd
    assert plan_for(cfg, ws, 4096).n_weights == 850


def test_27b_fits_a_24gib_card_at_a_useful_context():
    p = plan27(32768, 24 * GiB)
    text = "\n".join(p.lines())
    assert p.fits, text
    assert 65536 <= p.max_ctx < 131072, text  # ~5.6 GiB left for KV at 64 KiB/token
    assert f"largest context that fits: {p.max_ctx:,} tokens" in text
    # the largest context really is the boundary
    assert plan27(p.max_ctx, 24 * GiB).fits
    assert not plan27(p.max_ctx + 1, 24 * GiB).fits
    assert p.context == CUDA_CONTEXT_BYTES


def test_27b_on_32gib_and_full_context():
    p32 = plan27(262144, 32 * GiB)
    assert p32.max_ctx > 180000
    p24 = plan27(262144, 24 * GiB)
    assert p24.fits is False
    with pytest.raises(OutOfGPUMemory) as e:
        p24.check()
    msg = str(e.value)
    assert "does not fit" in msg and f"n_ctx={p24.max_ctx}" in msg
    assert e.value.plan.max_ctx == p24.max_ctx


def test_too_small_card_says_nothing_fits():
    p = plan27(4096, 12 * GiB)
    assert p.fits is False and p.max_ctx == 0
    assert "even the weights" in p.error_message()
    assert any("none" in line for line in p.lines())


def test_workspace_is_bounded_and_grows_with_the_batch():
    small = plan27(8192, n_batch=32).workspace["total"]
    big = plan27(8192, n_batch=512).workspace["total"]
    assert small < big < 512 * 2**20


def test_plan_of_a_converted_gguf(gguf_cache):
    path = gguf_cache("qwen35-r2-untied", "f16")
    p = plan(path, 64, gpu_mem_bytes=1 * GiB)
    assert p.fits and p.max_ctx == 4096  # capped at the trained context
    from pyqwen.gguf_file import GGUFFile

    gf = GGUFFile.open(path)
    names = gf.expected_tensors()
    assert p.n_weights == len(names) == len(gf.tensors)  # the fixture has no MTP block
    raw = sum(gf.tensors[n].nbytes for n in names)
    assert raw <= p.weights < raw + 256 * len(names)
    with pytest.raises(ValueError):
        plan(path, 64, kv_type="bf16")


# ---- the planner chooses the KV cache type (issue: the full 262,144 context on one card) --------------

def test_kv_choice_reaches_the_full_context_on_24_and_32_gib():
    from pyqwen.plan_choice import choose_kv_type

    cfg, ws = qwen36_27b_q4km()
    c24 = choose_kv_type(cfg, ws, N_CTX_TRAIN, 24 * GiB, n_ctx_train=N_CTX_TRAIN)
    # f16 and q8_0 do not fit 262,144 tokens next to the 16.5 GB of weights; q8_0 K with q4_0 V does.
    assert not c24.plans["f16"].fits and not c24.plans["q8_0"].fits
    assert c24.kv_type == "q8_0,q4_0" and c24.plan.fits and c24.plan.n_ctx == N_CTX_TRAIN
    # bytes per token from gguf's block sizes (independent of our C++): 16 attention layers x 4 heads x 256
    row = 4 * 256
    assert c24.plan.kv_per_token == 16 * (nbytes(8, row) + nbytes(2, row))  # Q8_0 K + Q4_0 V
    c32 = choose_kv_type(cfg, ws, N_CTX_TRAIN, 32 * GiB, n_ctx_train=N_CTX_TRAIN)
    assert c32.kv_type == "q8_0" and c32.plan.kv_per_token == 16 * 2 * nbytes(8, row)
    # a context that fits f16 keeps f16
    assert choose_kv_type(cfg, ws, 32768, 24 * GiB, n_ctx_train=N_CTX_TRAIN).kv_type == "f16"


def test_kv_choice_says_what_would_fit():
    from pyqwen.plan_choice import choose_kv_type

    cfg, ws = qwen36_27b_q4km()
    c = choose_kv_type(cfg, ws, N_CTX_TRAIN, 18 * GiB, n_ctx_train=N_CTX_TRAIN)
    assert c.kv_type is None
    best = max(p.max_ctx for p in c.plans.values())
    assert 0 < best < N_CTX_TRAIN and c.plans["q4_0"].max_ctx == best
    assert f"the largest context is {best:,} tokens with q4_0" in "\n".join(c.lines())


def test_info_chooses_the_kv_type_for_the_gpu(gguf_cache, capsys):
    """`pyqwen info FILE --gpu-mem SIZE --ctx N`: with a budget between the q4_0 and the f16 plan, the
    printed choice is the most faithful type that fits, and the JSON says the same."""
    import json

    from pyqwen import cli
    from pyqwen.memory_plan import plan

    path = gguf_cache("qwen35-r2-untied", "f16")
    n_ctx = 4096
    f16, q4 = plan(path, n_ctx, "f16").total, plan(path, n_ctx, "q4_0").total
    budget = (f16 + q4) // 2
    assert cli.main(["info", str(path), "--ctx", str(n_ctx), "--gpu-mem", f"{budget}B", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    chosen = data["kv_choice"]["chosen"]
    cands = data["kv_choice"]["candidates"]
    assert not cands["f16"]["fits"] and cands[chosen]["fits"]
    assert chosen == next(k for k in ("f16", "q8_0", "q8_0,q4_0", "q4_0") if cands[k]["fits"])
    assert data["kv_type"] == chosen and data["cuda_plan"]["free"] >= 0
