"""Fixtures for the CUDA tests: the emulated modules (always) and pyqwen._cuda (when a GPU is present)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emu_build  # noqa: E402


@pytest.fixture(scope="session")
def emu_paths(request):
    try:
        import pybind11  # noqa: F401
    except ImportError:
        pytest.skip("pybind11 is needed to build the emulated CUDA modules")
    if not (emu_build.cache_dir() / emu_build._fingerprint() / ".done").exists():
        # Otherwise the first run sits silent for minutes while the compiler works.
        _tell(request, "pyqwen: compiling the emulated CUDA modules from the kernel sources (once per change to "
                       f"them; about 4-5 minutes on 2 cores; cached in {emu_build.cache_dir()}) ...")
    return emu_build.build()


def _tell(request, line: str) -> None:
    """A line on the terminal now, past pytest's output capture."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capman is None or reporter is None:
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


@pytest.fixture(scope="session")
def selftest(emu_paths):
    return emu_build.load(emu_build.SELFTEST_MODULE, emu_paths[emu_build.SELFTEST_MODULE])


@pytest.fixture(scope="session")
def emu_ops(emu_paths):
    """The emulated module (production API at the top level, kernels in .testing)."""
    return emu_build.load(emu_build.OPS_MODULE, emu_paths[emu_build.OPS_MODULE])


def _real_cuda():
    try:
        from pyqwen import _cuda
    except ImportError:
        return None
    return _cuda if _cuda.device_count() > 0 else None


@pytest.fixture(params=["emu", "gpu"], scope="session")
def cuda_module(request):
    """The CUDA module, emulated on the CPU and, where a GPU is present, the real one."""
    if request.param == "emu":
        # Asked for here, not as an argument: `-k gpu` on a GPU machine must not compile the emulator.
        emu_paths = request.getfixturevalue("emu_paths")
        return emu_build.load(emu_build.OPS_MODULE, emu_paths[emu_build.OPS_MODULE])
    mod = _real_cuda()
    if mod is None:
        pytest.skip("pyqwen._cuda not built or no CUDA device")
    return mod


@pytest.fixture(scope="session")
def ops(cuda_module):
    """The kernels' numpy-level API (the module's `testing` submodule), on the emulator and on the GPU."""
    return cuda_module.testing


@pytest.fixture(scope="session")
def run_aborting(emu_paths):
    """Runs `module.fn()` in a subprocess (it is expected to abort); returns (returncode, stderr)."""

    def run(fn: str, module: str = emu_build.SELFTEST_MODULE):
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import emu_build; "
            f"m = emu_build.load({module!r}, sys.argv[2]); m.{fn}()"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(emu_paths[module])],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONFAULTHANDLER": "0"},
        )
        return r.returncode, r.stderr

    return run
