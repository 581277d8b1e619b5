#!/usr/bin/env bash
# gpu_proof_wheels.sh: fills benchmarks/gpu_wheels/ with the wheels benchmarks/gpu_proof.sh installs on the
# device machine, which cannot reach a package registry. Run it on the development machine (it needs PyPI).
#
#   bash benchmarks/gpu_proof_wheels.sh          # then carry benchmarks/gpu_wheels in the device call
#
# The device image (Python 3.12, x86-64) already has numpy, torch, pybind11, scikit-build-core, cmake, ninja,
# tokenizers, jinja2, safetensors, tqdm, huggingface_hub, requests, pyyaml, pytest, pytest-timeout, scipy,
# transformers (/work/.library/device/KINDS.md lists them). Missing are pyqwen's runtime dependencies gguf
# and llguidance, which the package and tests/cuda (gguf.quants) import. Each is pinned to the version this
# checkout is tested with (the one PYTHON here has; unpinned where it has none). The folder is git-ignored.
# pip matches each manylinux tag exactly, so the list names the ones these packages publish (llguidance: 2_31);
# the image's Python 3.12.3 suggests Ubuntu 24.04 (glibc 2.39), new enough for all of them (not checked there).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/benchmarks/gpu_wheels"
PY="${PYTHON:-python3}"
# name -> what needs it (gguf's own needs -- numpy, pyyaml, requests, tqdm -- are on the image)
packages=(gguf llguidance)

mkdir -p "$dest"
rm -f "$dest"/*.whl
for name in "${packages[@]}"; do
  version="$("$PY" -c 'import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass' "$name")"
  spec="$name${version:+==$version}"
  echo "downloading $spec"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "$spec"
done
ls -l "$dest"
du -sh "$dest"
