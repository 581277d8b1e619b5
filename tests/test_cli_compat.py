"""llama.cpp's command-line spellings (issue 14, item 6): what users type from habit either means the same
thing in pyqwen or is refused by its own name, never turned into another flag's error by argparse's
merging of short options. Also `-m` / positional models, `python -m pyqwen`, the converter's one-line
errors and llama.cpp's type names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyqwen.cli import build_parser, main, model_arg, parse_args

ROOT = Path(__file__).resolve().parents[1]
HF_DIR = ROOT / "tests" / "fixtures" / "hf" / "qwen35-r2-untied"


def parse(*argv):
    return parse_args(build_parser(), list(argv))


def rejected(capsys, *argv) -> str:
    """The one-line error (exit 2) argparse or main() gives for argv."""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


def test_llama_cpp_spellings_mean_the_same():
    a = parse("generate", "-m", "x.gguf", "-ngl", "99", "-sys", "be terse", "-fa", "-p", "hi", "--ctx-size", "512",
              "--temperature", "0.3", "-n", "7", "-c", "600")
    assert (a.n_gpu_layers, a.system, a.prompt, a.temp, a.n_predict, a.ctx) == (99, "be terse", "hi", 0.3, 7, 600)
    a = parse("chat", "-hf", "unsloth/Qwen3.6-27B-GGUF:Q4_K_M", "-fa", "on", "--n-gpu-layers", "0", "--jinja",
              "--system-prompt", "-starts with a dash", "-ctk", "f32")
    assert (a.hf, a.n_gpu_layers, a.system, a.kv_type) == ("unsloth/Qwen3.6-27B-GGUF:Q4_K_M", 0, "-starts with a dash",
                                                            "f32")
    a = parse("generate", "-n8", "-c4096", "--ctx-size=256", "-p", "x")   # values attached, as argparse allows
    assert (a.n_predict, a.ctx) == (8, 256)
    a = parse("serve", "-ngl", "99", "--ctx-size", "2048", "model.gguf")
    assert (a.n_gpu_layers, a.ctx, model_arg(a)) == (99, 2048, "model.gguf")


def test_gpu_layers_choose_the_backend(capsys):
    from pyqwen.cli import backend_arg

    assert backend_arg(parse("generate", "-ngl", "0", "-p", "x")) == "cpu"
    assert backend_arg(parse("generate", "-ngl", "99", "-p", "x")) == "auto"
    assert capsys.readouterr().err == ""
    assert backend_arg(parse("bench", "-ngl", "20", "--backend", "cuda")) == "cuda"
    assert "GPU or none" in capsys.readouterr().err
    with pytest.raises(ValueError, match="contradicts"):
        backend_arg(parse("generate", "-ngl", "0", "--backend", "cuda", "-p", "x"))


@pytest.mark.parametrize("argv, needle", [
    (["generate", "-xyz", "-p", "hi"], "unknown option -xyz"),
    (["generate", "-nkvo", "-p", "hi"], "unknown option -nkvo"),       # not `-n kvo`
    (["generate", "-sm", "row", "-p", "hi"], "unknown option -sm"),    # not `-s m` (a seed error)
    (["generate", "-m", "a.gguf", "b.gguf", "-p", "hi"], "two models given"),
    (["info", "-hf"], "--hf: expected one argument"),                   # not help with exit 0
])
def test_unknown_or_incomplete_options_are_named(capsys, argv, needle):
    assert needle in rejected(capsys, *argv)


def test_model_as_option_or_positional_everywhere(capsys, tmp_path):
    for cmd in ("generate", "chat", "info", "bench", "serve"):
        assert model_arg(parse(cmd, "-m", "a.gguf")) == "a.gguf"
        assert model_arg(parse(cmd, "a.gguf")) == "a.gguf"
    missing = tmp_path / "missing.gguf"
    assert "no such model file" in rejected(capsys, "info", "-m", str(missing))
    assert "no such model file" in rejected(capsys, "info", str(missing))


def test_python_dash_m_pyqwen_is_the_command():
    env = dict(os.environ, PYTHONSAFEPATH="1")
    r = subprocess.run([sys.executable, "-P", "-m", "pyqwen", "info", "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "--gpu-mem" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-P", "-m", "pyqwen", "generate", "-xyz"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "unknown option -xyz" in r.stderr, r.stderr


# ---- converter and quantizer -----------------------------------------------------------------------------

def _copy_checkpoint(dst: Path) -> Path:
    import shutil

    shutil.copytree(HF_DIR, dst)
    return dst


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "is truncated"),
    ("config", "config.json is not valid JSON"),
    ("config_list", "config.json must hold a JSON object"),
])
def test_convert_bad_checkpoint_is_one_line(capsys, tmp_path, damage, needle):
    src = _copy_checkpoint(tmp_path / "ckpt")
    if damage == "truncate":
        f = src / "model.safetensors"
        os.truncate(f, f.stat().st_size - 100)
    elif damage == "config":
        (src / "config.json").write_text("{bad json")
    else:
        (src / "config.json").write_text("[1, 2]")
    err = rejected(capsys, "convert", str(src), "-o", str(tmp_path / "out.gguf"))
    assert needle in err and err.startswith("pyqwen convert: error:"), err
    assert not (tmp_path / "out.gguf").exists()


def test_convert_missing_output_folder_is_named(capsys, tmp_path):
    err = rejected(capsys, "convert", str(HF_DIR), "-o", str(tmp_path / "nodir" / "out.gguf"))
    assert f"the output folder {tmp_path / 'nodir'} does not exist" in err and ".tmp" not in err, err


def test_llama_cpp_type_names_and_positional_quantize_type(capsys, tmp_path):
    import gguf

    f16 = tmp_path / "m.gguf"
    assert main(["convert", str(HF_DIR), "--outtype", "F16", "--outfile", str(f16)]) == 0
    q = tmp_path / "q.gguf"
    assert main(["quantize", str(f16), str(q), "Q8_0"]) == 0            # llama-quantize's order
    q2 = tmp_path / "q2.gguf"
    assert main(["quantize", str(f16), str(q2), "--type", "q8_0"]) == 0
    capsys.readouterr()
    # The same file either way, and the types are what the names say (read by the gguf package).
    assert q.read_bytes() == q2.read_bytes()
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(q).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(f16).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert "two types given" in rejected(capsys, "quantize", str(f16), str(q), "q8_0", "--type", "q4_k_m")


def test_version_names_the_build(capsys):
    import importlib.metadata
    import importlib.util

    from pyqwen import _core

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"pyqwen {importlib.metadata.version('pyqwen')}"
    kernels = next(ln for ln in lines if ln.startswith("CPU kernels: "))
    compiled = kernels[len("CPU kernels: "):].split(" (")[0].split(", ")
    assert "ref" in compiled and _core.simd_backend() in compiled
    assert f"in use on this CPU: {_core.simd_backend()}" in kernels
    cuda = next(ln for ln in lines if ln.startswith("CUDA: "))
    if importlib.util.find_spec("pyqwen._cuda") is None:
        assert "not built" in cuda
    else:
        assert "sm_" in cuda and "cuBLAS" in cuda
