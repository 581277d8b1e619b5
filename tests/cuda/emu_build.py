"""Builds the CPU-emulated CUDA modules from the real kernel sources (no GPU, no nvcc needed).

Two pybind11 modules come out of one g++ build:

- ``pyqwen_cuda_emu``: cuda/launch/*.cu, cuda/model/*.cu + cuda/python/*.cpp -- the same numpy-level API as
  ``pyqwen._cuda``, with every kernel run by the emulator (cuda/emu/).
- ``pq_emu_selftest``: tests/cuda/selftest_kernels.cu, compiled twice (normally and with
  -DPQ_SELFTEST_NO_BARRIER), for the harness self-tests.

With ``$PYQWEN_EMU_RACECHECK=1`` (or ``build(racecheck=True)``) both modules come out of a racecheck build
instead: the kernel translation units are compiled with GCC's -fsanitize=thread instrumentation (without
libtsan: cuda/emu/emu_racecheck.cpp receives the calls) and every shared-memory race aborts with a report
(cuda/README.md, "racecheck"). It is a separate build, cached apart, so the ordinary one pays nothing.

Outputs are cached in ``$PYQWEN_EMU_CACHE`` (default ``build/cuda_emu``) under a hash of every source,
the flags, the compiler and the Python ABI, so an unchanged tree reuses them. ``python
tests/cuda/emu_build.py`` builds and prints the paths. ``$CXX`` picks the compiler,
``$PYQWEN_EMU_CXXFLAGS`` adds flags, ``$PYQWEN_EMU_JOBS`` sets parallel compiles (default 2).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CUDA = REPO / "cuda"
TESTS = Path(__file__).resolve().parent

OPS_MODULE = "pyqwen_cuda_emu"
SELFTEST_MODULE = "pq_emu_selftest"

# -O1: fast to compile, and optimised enough that a kernel relying on undefined behaviour tends to show
# it. No -ffast-math: the kernels' float results are compared against numpy.
CXXFLAGS = [
    "-std=c++17", "-O1", "-g0", "-fPIC", "-fvisibility=hidden", "-DPQ_CUDA_EMU=1",
    "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
]


RACECHECK_FLAGS = ["-DPQ_EMU_RACECHECK=1"]  # every unit (the scheduler's hooks, the atomics' scopes)
# kernel units only: loads/stores call __tsan_readN/__tsan_writeN (emu_racecheck.cpp); no entry/exit hooks
INSTRUMENT_FLAGS = ["-fsanitize=thread", "--param", "tsan-instrument-func-entry-exit=0"]


def racecheck_requested() -> bool:
    """$PYQWEN_EMU_RACECHECK=1: the tests build and load the racecheck modules."""
    return os.environ.get("PYQWEN_EMU_RACECHECK", "") not in ("", "0")


def _cxx() -> str:
    return os.environ.get("CXX", "c++")


def _cxxflags() -> list[str]:
    """CXXFLAGS plus $PYQWEN_EMU_CXXFLAGS (e.g. "-O0 -g" to debug a kernel in gdb, later flags win)."""
    return CXXFLAGS + os.environ.get("PYQWEN_EMU_CXXFLAGS", "").split()


def _includes() -> list[str]:
    import pybind11

    return [f"-I{CUDA}", f"-I{REPO / 'csrc' / 'common'}", f"-I{TESTS}", f"-I{pybind11.get_include()}",
            f"-I{sysconfig.get_paths()['include']}"]


def _units(racecheck: bool = False) -> list[tuple[str, Path, list[str]]]:
    """(object name, source, extra flags) of every translation unit."""
    rc = RACECHECK_FLAGS if racecheck else []
    kern = rc + (INSTRUMENT_FLAGS if racecheck else [])  # units holding kernels
    units = [(f"emu_{p.stem}", p, rc) for p in sorted((CUDA / "emu").glob("*.cpp"))]
    units += [(f"backend_{p.stem}", p, ["-x", "c++", *kern])
              for p in sorted((CUDA / "launch").glob("*.cu")) + sorted((CUDA / "model").glob("*.cu"))]
    # bindings.cpp defines the module; bind_*.cpp files (one per kernel family) add to it.
    units += [(f"bindings_{p.stem}", p, [f"-DPQ_CUDA_MODULE_NAME={OPS_MODULE}", *rc])
              for p in sorted((CUDA / "python").glob("*.cpp"))]
    st = TESTS / "selftest_kernels.cu"
    units.append(("selftest_kernels", st, ["-x", "c++", "-DPQ_SELFTEST_NS=selftest", *kern]))
    units.append(("selftest_nobarrier", st, ["-x", "c++", "-DPQ_SELFTEST_NS=nobarrier",
                                             "-DPQ_SELFTEST_NO_BARRIER=1", *kern]))
    units.append(("selftest_module", TESTS / "selftest_module.cpp", rc))
    return units


def _link_sets(objs: dict[str, Path]) -> dict[str, list[Path]]:
    emu = [o for n, o in objs.items() if n.startswith("emu_")]
    backend = [o for n, o in objs.items() if n.startswith("backend_")]
    return {
        OPS_MODULE: emu + backend + [o for n, o in objs.items() if n.startswith("bindings_")],
        SELFTEST_MODULE: emu + [objs["selftest_kernels"], objs["selftest_nobarrier"], objs["selftest_module"]],
    }


def _fingerprint(racecheck: bool | None = None) -> str:
    racecheck = racecheck_requested() if racecheck is None else racecheck
    h = hashlib.sha256()
    if racecheck:
        h.update(" ".join(RACECHECK_FLAGS + INSTRUMENT_FLAGS).encode())
    files = sorted(p for p in CUDA.rglob("*") if p.suffix in {".h", ".cuh", ".cu", ".cpp"})
    files += sorted((REPO / "csrc" / "common").glob("*.h")) + [Path(__file__)]  # shared with the CPU core
    files += sorted(p for p in TESTS.iterdir() if p.suffix in {".h", ".cu", ".cpp"})
    for p in files:
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    version = subprocess.run([_cxx(), "--version"], capture_output=True, text=True, check=True).stdout
    h.update(" ".join(_cxxflags()).encode())
    h.update(version.encode())
    h.update((sysconfig.get_config_var("EXT_SUFFIX") or "").encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("PYQWEN_EMU_CACHE", REPO / "build" / "cuda_emu"))


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"emulator build failed:\n$ {' '.join(cmd)}\n{r.stdout}{r.stderr}")


def build(jobs: int | None = None, racecheck: bool | None = None) -> dict[str, Path]:
    """Builds (or reuses) both modules (racecheck builds when asked, default $PYQWEN_EMU_RACECHECK);
    returns {module name: path of the .so}."""
    racecheck = racecheck_requested() if racecheck is None else racecheck
    ext = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = cache_dir() / _fingerprint(racecheck)
    paths = {name: out / f"{name}{ext}" for name in (OPS_MODULE, SELFTEST_MODULE)}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:  # concurrent pytest workers build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".done").exists():
            return paths
        tmp = out / "obj"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        inc = _includes()
        units = _units(racecheck)
        objs = {name: tmp / f"{name}.o" for name, _, _ in units}
        cmds = [[_cxx(), *_cxxflags(), *inc, *extra, "-c", str(src), "-o", str(objs[name])]
                for name, src, extra in units]
        jobs = jobs or int(os.environ.get("PYQWEN_EMU_JOBS", "2"))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for f in [pool.submit(_run, c) for c in cmds]:
                f.result()
        for name, members in _link_sets(objs).items():
            _run([_cxx(), "-shared", "-o", str(paths[name]), *map(str, members)])
            if racecheck:
                _check_no_tsan_imports(paths[name])
        (out / ".done").write_text("ok\n")
    _prune(out.parent, keep=4)
    return paths


def _check_no_tsan_imports(so: Path) -> None:
    """A racecheck module must define every __tsan_* entry point it calls (libtsan is not linked): an
    undefined one would only fail when the module is imported."""
    r = subprocess.run(["nm", "-u", str(so)], capture_output=True, text=True, check=True)
    missing = [ln.split()[-1] for ln in r.stdout.splitlines() if "__tsan_" in ln]
    if missing:
        raise RuntimeError(f"racecheck build: add {missing} to cuda/emu/emu_racecheck.cpp")


def _prune(root: Path, keep: int) -> None:
    """Drops all but the `keep` most recent builds (each source change leaves one behind)."""
    builds = [d for d in root.iterdir() if len(d.name) == 16 and (d / ".done").exists()]
    builds.sort(key=lambda d: (d / ".done").stat().st_mtime, reverse=True)
    for d in builds[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def load(name: str, path: Path):
    """Imports an extension module from an explicit path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod


if __name__ == "__main__":
    for name, path in build(racecheck="--racecheck" in sys.argv[1:] or None).items():
        print(f"{name}: {path}")
