#!/usr/bin/env bash
# compile_check.sh: compile every CUDA source with nvcc for each release architecture (-c only, nothing
# linked or run), so CI without a GPU still proves the kernels build for sm_86, sm_89 and sm_120.
#
#   cuda/compile_check.sh                 # all archs, 2 parallel jobs
#   ARCHS="89" JOBS=4 cuda/compile_check.sh
#   NVCC=/usr/local/cuda/bin/nvcc cuda/compile_check.sh
#
# Sources: cuda/launch/*.cu, cuda/model/*.cu and the emulator self-test kernels (tests/cuda/selftest_kernels.cu, so the
# code the harness is tested with is real CUDA). Warnings are errors. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
NVCC="${NVCC:-nvcc}"
ARCHS="${ARCHS:-86 89 120}"
JOBS="${JOBS:-2}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cublas_flag=""
cuda_inc="$(dirname "$(command -v "$NVCC")")/../include"
if [ -f "$cuda_inc/cublas_v2.h" ]; then cublas_flag="-DPQ_HAVE_CUBLAS=1"; fi

sources=("$repo"/cuda/launch/*.cu "$repo"/cuda/model/*.cu "$repo"/tests/cuda/selftest_kernels.cu)
jobs_file="$out/jobs"
for src in "${sources[@]}"; do
  for arch in $ARCHS; do
    echo "$arch $src" >> "$jobs_file"
  done
done

compile_one() {
  local arch="$1" src="$2"
  local obj="$out/$(basename "$src").sm_$arch.o"
  if "$NVCC" -std=c++17 -O3 -arch="sm_$arch" -c "$src" -o "$obj" \
      -I"$repo/cuda" -I"$repo/csrc/common" -I"$repo/tests/cuda" $cublas_flag \
      -Werror all-warnings -Xcompiler -Wall,-Wno-unknown-pragmas > "$obj.log" 2>&1; then
    echo "ok   sm_$arch $(realpath --relative-to="$repo" "$src")"
  else
    echo "FAIL sm_$arch $(realpath --relative-to="$repo" "$src")"
    cat "$obj.log"
    return 1
  fi
}
export -f compile_one
export NVCC out repo cublas_flag

start=$(date +%s)
status=0
xargs -P "$JOBS" -L 1 bash -c 'compile_one "$0" "$1"' < "$jobs_file" || status=$?
echo "compile check: $(wc -l < "$jobs_file") compilations in $(( $(date +%s) - start ))s with $JOBS jobs"
exit $status
