"""GPU_PROOF_EMULATE=1 of benchmarks/gpu_proof.sh: `import pyqwen._cuda` gives the CPU-emulated module.

gpu_proof.sh puts this folder on PYTHONPATH (so Python imports this file at start-up) and names the emulated
module built by tests/cuda/emu_build.py in GPU_PROOF_EMU_SO. Every later step then runs its real command --
`pyqwen bench --backend cuda`, Model.load(backend="cuda"), the tests' gpu_module() -- against the kernels'
real sources run by the emulator (cuda/emu), as they would against the module built for a GPU. Nothing is
done without GPU_PROOF_EMU_SO, and a real pyqwen._cuda is never shadowed unless that variable is set.
"""

import importlib.abc
import importlib.util
import os
import sys

_SO = os.environ.get("GPU_PROOF_EMU_SO")


class _EmulatedCuda(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    NAME = "pyqwen._cuda"

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == self.NAME else None

    def create_module(self, spec):
        # The emulated module's init function is PyInit_pyqwen_cuda_emu: load it under its own name and
        # hand the same object out as pyqwen._cuda.
        name = "pyqwen_cuda_emu"
        if name not in sys.modules:
            s = importlib.util.spec_from_file_location(name, _SO)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
            sys.modules[name] = mod
        return sys.modules[name]

    def exec_module(self, module):
        pass


if _SO:
    sys.meta_path.insert(0, _EmulatedCuda())
