"""benchmarks/gpu_proof.sh (the CUDA backend's first run on a GPU) rehearsed on the CPU emulator.

GPU_PROOF_EMULATE=1 replaces the build step by the emulated module (tests/cuda/emu_build.py), which
benchmarks/gpu_proof_emu/sitecustomize.py hands out as pyqwen._cuda; every other step runs its real command
(pyqwen --version, the logits comparison, `pyqwen bench --backend cuda`, bench_gpu.py, pytest on the GPU
copies of tests/cuda, the sanitizer workload), here on the smallest shapes, without the 27B slice. The
report must list every step with a status, end with the summary table, and carry a logits comparison
whose numbers are finite and within the bounds of tests/cuda/test_model_emu.py. Also: the scripts parse
(bash -n) and, where shellcheck is installed, lint clean; and ptxas_table.py on a recorded ptxas log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPTS = [BENCH / "gpu_proof.sh", BENCH / "gpu_proof_wheels.sh", BENCH / "ptxas_report.sh"]
STEPS = ["env", "wheels", "build", "version", "fixtures", "logits", "slice", "bench", "bench_gpu", "logits_slice",
         "tests", "memcheck", "racecheck", "synccheck"]
# What each step must report in the rehearsal (no GPU, no compute-sanitizer, no slice).
EXPECTED = {
    "env": r"ok", "wheels": r"ok|SKIP \(no benchmarks/gpu_wheels\)", "build": r"ok", "version": r"ok \(emulated.*",
    "fixtures": r"ok", "logits": r"ok", "slice": r"SKIP \(GPU_PROOF_SLICE=0\)", "bench": r"ok", "bench_gpu": r"ok",
    "logits_slice": r"SKIP \(GPU_PROOF_SLICE=0\)", "tests": r"ok",
    "memcheck": r"SKIP \(no compute-sanitizer; the workload ran\)", "racecheck": r"SKIP \(no compute-sanitizer\)",
    "synccheck": r"SKIP \(no compute-sanitizer\)",
}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_lint(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    pytest.importorskip("pybind11", reason="the emulated CUDA module is built with pybind11")
    if shutil.which("compute-sanitizer") or shutil.which("nvidia-smi"):
        pytest.skip("a GPU machine: run benchmarks/gpu_proof.sh itself")
    sys.path.insert(0, str(REPO / "tests" / "cuda"))
    import emu_build

    emu_build.build()  # cached; built here so the script's own budget is not spent compiling
    tmp = tmp_path_factory.mktemp("gpu_proof")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_PROOF_EMULATE": "1",
        "GPU_PROOF_WORK": str(tmp / "work"),
        "GPU_PROOF_REPORT": str(tmp / "report.md"),
        # the smallest shapes (each emulated forward costs seconds): a 3-token prompt in chunks of 2 and 1,
        # 2 decode steps, 2 greedy tokens; pp1 / tg1 benches
        "GPU_PROOF_LOGITS_ARGS": "--models r2-untied:f16 --prompt 3 --decode 2 --greedy 2 --n-batch 2",
        "GPU_PROOF_BENCH_ARGS": "-p 1 -n 1 -r 1 -b 8",
        "GPU_PROOF_BENCH_GPU_ARGS": "-p 1 -n 1 -r 1 -b 8",
        "GPU_PROOF_TESTS": "tests/cuda/test_kernels_basic.py",
        "GPU_PROOF_TESTS_K": "gpu and argmax",
        "GPU_PROOF_SANITIZER_ARGS": "--models r2-untied:f16 --prompt 2 --decode 1 --greedy 0 --n-batch 2",
    }
    env.pop("OUT", None)
    r = subprocess.run(["bash", str(BENCH / "gpu_proof.sh")], env=env, capture_output=True, text=True, timeout=900)
    report = (tmp / "report.md").read_text() if (tmp / "report.md").exists() else ""
    return r, report


def summary(report: str) -> dict[str, str]:
    tail = report.split("## Summary", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (\w+) \| ([^|]+) \| ([0-9.]+) \|", tail, re.M)
    return {name: status.strip() for _, name, status, _ in rows}


def test_rehearsal_reports_every_step(rehearsal):
    r, report = rehearsal
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("report.md"), r.stdout
    assert report.rstrip().splitlines()[-1].startswith("Total "), "the report ends with the summary"
    status = summary(report)
    assert list(status) == STEPS, status
    bad = {s: status[s] for s in STEPS if not re.fullmatch(EXPECTED[s], status[s])}
    assert not bad, (bad, report[-6000:])
    for i, step in enumerate(STEPS, 1):
        assert re.search(rf"^## {i}\. {step}: ", report, re.M), step


def test_rehearsal_logits_are_real_and_within_bounds(rehearsal):
    _, report = rehearsal
    m = re.search(r"<!-- gpu_proof_logits (.*) -->", report)
    assert m, report[-4000:]
    (res,) = json.loads(m.group(1))
    assert res["model"] == "r2-untied:f16" and res["prompt"] == 3 and res["decode"] == 2 and res["ok"]
    p = res["prefill"]
    assert p["rows"] == 3 and p["finite"] and res["decode_finite"]
    # real numbers: the emulated kernels sum in other orders than the CPU, never bit-identical on all rows,
    # and far inside the bounds (tests/cuda/test_model_emu.py: 2e-2 per step; observed ~1e-3)
    assert 0 < p["max"] < 0.4 and 0 < p["mean"] < 0.03
    assert 0 < res["decode_max"] < 2e-2
    assert res["greedy"]["cpu"] == res["greedy"]["gpu"]
    assert re.search(r"^decode max \|dlogit\| per step, r2-untied:f16 \(2 steps\):( \d\.\de[-+]\d\d){2}$", report, re.M)


def test_bench_step_reports_throughput(rehearsal):
    _, report = rehearsal
    section = report.split("## 8. bench:", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"\| *pp1 *\| *[0-9.]+ ± ", section) and re.search(r"tg1 \(CUDA\): [0-9.]+ GB/s achieved", section)


PTXAS_LOG = """\
ptxas info    : 24 bytes gmem, 16 bytes cmem[3]
ptxas info    : Compiling entry function '_ZN2pq4cuda19attn_prefill_kernelILi256EEEvPKfPf' for 'sm_86'
ptxas info    : Function properties for _ZN2pq4cuda19attn_prefill_kernelILi256EEEvPKfPf
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 456 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN2pq4cuda10rms_norm_kILi256EEEvPKfPf' for 'sm_86'
ptxas info    : Function properties for _ZN2pq4cuda6helperEv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _ZN2pq4cuda10rms_norm_kILi256EEEvPKfPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 452 bytes cmem[0]
"""


def test_ptxas_table_parses_and_flags(tmp_path):
    sys.path.insert(0, str(BENCH))
    import ptxas_table

    for arch in ("86", "89"):
        (tmp_path / f"sm_{arch}").mkdir()
        (tmp_path / f"sm_{arch}" / "attention.cu.log").write_text(PTXAS_LOG.replace("sm_86", f"sm_{arch}"))
    kernels = {k.name: k for k in ptxas_table.collect(tmp_path, ["86", "89"])}
    attn, norm = kernels["attn_prefill_kernel<256>"], kernels["rms_norm_k<256>"]
    assert (attn.by_arch["89"].regs, attn.by_arch["89"].spill_st, attn.by_arch["89"].spill_ld,
            attn.by_arch["89"].stack, attn.by_arch["89"].smem) == (255, 12, 16, 8, 0)
    # a non-inlined helper's frame is not the kernel's
    assert (norm.by_arch["86"].regs, norm.by_arch["86"].smem, norm.by_arch["86"].stack) == (32, 1024, 0)
    assert ptxas_table.flags(attn) == ["**SPILL**", "**>=240 regs**"] and ptxas_table.flags(norm) == []
    md = tmp_path / "doc.md"
    md.write_text("# doc\n\ntext\n")
    section = ptxas_table.render(list(kernels.values()), ["86", "89"], "13.0", "-O3")
    ptxas_table.write_section(md, section)
    once = md.read_text()
    ptxas_table.write_section(md, section)  # regenerating replaces, never appends twice
    assert md.read_text() == once and once.startswith("# doc\n\ntext\n") and once.count(ptxas_table.BEGIN) == 1
