"""The `pyqwen` command line (pyqwen/cli.py), its bench driver (pyqwen/bench.py) and `--hf` resolution
(pyqwen/hub.py). Runs main([...]) in-process with capsys, and once as a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import pyqwen
from pyqwen.cli import main, parse_size

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses must import the same pyqwen as this process (the installed one in CI, where the source
# folder has no compiled extension): they get its parent on PYTHONPATH and run outside the repo.
PKG_PARENT = Path(pyqwen.__file__).resolve().parents[1]
HF_DIR = ROOT / "tests" / "fixtures" / "hf" / "qwen35-r2-untied"
STATS = re.compile(r"prompt (\d+) tok \(\d+ cached\), prefill [\d.]+ tok/s, generated (\d+) tok, decode [\d.]+ tok/s")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The fixture checkpoint converted through `pyqwen convert` (the delegation is tested on the way)."""
    out = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    assert main(["convert", str(HF_DIR), "-o", str(out), "--type", "f16"]) == 0
    return out


@pytest.fixture(scope="module")
def model(model_path):
    from pyqwen import Model

    return Model.load(model_path, n_ctx=512, threads=1)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- generate ---------------------------------------------------------------------------------------

def test_generate_greedy_matches_api(capsys, model_path, model):
    rc, out, err = run(capsys, "generate", "-m", model_path, "-p", "Hello world, this is", "-n", 12,
                       "--temp", 0, "-t", 1, "--ctx", 512)
    assert rc == 0, err
    expected = "".join(c.text for c in model.generate("Hello world, this is", max_tokens=12, temperature=0))
    assert out == expected and out
    m = STATS.search(err)
    assert m, err
    assert int(m.group(1)) == len(model.tokenize("Hello world, this is"))
    assert int(m.group(2)) <= 12
    assert "Traceback" not in err


def test_generate_sampling_options_and_stop(capsys, model_path, model):
    kw = dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02, presence_penalty=0.5, repetition_penalty=1.1, seed=7)
    expected = "".join(c.text for c in model.generate("Once upon", max_tokens=10, **kw))
    rc, out, err = run(capsys, "generate", "-m", model_path, "-p", "Once upon", "-n", 10, "--temp", 0.7,
                       "--top-k", 20, "--top-p", 0.9, "--min-p", 0.02, "--presence-penalty", 0.5,
                       "--repeat-penalty", 1.1, "--seed", 7, "-t", 1)
    assert rc == 0, err
    assert out == expected
    # a stop string cuts the output where Model.generate cuts it
    stop = expected[3:5] if len(expected) >= 5 else expected
    exp_stop = "".join(c.text for c in model.generate("Once upon", max_tokens=10, stop=[stop], **kw))
    rc, out, err = run(capsys, "generate", "-m", model_path, "-p", "Once upon", "-n", 10, "--temp", 0.7,
                       "--top-k", 20, "--top-p", 0.9, "--min-p", 0.02, "--presence-penalty", 0.5,
                       "--repeat-penalty", 1.1, "--seed", 7, "--stop", stop, "-t", 1)
    assert rc == 0 and out == exp_stop


def test_generate_chat_mode(capsys, model_path, model):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    cg = model.chat(msgs, max_tokens=24, sampling={"temperature": 0})
    parts = list(cg)
    reasoning = "".join(c.reasoning for c in parts)
    content = "".join(c.content for c in parts)
    base = ["generate", "-m", model_path, "--chat", "--system", "Be brief.", "-p", "Hi there", "-n", 24,
            "--temp", 0, "-t", 1]
    rc, out, err = run(capsys, *base, "--hide-reasoning")
    assert rc == 0, err
    assert out.rstrip("\n") == content.rstrip("\n")
    assert STATS.search(err)
    rc, out, _ = run(capsys, *base)  # not a TTY: reasoning inside <think> tags, no ANSI codes
    assert rc == 0 and "\033[" not in out
    if reasoning:
        assert out.startswith("<think>\n" + reasoning)
    assert out.rstrip("\n").endswith(content.rstrip("\n"))
    # --no-think renders the template with enable_thinking=False: no reasoning at all
    cg = model.chat(msgs[1:], max_tokens=16, enable_thinking=False, sampling={"temperature": 0})
    content = "".join(c.content for c in cg)
    rc, out, _ = run(capsys, "generate", "-m", model_path, "--no-think", "-p", "Hi there", "-n", 16, "--temp", 0)
    assert rc == 0 and out.rstrip("\n") == content.rstrip("\n") and "<think>" not in out


def test_reply_printer_dims_reasoning_on_a_tty():
    from pyqwen.cli import ReplyPrinter

    buf = io.StringIO()
    p = ReplyPrinter(buf, color=True)
    p.reasoning("thinking")
    p.content("answer")
    p.finish()
    assert buf.getvalue() == "\033[2mthinking\033[0m\n\nanswer\n"


def test_chat_repl_keeps_history_and_resets(capsys, monkeypatch, model_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nhow are\\\nyou\n/reset\nHello\n/exit\nnever sent\n"))
    rc, out, err = run(capsys, "chat", "-m", model_path, "-n", 6, "--temp", 0, "--no-think", "-t", 1)
    assert rc == 0, err
    turns = [(int(a), int(b)) for a, b in STATS.findall(err)]
    assert len(turns) == 3, err  # "never sent" comes after /exit
    p1, p2, p3 = (t[0] for t in turns)
    assert p2 > p1 + 6       # second turn carries the first exchange (and a two-line message)
    assert p3 == p1          # /reset: the same first message again
    assert "conversation cleared" in err


def test_chat_repl_eof_ends(capsys, monkeypatch, model_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    rc, out, err = run(capsys, "chat", "-m", model_path, "-t", 1)
    assert rc == 0 and out == ""


def test_generate_subprocess_matches_in_process(capsys, model_path):
    argv = ["generate", "-m", str(model_path), "-p", "The quick brown", "-n", 8, "--temp", 0, "-t", 1]
    rc, out, _ = run(capsys, *argv)
    env = dict(os.environ, PYTHONPATH=str(PKG_PARENT))
    r = subprocess.run([sys.executable, "-m", "pyqwen.cli", *map(str, argv)], capture_output=True,
                       cwd=model_path.parent, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == out
    assert STATS.search(r.stderr.decode())


def test_demo_model_default(capsys):
    pytest.importorskip("pyqwen.demo")
    rc, out, err = run(capsys, "generate", "-p", "Hi", "-n", 3, "--temp", 0, "-t", 1)
    assert rc == 0, err
    assert "built-in demo model (" in err and "trained on Python" in err
    assert STATS.search(err)


# ---- info -------------------------------------------------------------------------------------------

def _independent_counts(path):
    r = gguf.GGUFReader(path)
    types: dict[str, list[int]] = {}
    for t in r.tensors:
        c = types.setdefault(t.tensor_type.name, [0, 0, 0])
        c[0] += 1
        c[1] += int(t.n_bytes)
        c[2] += int(np.prod([int(d) for d in t.shape]))
    return types


def _expected_plan(n_ctx, kv_bytes=2):
    cfg = json.loads((HF_DIR / "config.json").read_text())
    n_attn = cfg["layer_types"].count("full_attention")
    n_rec = cfg["layer_types"].count("linear_attention")
    kv = 2 * n_attn * n_ctx * cfg["num_key_value_heads"] * cfg["head_dim"] * kv_bytes
    dk = cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
    dv = cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"]
    conv = (cfg["linear_conv_kernel_dim"] - 1) * (2 * dk + dv)
    rec = n_rec * 4 * (conv + cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"] * cfg["linear_key_head_dim"])
    return kv, rec


def test_info_numbers(capsys, model_path):
    rc, out, err = run(capsys, "info", model_path, "--ctx", 1000, "--json")
    assert rc == 0, err
    d = json.loads(out)
    types = _independent_counts(model_path)
    assert d["types"] == {k: {"tensors": v[0], "bytes": v[1], "params": v[2]} for k, v in types.items()}
    assert d["n_params"] == sum(v[2] for v in types.values())
    assert d["tensor_bytes"] == sum(v[1] for v in types.values())
    assert d["file_size"] == model_path.stat().st_size
    assert d["architecture"] == "qwen35" and d["runnable"]
    assert d["layer_pattern"] == "LLLALLLA"
    kv, rec = _expected_plan(1000)
    mem = d["memory"]
    assert (mem["n_ctx"], mem["kv_cache"], mem["recurrent"]) == (1000, kv, rec)
    assert mem["weights"] == d["tensor_bytes"]  # no MTP block: every tensor is read by the forward pass
    assert mem["total"] == mem["weights"] + kv + rec
    # the human-readable output shows the same numbers
    rc, out, _ = run(capsys, "info", model_path, "--ctx", 1000)
    assert rc == 0
    for k, (n, b, p) in types.items():
        assert re.search(rf"^\s+{k}\s+{n}\s+{p:,}\s+{b:,}\s", out, re.M), out
    assert f"{mem['total']:,} bytes" in out and f"{kv:,} bytes" in out
    assert "[LLLA] x 2" in out and "qwen35" in out


def test_info_gpu_mem_fit(capsys, model_path):
    kv1, rec = _expected_plan(1)
    weights = json.loads((run(capsys, "info", model_path, "--json")[1]))["memory"]["weights"]
    budget = weights + rec + 1000 * kv1 + kv1 // 2  # room for exactly 1000 tokens
    rc, out, _ = run(capsys, "info", model_path, "--ctx", 1000, "--gpu-mem", f"{budget}B", "--kv-type", "f16", "--json")
    d = json.loads(out)
    assert rc == 0 and d["fits"] and d["max_ctx"] == 1000
    rc, out, _ = run(capsys, "info", model_path, "--ctx", 1001, "--gpu-mem", f"{budget}B", "--kv-type", "f16", "--json")
    assert not json.loads(out)["fits"]
    rc, out, _ = run(capsys, "info", model_path, "--ctx", 1001, "--gpu-mem", f"{budget}B", "--kv-type", "f16")
    assert "fits in" in out and ": no (short by" in out and "largest context that fits" in out and "1,000 tokens" in out
    rc, out, _ = run(capsys, "info", model_path, "--gpu-mem", "24GiB")
    assert ": yes" in out and "4,096 tokens (the whole trained context)" in out
    rc, out, _ = run(capsys, "info", model_path, "--gpu-mem", "100KiB")
    assert "none (the weights alone do not fit)" in out


def test_parse_size():
    assert parse_size("24GiB") == 24 * 2**30 == parse_size("24G") == parse_size("24")
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("16000MiB") == 16000 * 2**20
    assert parse_size("1.5 GiB") == 3 * 2**29


def test_info_without_extension(model_path):
    # info must not need pyqwen._core: run it where importing the extension fails
    code = ("import sys\n"
            "sys.modules['pyqwen._core'] = None  # makes `from . import _core` raise ImportError\n"
            "from pyqwen.cli import main\n"
            f"sys.exit(main(['info', {str(model_path)!r}, '--gpu-mem', '1GiB']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=Path(model_path).parent,
                       env=dict(os.environ, PYTHONPATH=str(PKG_PARENT)), timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert b"largest context that fits" in r.stdout


# ---- bench ------------------------------------------------------------------------------------------

def test_bench_table(capsys, model_path):
    rc, out, err = run(capsys, "bench", "-m", model_path, "-p", 8, "-n", 4, "-r", 2, "-t", 1)
    assert rc == 0, err
    lines = out.strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["model", "size", "params", "backend", "threads", "test", "t/s"]
    assert re.fullmatch(r"\|( -+:? \|)+", lines[1].replace("| -", "| -"))
    table = [ln for ln in lines[2:] if ln.startswith("|")]
    rows = {c[5]: c for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in table)}
    assert set(rows) == {"pp8", "tg4"}
    for r in rows.values():
        assert r[0] == "qwen35 679K F16" and r[1] == f"{_bytes_mib(model_path):.2f} MiB" and r[2] == "0.68 M"
        assert r[3] == "CPU" and r[4] == "1"
        mean, std = (float(x) for x in r[6].split("±"))
        assert mean > 0 and std >= 0
    # Achieved bandwidth of decode: at least every weight matrix but the (gathered) embedding per token.
    m = re.search(r"tg4 \(CPU\): ([\d.]+) GB/s achieved \(([\d.]+) MB moved per token", out)
    assert m, out
    streamed = sum(v[1] for k, v in _independent_counts(model_path).items())
    embd = gguf.GGUFReader(model_path)
    embd_bytes = next(int(t.n_bytes) for t in embd.tensors if t.name == "token_embd.weight")
    assert float(m.group(2)) * 1e6 >= (streamed - embd_bytes) * 0.999 - 500  # printed to 1 kB
    tg = float(rows["tg4"][6].split("±")[0])
    assert abs(float(m.group(1)) - float(m.group(2)) * 1e6 * tg / 1e9) <= 0.06 + 0.01 * float(m.group(1))


def _bytes_mib(path):
    return sum(v[1] for v in _independent_counts(path).values()) / 2**20


def test_bench_peer_llama_cpp(capsys, model_path):
    from pyqwen.bench import llama_cpp_available

    rc, out, err = run(capsys, "bench", "-m", model_path, "-p", 8, "-n", 4, "-r", 1, "-t", 1, "--peer-llama-cpp")
    assert rc == 0, err
    if llama_cpp_available() is not None:
        assert "llama.cpp not measured" in out
        return
    head = [c.strip() for c in out.splitlines()[0].strip("|").split("|")]
    assert head[-1] == "pyqwen/llama.cpp"
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in out.strip().splitlines()[2:]
            if ln.startswith("|")]
    assert [(r[3], r[5]) for r in rows] == [("CPU (pyqwen)", "pp8"), ("CPU (llama.cpp)", "pp8"),
                                           ("CPU (pyqwen)", "tg4"), ("CPU (llama.cpp)", "tg4")]
    assert float(rows[0][-1]) > 0 and rows[1][-1] == ""


def test_bench_json_and_api(capsys, model_path):
    rc, out, _ = run(capsys, "bench", "-m", model_path, "-p", 4, "-n", 0, "-r", 1, "-t", 1, "-o", "json")
    d = json.loads(out)
    assert rc == 0 and [r["test"] for r in d["rows"]] == ["pp4"] and d["model"]["n_params"] == 679248


# ---- --hf -------------------------------------------------------------------------------------------

def _fake_cache(root: Path, repo: str, files: dict[str, bytes | Path]) -> Path:
    rdir = root / "hub" / ("models--" + repo.replace("/", "--"))
    snap = rdir / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    for name, data in files.items():
        f = snap / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, f)
        else:
            f.write_bytes(data)
    (rdir / "refs").mkdir(parents=True, exist_ok=True)
    (rdir / "refs" / "main").write_text(snap.name)
    return snap


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_hub_resolution_offline(offline_hf):
    from pyqwen.hub import HubError, resolve_hf

    snap = _fake_cache(offline_hf, "owner/Model-GGUF", {
        "Model-Q4_K_M.gguf": b"a", "Model-UD-Q4_K_XL.gguf": b"b", "Model-Q4_K_M-00001-of-00002.gguf": b"c",
        "Model-Q4_K_M-00002-of-00002.gguf": b"d", "Q8_0/Model-Q8_0-00001-of-00002.gguf": b"e",
        "Q8_0/Model-Q8_0-00002-of-00002.gguf": b"f", "mmproj-Q4_K_M.gguf": b"g", "README.md": b"h",
        "BF16/Model-BF16-00001-of-00003.gguf": b"i", "BF16/Model-BF16-00003-of-00003.gguf": b"j"})
    r = lambda s: resolve_hf(s).resolve()
    assert r("owner/Model-GGUF:Q4_K_M") == (snap / "Model-Q4_K_M.gguf").resolve()   # single file preferred
    assert r("owner/Model-GGUF:q4_k_m") == (snap / "Model-Q4_K_M.gguf").resolve()   # case-insensitive
    assert r("owner/Model-GGUF") == (snap / "Model-Q4_K_M.gguf").resolve()          # default Q4_K_M
    assert r("owner/Model-GGUF:Q4_K_XL") == (snap / "Model-UD-Q4_K_XL.gguf").resolve()
    assert r("owner/Model-GGUF:Q8_0") == (snap / "Q8_0/Model-Q8_0-00001-of-00002.gguf").resolve()
    with pytest.raises(HubError, match="ambiguous"):
        resolve_hf("owner/Model-GGUF:Q4_K")
    with pytest.raises(HubError, match="no GGUF file matches quant 'IQ2_XXS'"):
        resolve_hf("owner/Model-GGUF:IQ2_XXS")
    with pytest.raises(HubError, match="incomplete"):
        resolve_hf("owner/Model-GGUF:BF16")
    with pytest.raises(HubError, match="not in the Hugging Face cache"):
        resolve_hf("owner/Other-GGUF:Q4_K_M")
    with pytest.raises(HubError, match="OWNER/REPO"):
        resolve_hf("not-a-repo")


def test_hub_multipart_downloads_every_part(offline_hf):
    from pyqwen.hub import select_gguf

    files = ["x/M-Q6_K-00002-of-00003.gguf", "x/M-Q6_K-00001-of-00003.gguf", "x/M-Q6_K-00003-of-00003.gguf",
             "M-Q5_K_M.gguf"]
    assert select_gguf(files, "q6_k") == sorted(files[:3])
    assert select_gguf(["only.gguf"], None) == ["only.gguf"]


def test_cli_hf_offline(capsys, offline_hf, model_path):
    _fake_cache(offline_hf, "owner/Tiny-GGUF", {"Tiny-F16.gguf": model_path, "Tiny-Q8_0.gguf": b"GGUFjunk" * 8})
    rc, out, err = run(capsys, "info", "--hf", "owner/Tiny-GGUF:F16", "--json")
    assert rc == 0, err
    assert json.loads(out)["n_params"] == 679248
    rc, out, err = run(capsys, "generate", "--hf", "owner/Tiny-GGUF:f16", "-p", "Hi", "-n", 3, "--temp", 0, "-t", 1)
    assert rc == 0 and STATS.search(err)
    rc, out, err = run(capsys, "generate", "--hf", "owner/Tiny-GGUF:Q2_K", "-p", "Hi")
    assert rc == 2 and "no GGUF file matches quant 'Q2_K'" in err and "Traceback" not in err
    rc, out, err = run(capsys, "info", "--hf", "owner/Tiny-GGUF:Q8_0")  # a corrupt file in the cache
    assert rc == 2 and err.count("\n") == 1


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["generate", "-m", "/nonexistent/x.gguf", "-p", "hi"], "no such model file"),
    (["info", "/nonexistent/x.gguf"], "no such model file"),
    (["generate", "-m", "{notgguf}", "-p", "hi"], "not a GGUF file"),
    (["info", "{notgguf}"], "not a GGUF file"),
    (["bench", "-m", "{notgguf}", "-p", "4", "-n", "1"], "not a GGUF file"),
    (["generate", "-m", "{model}", "-p", "hi", "-n", "abc"], "expected an integer"),
    (["generate", "-m", "{model}", "-p", "hi", "--top-p", "2"], "top_p"),
    (["generate", "-m", "{model}", "-p", "hi", "--temp", "nan"], "finite"),
    (["generate", "-m", "{model}", "-p", "hi", "--ctx", "0"], ">= 1"),
    (["generate", "-m", "{model}", "-p", "hi " * 50, "--ctx", "16"], "does not fit"),
    (["generate", "-m", "{model}", "-m", "{model}", "--hf", "a/b", "-p", "hi"], "not both"),
    (["generate", "-m", "{model}", "-p", ""], "empty"),
    (["info", "{model}", "--gpu-mem", "lots"], "size"),
    (["bench", "-m", "{model}", "-p", "0", "-n", "0"], "-p > 0"),
    (["bench", "-m", "{model}", "-r", "0"], ">= 1"),
    (["generate", "-m", "{model}", "-p", "hi", "--backend", "tpu"], "invalid choice"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_input_exit_2(capsys, tmp_path, model_path, argv, needle):
    notgguf = tmp_path / "notes.gguf"
    notgguf.write_text("this is not a gguf file at all, just text\n")
    argv = [a.format(model=model_path, notgguf=notgguf) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse rejects the value before main() runs a command
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (argv, err)
    assert needle in err, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


def test_help_texts(capsys):
    for cmd in ([], ["generate"], ["chat"], ["info"], ["bench"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("generate", "chat", "info", "bench", "convert", "--hf", "--gpu-mem", "--peer-llama-cpp", "--no-think"):
        assert word in out
