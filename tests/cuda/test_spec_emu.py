"""Speculative decoding on the CUDA backend (cuda/model/model.cu), run on the CPU by the emulator: the MTP
head against the CPU backend, verification rows against one-token steps, rollback against feeding only
the kept tokens, and the greedy speculative loop against plain device decoding.

Model: tests/fixtures/hf/qwen35-r2-untied with a random MTP head (tests/mtp_fixture.py), converted to F16
(8 layers: 6 DeltaNet + 2 attention, hidden 64, vocab 2432). F16 weights keep the activations in float on
the matvec path, so the CUDA-vs-CPU differences are only summation orders (and the F16 KV cache).

What is exact on the device, and why (asserted with np.array_equal):
- a verification of n <= 16 tokens gives, row for row, the logits of feeding the tokens one at a time
  (F16 and Q8_0 weights): the matmuls go through the multi-token matvec (per token the arithmetic of a
  one-token launch), the DeltaNet and attention layers token by token through the decode kernels;
- verify + rollback(n_keep) leaves the state of feeding the kept tokens one at a time (the delta rule is
  replayed by the decode kernel from the logged rows), MTP cache and input hidden state included;
- hence greedy speculative decoding gives the tokens of plain device decoding.
Against the CPU backend (tolerances near the observed errors, see each test) and against feeding the
kept tokens as one batch (the chunked prefill kernels sum in another order), the results are close.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mtp_fixture import with_mtp
from pq_testutil import check_rollback_refusals, corrupted_truth_draft
from test_model_emu import load_cuda_core
from test_server_emu import model_on

PROMPT = [1, 5, 17, 300, 42, 7, 99, 1000]


@pytest.fixture(scope="module")
def mtp_f16(tmp_path_factory):
    from pyqwen.convert import convert

    root = tmp_path_factory.mktemp("mtp_cuda")
    return convert(with_mtp("qwen35-r2-untied", root / "hf"), root / "mtp-f16.gguf", "f16", progress=False)


@pytest.fixture(scope="module")
def cpu(mtp_f16):
    import pyqwen

    return pyqwen.Model.load(str(mtp_f16), n_ctx=64, backend="cpu", threads=1, spec="mtp")


@pytest.fixture(scope="module")
def core(emu_ops, mtp_f16):
    return load_cuda_core(emu_ops, mtp_f16, n_batch=8, n_ctx=32)


@pytest.fixture(scope="module")
def prefilled(core):
    """fresh(mtp=True) -> a state holding PROMPT (restored from one device snapshot: the emulator takes
    seconds per forward, and every test starts from the same prompt)."""
    snaps = {}
    for mtp in (False, True):
        st = core.new_state(32, mtp=mtp)
        core.forward(st, PROMPT, "none", 256)
        snaps[mtp] = core.snapshot(st, with_kv=True)

    def fresh(mtp: bool = True):
        st = core.new_state(32, mtp=mtp)
        core.restore(st, snaps[mtp])
        return st

    return fresh


def feed_steps(core, st, ids):
    """Tokens one at a time (the decode body): the logits of each."""
    return np.stack([core.forward(st, [t], "last", 256) for t in ids])


# ---- the MTP head against the CPU backend ---------------------------------------------------------------

def test_the_mtp_head_is_loaded_and_planned(core, mtp_f16):
    from pyqwen.gguf_file import GGUFFile
    from pyqwen.memory_plan import plan

    gf = GGUFFile.open(mtp_f16)
    assert gf.mtp_problem() is None and core.has_mtp and core.speculation
    p = plan(gf, 32, n_batch=8)
    assert p.config["n_nextn"] == 1 and core.weight_bytes == p.weights and core.workspace == p.workspace
    # states: with the MTP cache, the spec's MTP K/V rows and input hidden state are in the plan's KV
    # cache and recurrent state; without it they are not allocated
    with_mtp, plain = core.new_state(32, mtp=True), core.new_state(32)
    assert with_mtp.has_mtp and not plain.has_mtp
    hp = gf.hparams
    mtp_kv = 32 * 2 * hp.n_head_kv * hp.head_dim * 2
    assert with_mtp.nbytes - plain.nbytes >= mtp_kv + 4 * hp.n_embd
    assert 0 <= with_mtp.nbytes - (p.recurrent + p.kv_cache) < 256 * (3 + 2 * p.n_attn_layers) + 4 * hp.n_embd
    # the verification log: the spec's verify_rollback_bytes for 16 tokens (model_spec.h), carved aligned
    C = 2 * hp.ssm_k_heads * hp.ssm_k_dim + hp.ssm_v_heads * hp.ssm_v_dim
    rec_layers = hp.recurrent.count(True)
    spec_bytes = p.recurrent + 16 * (rec_layers * (2 * C + 2 * hp.ssm_v_heads) * 4 + hp.n_embd * 4)
    assert spec_bytes <= p.verify_log < spec_bytes + 256 * (2 + 4 * rec_layers)
    assert p.total == (p.weights + p.kv_cache + p.recurrent + p.snapshots + p.verify_log + p.workspace["total"]
                       + p.context)


def test_eval_mtp_and_the_draft_chain_match_the_cpu(core, cpu):
    """eval_mtp (prefill kernels: chunked DeltaNet, prefill attention, over a chunk of 8 and one of 2)
    against the CPU's: observed max |diff| 1.9e-3 on logits of std ~1 (summation orders, and the device's
    F16 KV cache against the F32 one of the CPU's eval_mtp); asked 5e-3. mtp_draft (decode kernels)
    against the CPU's chain: observed 2.6e-4, asked 2e-3."""
    ids = PROMPT + [3, 9]
    ev, ref = core.eval_mtp(ids), cpu.eval_mtp(ids)
    assert ev.shape == ref.shape == (len(ids) - 1, cpu.n_vocab) and ev.dtype == np.float32
    np.testing.assert_allclose(ev, ref, atol=5e-3, rtol=0)
    assert (ev.argmax(1) == ref.argmax(1)).all()

    gs, cs = core.new_state(32, mtp=True), cpu.new_state(32)
    core.forward(gs, ids[:4], "none", 256)
    cpu.forward(cs, ids[:4], "none")
    chain, want = [], []
    for t in ids[4:6]:  # first step: eval_mtp's row 3; then the chain on the MTP's own hidden state
        chain.append(core.mtp_draft(gs, t))
        want.append(cpu.mtp_draft(cs, t))
    np.testing.assert_allclose(chain[0], ev[3], atol=5e-3, rtol=0)
    np.testing.assert_allclose(np.array(chain), np.array(want), atol=2e-3, rtol=0)
    assert not np.allclose(chain[1], ev[4], atol=5e-2)  # a chained step is not a row of eval_mtp
    # a forward restarts the chain from the main model's hidden state
    core.forward(gs, [ids[4]], "none", 256)
    np.testing.assert_allclose(core.mtp_draft(gs, ids[5]), ev[4], atol=5e-3, rtol=0)


# ---- verification and rollback on the device --------------------------------------------------------------

def test_verification_rows_are_one_token_steps_bit_for_bit(core, cpu, prefilled):
    """10 tokens: two multi-token matvec launches (8 + 2 tokens) against ten one-token ones. Against the
    CPU's verification: observed max |diff| 2e-4, asked 2e-3."""
    toks = [5, 17, 900, 2001, 3, 77, 1500, 8, 9, 2300]
    a, b = prefilled(), prefilled()
    rows = core.verify(a, toks)
    assert rows.shape == (len(toks), core.config["n_vocab"]) and a.pos == len(PROMPT) + len(toks)
    assert np.array_equal(rows, feed_steps(core, b, toks))
    # the MTP cache and input caught up exactly as the steps did
    assert np.array_equal(core.mtp_draft(a, 4), core.mtp_draft(b, 4))
    # greedy choices on the device: a draft's argmax (the chain's second step), the rows' argmax
    assert core.mtp_draft(a, 5, argmax=True) == int(core.mtp_draft(b, 5).argmax())
    c = prefilled()
    assert core.verify(c, toks[:3], argmax=True).tolist() == rows[:3].argmax(1).tolist()
    cs = cpu.new_state(32)
    cpu.forward(cs, PROMPT, "none")
    np.testing.assert_allclose(rows[:4], cpu.verify(cs, toks[:4]), atol=2e-3, rtol=0)


def test_quantized_verification_rows_are_one_token_steps(emu_ops, mtp_f16):
    """The same on Q8_0 weights (the quantized matvec: activations to Q8_1 per token), 9 tokens (8 + 1
    per launch), then a rollback into the middle of them."""
    from pyqwen.convert import convert

    q8 = convert(mtp_f16.parent / "hf", mtp_f16.parent / "mtp-q8_0.gguf", "q8_0", progress=False)
    core = load_cuda_core(emu_ops, q8, n_batch=8, n_ctx=24)
    toks = [5, 17, 900, 2001, 3, 77, 1500, 8, 9]
    a, b = core.new_state(24, mtp=True), core.new_state(24, mtp=True)
    for s in (a, b):
        core.forward(s, PROMPT[:3], "none", 256)
    rows = core.verify(a, toks)
    assert np.array_equal(rows, feed_steps(core, b, toks))
    core.rollback(a, 4)
    c = core.new_state(24, mtp=True)
    core.forward(c, PROMPT[:3], "none", 256)
    feed_steps(core, c, toks[:4])
    assert np.array_equal(core.forward(a, [6], "last", 256), core.forward(c, [6], "last", 256))


def test_rollback_is_feeding_only_the_kept_tokens(core, prefilled):
    batch, keep, after = [11, 400, 7, 1999, 64], 2, [33, 1024]
    a, b, c = prefilled(), prefilled(), prefilled()
    core.verify(a, batch)
    core.rollback(a, keep)
    feed_steps(core, b, batch[:keep])          # one at a time: bit-identical
    core.forward(c, batch[:keep], "none", 256)  # one batch (chunked prefill kernels): close
    assert a.pos == b.pos == c.pos == len(PROMPT) + keep
    # the next steps see all of the state: SSM, conv window, KV rows, the MTP's cache and input
    da, db, dc = (core.mtp_draft(s, after[0]) for s in (a, b, c))
    la, lb, lc = (core.forward(s, after, "all", 256) for s in (a, b, c))
    assert np.array_equal(da, db) and np.array_equal(la, lb)
    # observed max |diff| 1.3e-4 / 3.2e-4 (chunked vs recurrent DeltaNet sums, prefill vs decode
    # attention, batched vs one-row MTP catch-up); asked 2e-3
    np.testing.assert_allclose(la, lc, atol=2e-3, rtol=0)
    np.testing.assert_allclose(da, dc, atol=2e-3, rtol=0)


def test_verify_rollback_and_mtp_cache_with_a_quantized_kv_cache(core):
    """q8_0 K, q4_0 V in the main and the MTP caches: a verification's rows are one-token steps bit for
    bit, and a rollback leaves the state (MTP cache included) of feeding the kept tokens."""
    kv, toks = "q8_0,q4_0", [5, 17, 900, 2001, 3]
    a, b = core.new_state(32, kv, mtp=True), core.new_state(32, kv, mtp=True)
    for s in (a, b):
        core.forward(s, PROMPT[:4], "none", 256)
    assert a.kv_type == kv and a.has_mtp
    rows = core.verify(a, toks)
    assert np.array_equal(rows, feed_steps(core, b, toks[:5]))
    c = core.new_state(32, kv, mtp=True)
    core.forward(c, PROMPT[:4], "none", 256)
    core.verify(c, toks)
    core.rollback(c, 2)
    d = core.new_state(32, kv, mtp=True)
    core.forward(d, PROMPT[:4], "none", 256)
    feed_steps(core, d, toks[:2])
    assert np.array_equal(core.mtp_draft(c, 8), core.mtp_draft(d, 8))
    assert np.array_equal(core.forward(c, [6], "last", 256), core.forward(d, [6], "last", 256))


def test_rollback_on_states_without_an_mtp_cache(core, prefilled):
    a, b = prefilled(False), prefilled(False)
    core.verify(a, [3, 4, 5])
    core.rollback(a, 1)
    feed_steps(core, b, [3])
    assert np.array_equal(core.forward(a, [6], "last", 256), core.forward(b, [6], "last", 256))
    core.verify(a, [7, 8])
    core.rollback(a, 2)  # everything kept: nothing replayed
    feed_steps(core, b, [7, 8])
    assert np.array_equal(core.forward(a, [9], "last", 256), core.forward(b, [9], "last", 256))


def test_speculation_errors_are_the_cpus(core, cpu, prefilled):
    gs = prefilled()
    check_rollback_refusals(core, gs)
    other = prefilled()
    with pytest.raises(ValueError, match="verify forward"):
        core.rollback(other, 1)  # the log belongs to gs
    core.rollback(gs, 2)
    with pytest.raises(ValueError, match="verify forward"):
        core.rollback(gs, 1)  # one rollback per verification
    core.verify(gs, [1, 2])
    core.forward(gs, [3], "none", 256)
    with pytest.raises(ValueError, match="verify forward"):
        core.rollback(gs, 1)  # a forward after it: the log is stale
    with pytest.raises(ValueError, match="at most 16"):
        core.verify(gs, list(range(17)))
    with pytest.raises(IndexError):
        core.verify(gs, [core.config["n_vocab"]])
    with pytest.raises(ValueError, match="make it with mtp=True"):
        core.mtp_draft(core.new_state(8), 1)
    with pytest.raises(ValueError, match="at least one token"):
        core.mtp_draft(core.new_state(8, mtp=True), 1)
    with pytest.raises(IndexError):
        core.mtp_draft(gs, -1)
    with pytest.raises(ValueError, match="at least two"):
        core.eval_mtp([1])
    snap = core.snapshot(gs)
    with pytest.raises(ValueError, match="MTP"):
        core.restore(core.new_state(32), snap)
    # the CPU says the same
    cs = cpu.new_state(32)
    cpu.forward(cs, PROMPT, "none")
    with pytest.raises(ValueError, match="verify forward"):
        cpu.rollback(cs, 1)


def test_snapshot_carries_the_mtp_cache_and_input(core, prefilled):
    a = prefilled()
    snap, snap_kv = core.snapshot(a), core.snapshot(a, with_kv=True)
    want = core.mtp_draft(a, 7)
    core.forward(a, [1, 2, 3], "none", 256)
    core.restore(a, snap_kv)
    assert np.array_equal(core.mtp_draft(a, 7), want)
    core.forward(a, [1, 2, 3], "none", 256)
    core.restore(a, snap)  # recurrent part (mtp_h with it); rows < pos of both caches were not touched
    assert np.array_equal(core.mtp_draft(a, 7), want)


def test_a_file_without_a_head_loads_without_one(emu_ops, gguf_cache):
    core = load_cuda_core(emu_ops, gguf_cache("qwen35-r2-untied", "f16"), n_batch=4, n_ctx=8)
    assert not core.has_mtp and core.speculation  # lookup drafts still verify
    with pytest.raises(ValueError, match="no MTP head"):
        core.new_state(8, mtp=True)
    with pytest.raises(ValueError, match="no MTP head"):
        core.eval_mtp([1, 2, 3])


# ---- the speculative loop: plain device decoding's tokens ------------------------------------------------

class OracleDrafter:
    """Drafts the plain greedy continuation, corrupted at random positions (every accept length)."""

    truth: list[int] = []
    prompt_len = 0
    rng = random.Random(0)

    @classmethod
    def make(cls, base):
        class Oracle(base):
            def propose(self, token, history, limit):
                return corrupted_truth_draft(cls.truth, len(history) - cls.prompt_len, limit, cls.rng, 5)

        return Oracle


class HostRows:
    """Counts the logits rows that cross from the backend to the host, per entry point."""

    def __init__(self, core):
        self.rows = {"forward": 0, "verify": 0, "mtp_draft": 0}
        for name in self.rows:
            real = getattr(core, name)

            def wrapped(*a, _real=real, _name=name, **kw):
                out = _real(*a, **kw)
                if isinstance(out, np.ndarray) and out.dtype == np.float32:
                    self.rows[_name] += 1 if out.ndim == 1 else out.shape[0]
                return out

            setattr(core, name, wrapped)


def test_greedy_speculative_output_is_plain_device_decoding(emu_ops, mtp_f16, monkeypatch):
    from pyqwen.speculative import policy
    from pyqwen.speculative.policy import SpecConfig

    core = load_cuda_core(emu_ops, mtp_f16, n_batch=8, n_ctx=40)
    m = model_on(core, mtp_f16, 40)
    m._set_spec(SpecConfig(mode="mtp", draft=2))
    assert m.mtp_states and m.speculation
    host = HostRows(core)
    prompt = [int(x) for x in np.random.default_rng(1).integers(0, 2400, 5)]
    g0 = m.generate(prompt, max_tokens=12, spec="off", temperature=0)
    list(g0)
    assert g0.on_device  # plain decoding chose its tokens on the device (decode())
    # the real MTP drafter (chained drafts; random weights: mostly rejected). Greedy: every choice is
    # made on the device (drafts, acceptance), only the prompt's last logits row reached the host.
    host.rows.update(forward=0, verify=0, mtp_draft=0)
    g1 = m.generate(prompt, max_tokens=6, temperature=0)
    list(g1)
    assert g1.stats.spec == "mtp" and g1.stats.verify_steps > 0 and g1.stats.draft_tokens > 0
    assert g1.tokens == g0.tokens[:6] and g1.finish_reason == "length"
    assert host.rows == {"forward": 1, "verify": 0, "mtp_draft": 0}, host.rows
    # drafts that are often right, at every accept length
    OracleDrafter.truth, OracleDrafter.prompt_len = list(g0.tokens), len(prompt)
    monkeypatch.setattr(policy, "Drafter", OracleDrafter.make(policy.Drafter))
    g2 = m.generate(prompt, max_tokens=12, temperature=0)
    list(g2)
    monkeypatch.undo()
    assert (g2.tokens, g2.text, g2.finish_reason) == (g0.tokens, g0.text, g0.finish_reason)
    accepted = g2.stats.accepted_at
    assert len(accepted) >= 3 and all(v > 0 for v in accepted[:3]), accepted
    assert g2.stats.accepted_tokens < g2.stats.draft_tokens  # and rejections
    # a penalty needs the history: the host path (rows to the host, the host sampler), the same tokens
    # as plain decoding with that penalty
    g3 = m.generate(prompt, max_tokens=5, spec="off", temperature=0, repetition_penalty=1.5)
    list(g3)
    host.rows.update(forward=0, verify=0, mtp_draft=0)
    g4 = m.generate(prompt, max_tokens=5, temperature=0, repetition_penalty=1.5)
    list(g4)
    assert g4.tokens == g3.tokens and g4.stats.verify_steps > 0
    # (greedy drafts ignore penalties wherever they are made: theirs stay on the device)
    assert host.rows["verify"] > 0 and host.rows["mtp_draft"] == 0
