#!/usr/bin/env bash
# ptxas_report.sh: the compiler's resource report of every CUDA kernel -- registers, spill stores/loads,
# static shared memory, stack frame -- for each release architecture, written as the "ptxas resource
# report" section of benchmarks/gpu_roofline.md (replaced in place; nothing else in the file changes).
#
#   bash benchmarks/ptxas_report.sh                  # sm_86, sm_89, sm_120; 2 parallel compiles
#   ARCHS="89" JOBS=4 bash benchmarks/ptxas_report.sh
#   KEEP=/tmp/ptxas bash benchmarks/ptxas_report.sh  # keep the raw `ptxas -v` logs there
#
# For benchmarks/sass_report.sh (the same compile, kept for disassembly): SOURCES="cuda/launch/matvec.cu"
# compiles only those files (paths relative to the repository), CUBIN=1 keeps each compile's cubin next to
# its log (sm_XX/FILE.cu.cubin), TABLE=0 leaves gpu_roofline.md alone.
#
# Needs nvcc, no GPU. Sources and flags are those of the CMake build of pyqwen._cuda (cuda/CMakeLists.txt,
# Release: -O3 -DNDEBUG -lineinfo; cuBLAS defined when the toolkit has its header), one -arch=sm_XX per
# compile, so the figures are the SASS the module ships. The table itself is made by ptxas_table.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
NVCC="${NVCC:-nvcc}"
PY="${PYTHON:-python3}"
ARCHS="${ARCHS:-86 89 120}"
JOBS="${JOBS:-2}"
CUBIN="${CUBIN:-0}"
TABLE="${TABLE:-1}"
if [ -n "${KEEP:-}" ]; then out="$KEEP"; mkdir -p "$out"; else out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT; fi

cublas_flag=""
# the toolkit include folder as nvcc reports it (nvcc may be a wrapper script, not a link)
cuda_inc="$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)"
if [ -f "$cuda_inc/cublas_v2.h" ]; then cublas_flag="-DPQ_HAVE_CUBLAS=1"; fi
flags="-std=c++17 -O3 -DNDEBUG -lineinfo $cublas_flag"

jobs_file="$out/jobs"
: > "$jobs_file"
for arch in $ARCHS; do
  mkdir -p "$out/sm_$arch"
  if [ -n "${SOURCES:-}" ]; then
    # shellcheck disable=SC2086  # $SOURCES is a list of paths
    for src in $SOURCES; do echo "$arch $repo/$src" >> "$jobs_file"; done
  else
    for src in "$repo"/cuda/launch/*.cu "$repo"/cuda/model/*.cu; do
      echo "$arch $src" >> "$jobs_file"
    done
  fi
done

compile_one() {
  local arch="$1" src="$2" log mode=(-c -o /dev/null)
  log="$out/sm_$arch/$(basename "$src").log"
  if [ "$CUBIN" = 1 ]; then mode=(-cubin -o "$out/sm_$arch/$(basename "$src").cubin"); fi
  # shellcheck disable=SC2086  # $flags is a list of flags
  if "$NVCC" $flags -arch="sm_$arch" "${mode[@]}" "$src" -I"$repo/cuda" -I"$repo/csrc/common" \
      -Xptxas -v > "$log" 2>&1; then
    echo "ok   sm_$arch $(basename "$src")"
  else
    echo "FAIL sm_$arch $(basename "$src")"
    cat "$log"
    return 1
  fi
}
export -f compile_one
export NVCC out repo flags CUBIN

start=$(date +%s)
# shellcheck disable=SC2016  # expanded by the inner bash
xargs -P "$JOBS" -L 1 bash -c 'compile_one "$0" "$1"' < "$jobs_file"
echo "ptxas_report: $(wc -l < "$jobs_file") compilations in $(( $(date +%s) - start ))s with $JOBS jobs"

if [ "$TABLE" = 0 ]; then exit 0; fi
nvcc_version="$("$NVCC" --version | grep -o 'release [0-9.]*, V[0-9.]*' || echo unknown)"
"$PY" "$here/ptxas_table.py" --logs "$out" --archs "$ARCHS" --nvcc "$nvcc_version" --flags "$flags" \
  --write "$here/gpu_roofline.md"
