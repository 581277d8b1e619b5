#!/usr/bin/env bash
# gpu_proof.sh: the CUDA backend's first contact with a real GPU, in one call of under 10 minutes on one
# card (RTX 4090/5090, H100/H200 class), written to ONE markdown report (path printed last).
#
# Steps, most valuable first; each is timed, has its own time cap, and a failed step never stops the later
# ones (its error and log tail go into the report, which ends with a step/status/seconds table):
#   env        nvidia-smi, driver, nvcc, python, key packages, compute-sanitizer
#   wheels     pip install of benchmarks/gpu_wheels/*.whl (gguf, llguidance: not on the device image)
#   build      pip install . with PYQWEN_CUDA=on for this card's architecture only (nvidia-smi compute_cap)
#   version    `pyqwen --version`: the CUDA architecture and cuBLAS
#   fixtures   the test models (tests/fixtures/hf) converted to GGUF
#   logits     CUDA vs CPU logits, 64-token prompt + 64 decode steps, on the test models (gpu_proof_logits.py)
#   slice      waits for the 27B-shaped slice (pyqwen/bench_slice.py, 4 layers at the real dimensions,
#              Q4_K_M), built in the background from the end of `build` on
#   bench      `pyqwen bench --backend cuda --slice-27b`, achieved GB/s against the card's bandwidth
#   bench_gpu  benchmarks/bench_gpu.py on the slice: device-side decode, with and without CUDA graphs
#   logits_slice  CUDA vs CPU logits on the slice (head dim 256 attention, Q4_K/Q6_K kernels, cuBLAS)
#   tests      tests/gpu + the GPU copies of tests/cuda (the `gpu` parameter of the cuda_module fixture)
#   memcheck, racecheck, synccheck   compute-sanitizer on a small prefill + decode run
#
# Usage:
#   bash benchmarks/gpu_proof_wheels.sh     # on the development machine, once: fills benchmarks/gpu_wheels/
#   then one device call: command "bash benchmarks/gpu_proof.sh", carry ["benchmarks/gpu_wheels"], timeout_s 600;
#   the report comes back as $OUT/gpu_proof_report.md, the step logs as $OUT/gpu_proof_logs.tar.gz.
#   A second call for steps the first did not reach: GPU_PROOF_SKIP="slice bench ..." (the build is redone).
#   GPU_PROOF_EMULATE=1 bash benchmarks/gpu_proof.sh   # rehearsal without a GPU: the build step builds the
#       CPU-emulated module (tests/cuda/emu_build.py), which gpu_proof_emu/sitecustomize.py hands out as
#       pyqwen._cuda, and every later step runs its real command against it (tests/test_gpu_proof_script.py)
#
# Knobs (environment): GPU_PROOF_REPORT (report path; default $OUT/gpu_proof_report.md where OUT is set,
# else ./gpu_proof_report.md), GPU_PROOF_BUDGET (seconds for all steps, default 540, emulated 1500),
# GPU_PROOF_CAP_SCALE (factor on every step's cap, default 1, emulated 3; a step's cap also shrinks to what
# is left of the budget, and a step with under 10 s left is skipped), GPU_PROOF_WORK (work folder, default a
# new one under /tmp),
# GPU_PROOF_SKIP (step names to skip), GPU_PROOF_ARCH (e.g. 90; default nvidia-smi's compute_cap),
# GPU_PROOF_SLICE (1/0: build and bench the slice; default 1 on a GPU, 0 when emulating),
# GPU_PROOF_LOGITS_ARGS, GPU_PROOF_BENCH_ARGS, GPU_PROOF_BENCH_GPU_ARGS, GPU_PROOF_TESTS, GPU_PROOF_TESTS_K,
# GPU_PROOF_SANITIZER_ARGS (those steps' arguments; defaults below), PYTHON (default python3).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
EMU="${GPU_PROOF_EMULATE:-0}"
PY="${PYTHON:-python3}"
# Emulated, a forward of the tiny test model costs seconds of CPU instead of microseconds: caps x3.
if [ "$EMU" = 1 ]; then BUDGET="${GPU_PROOF_BUDGET:-1500}"; cap_scale=3; else BUDGET="${GPU_PROOF_BUDGET:-540}"; cap_scale=1; fi
cap_scale="${GPU_PROOF_CAP_SCALE:-$cap_scale}"
if [ -n "${GPU_PROOF_REPORT:-}" ]; then report="$GPU_PROOF_REPORT"
elif [ -n "${OUT:-}" ]; then report="$OUT/gpu_proof_report.md"
else report="$PWD/gpu_proof_report.md"; fi
work="${GPU_PROOF_WORK:-$(mktemp -d /tmp/gpu_proof.XXXXXX)}"
mkdir -p "$work/logs" "$work/sections" "$work/bodies" "$work/status" "$(dirname "$report")"
: > "$work/summary.tsv"
# nvcc and compute-sanitizer where a toolkit keeps them, should the image's PATH lack them
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
  if [ -d "$d" ] && [[ ":$PATH:" != *":$d:"* ]]; then PATH="$PATH:$d"; fi
done
export PATH
export PYQWEN_CACHE_DIR="${PYQWEN_CACHE_DIR:-$work/cache}"  # the slice: a fresh build, not a stale cache
export PYTHONUNBUFFERED=1 PYQWEN_EMU_JOBS="${PYQWEN_EMU_JOBS:-$(nproc)}"
start_all=$(date +%s)
deadline=$(( start_all + BUDGET ))

if [ "$EMU" = 1 ]; then
  mode="EMULATED (GPU_PROOF_EMULATE=1: CPU emulator in place of the GPU; no nvidia-smi or compute-sanitizer)"
  slice="${GPU_PROOF_SLICE:-0}"
  logits_args="${GPU_PROOF_LOGITS_ARGS:---prompt 8 --decode 2 --greedy 2 --n-batch 4}"
  bench_args="${GPU_PROOF_BENCH_ARGS:--p 4 -n 2 -r 1 -b 4}"
  bench_gpu_args="${GPU_PROOF_BENCH_GPU_ARGS:--p 4 -n 2 -r 1 -b 4 --no-graphs}"
  tests="${GPU_PROOF_TESTS:-tests/cuda/test_kernels_basic.py}"
  tests_k="${GPU_PROOF_TESTS_K:-gpu}"
  san_args="${GPU_PROOF_SANITIZER_ARGS:---models r2-untied:f16 --prompt 4 --decode 1 --greedy 1 --n-batch 4}"
else
  mode="GPU"
  slice="${GPU_PROOF_SLICE:-1}"
  logits_args="${GPU_PROOF_LOGITS_ARGS:---prompt 64 --decode 64 --greedy 16 --n-batch 64}"
  bench_args="${GPU_PROOF_BENCH_ARGS:--p 512 -n 128 -r 3}"
  bench_gpu_args="${GPU_PROOF_BENCH_GPU_ARGS:--p 512 -n 128 -r 3 --no-graphs}"
  tests="${GPU_PROOF_TESTS:-tests/gpu tests/cuda}"
  tests_k="${GPU_PROOF_TESTS_K:-gpu}"
  san_args="${GPU_PROOF_SANITIZER_ARGS:---models r2-untied:f16,r3-untied:q8_0 --prompt 24 --decode 3 --greedy 3 --n-batch 24 --kv q8_0}"
fi
export repo work PY EMU slice logits_args bench_args bench_gpu_args tests tests_k san_args

gpu_query() {  # gpu_query FIELD: one nvidia-smi value of the first GPU ("" without nvidia-smi)
  nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits 2>/dev/null | head -1 | sed 's/^ *//; s/ *$//'
}
arch="${GPU_PROOF_ARCH:-$(gpu_query compute_cap | tr -d .)}"
gpu_name="$(gpu_query name)"
export arch gpu_name

# ---- the report -----------------------------------------------------------------------------------------

write_report() {  # header + one section per finished step + the summary table; rewritten after each step
  {
    echo "# pyqwen GPU proof report"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host $(hostname); mode: $mode"
    echo "- GPU: ${gpu_name:-none found}; arch: ${arch:-unknown}; budget ${BUDGET} s; work folder $work"
    echo "- source: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'no git') $(git -C "$repo" status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)')"
    echo
    cat "$work"/sections/*.md 2>/dev/null
    echo "## Summary"
    echo
    echo "| # | step | status | seconds | what |"
    echo "|---|---|---|---|---|"
    awk -F'\t' '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$work/summary.tsv"
    echo
    echo "Total $(( $(date +%s) - start_all )) s of the ${BUDGET} s budget."
  } > "$report.tmp" && mv "$report.tmp" "$report"
}

n_step=0
# run_step NAME CAP_SECONDS "WHAT" FUNCTION: runs FUNCTION (exported) under `timeout`, capped by what is left of
# the budget, output to logs/NAME.log. A step may write bodies/NAME.md (markdown shown in the report)
# and status/NAME (a status other than "ok" for a zero exit, e.g. "SKIP (...)").
run_step() {
  local name="$1" cap=$(( $2 * cap_scale )) what="$3" fn="$4" left t rc status t0 secs log="$work/logs/$1.log"
  n_step=$(( n_step + 1 ))
  left=$(( deadline - $(date +%s) - 5 ))
  t=$(( cap < left ? cap : left ))
  t0=$(date +%s.%N)
  if [[ " ${GPU_PROOF_SKIP:-} " == *" $name "* ]]; then
    status="SKIP (GPU_PROOF_SKIP)"; rc=0; : > "$log"
  elif (( t < 10 )); then
    status="SKIP (budget spent: ${left}s left)"; rc=0; : > "$log"
  else
    echo ">>> [$n_step] $name (cap ${t}s): $what" >&2
    # In the background so that a TERM to this script is handled at once (on_term) and not after the step.
    timeout -k 10 "$t" bash -c "$fn" > "$log" 2>&1 &
    step_pid=$!
    wait "$step_pid"
    rc=$?
    step_pid=""
    if (( rc == 124 || rc == 137 )); then status="TIMEOUT (${t}s)"
    elif (( rc != 0 )); then status="FAIL (exit $rc)"
    elif [ -s "$work/status/$name" ]; then status="$(head -1 "$work/status/$name")"
    else status="ok"; fi
  fi
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$n_step" "$name" "$status" "$secs" "$what" >> "$work/summary.tsv"
  {
    printf '## %s. %s: %s (%s s)\n\n%s\n\n' "$n_step" "$name" "$status" "$secs" "$what"
    if [ -s "$work/bodies/$name.md" ]; then cat "$work/bodies/$name.md"; echo; fi
    if [ -s "$log" ]; then
      echo "Log (last 60 lines of logs/$name.log):"
      echo
      echo '```'
      tail -n 60 "$log" | cut -c1-400
      echo '```'
      echo
    fi
  } > "$work/sections/$(printf '%02d' "$n_step")-$name.md"
  echo "<<< [$n_step] $name: $status (${secs}s)" >&2
  write_report
  [ "$status" = ok ]
}

# ---- the steps (each runs in its own bash under `timeout`, so they are exported functions) --------------

step_env() {
  run() { echo "\$ $*"; "$@" 2>&1 || echo "(exit $?)"; echo; }
  run nvidia-smi
  run nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  run nvcc --version
  run "$PY" --version
  run uname -a
  run nproc
  run free -g
  echo "\$ compute-sanitizer --version"; compute-sanitizer --version 2>&1 | head -3 || echo "(not found)"; echo
  echo "\$ pip list (key packages)"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(numpy|torch|pybind11|scikit[-_]build[-_]core|cmake|ninja|gguf|llguidance|tokenizers|jinja2|safetensors|pytest|pytest[-_]timeout|transformers|nvidia-cublas|nvidia-cuda-runtime|cuda-toolkit|pyqwen) '
  "$PY" -c 'import sys; print(sys.executable)'
}

step_wheels() {
  local dir="$repo/benchmarks/gpu_wheels"
  shopt -s nullglob
  local whls=("$dir"/*.whl)
  if (( ${#whls[@]} == 0 )); then
    echo "no wheels in $dir: run benchmarks/gpu_proof_wheels.sh on the development machine and carry the folder"
    [ "$EMU" = 1 ] && { echo "SKIP (no benchmarks/gpu_wheels)" > "$work/status/wheels"; return 0; }
    return 1
  fi
  ls -l "${whls[@]}"
  local extra=()
  # Rehearsal: install the same cp312 wheels into a throwaway folder (this python may be another version).
  [ "$EMU" = 1 ] && extra=(--python-version 3.12 --only-binary=:all:)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
    "${extra[@]}" "${whls[@]}"
}

step_build() {
  if [ "$EMU" = 1 ]; then
    # The emulated module (kernels' real sources, g++ -DPQ_CUDA_EMU) stands in for pyqwen._cuda.
    "$PY" "$repo/tests/cuda/emu_build.py" | tee "$work/emu_paths.txt"
    return "${PIPESTATUS[0]}"
  fi
  local archs="$arch" root="" nvcc_inc hdr
  if [ -z "$archs" ]; then
    archs="$("$PY" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())' 2>/dev/null)"
  fi
  [ -n "$archs" ] || { echo "no architecture (nvidia-smi and torch both failed): building the default list"; archs="86;89;120"; }
  # The toolkit's include folder as nvcc itself reports it (nvcc may be a wrapper script, not a link).
  nvcc_inc="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)"
  if [ ! -f "$nvcc_inc/cublas_v2.h" ]; then  # a minimal toolkit: cuBLAS from a pip wheel (nvidia/cu13, nvidia/cublas)
    hdr="$("$PY" - <<'EOF'
import pathlib, site
for sp in site.getsitepackages():
    for h in sorted(pathlib.Path(sp, "nvidia").glob("*/include/cublas_v2.h")):
        if list(h.parent.parent.glob("lib/libcublas.so*")):
            print(h)
            raise SystemExit
EOF
)"
    [ -n "$hdr" ] && root="$(dirname "$(dirname "$hdr")")"
  fi
  echo "nvcc: $(command -v nvcc); architectures: $archs; cuBLAS: ${root:-from the toolkit ($nvcc_inc)}"
  PYQWEN_CUDA=on PYQWEN_CUBLAS_ROOT="$root" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install -v --no-build-isolation --no-deps \
    -C "cmake.define.PYQWEN_CUDA_ARCHITECTURES=$archs" -C "build-dir=$work/build" "$repo" || return 1
  "$PY" -P -c 'from pyqwen import _cuda; print("pyqwen._cuda:", _cuda.__file__, "devices:", _cuda.device_query())'
}

step_version() {
  "$PY" -P -m pyqwen --version | tee "$work/version.txt" || return 1
  "$PY" -P -c 'from pyqwen.cuda_backend import cuda_available; print("cuda_available:", cuda_available() or "yes")'
  if [ "$EMU" = 1 ]; then
    echo "ok (emulated: this install's build_info has no CUDA; pyqwen._cuda is the emulator)" > "$work/status/version"
    return 0
  fi
  grep -q "sm_$arch" "$work/version.txt" || { echo "expected sm_$arch in --version"; return 1; }
  grep -q "cuBLAS linked" "$work/version.txt" || { echo "expected cuBLAS linked"; return 1; }
}

step_fixtures() {
  "$PY" -P "$repo/benchmarks/gpu_proof_logits.py" --work "$work" --convert-only
}

step_logits() {
  # shellcheck disable=SC2086  # the argument strings are word-split on purpose
  "$PY" -P "$repo/benchmarks/gpu_proof_logits.py" --work "$work" $logits_args --md "$work/bodies/logits.md"
}

step_slice() {
  [ "$slice" = 1 ] || { echo "SKIP (GPU_PROOF_SLICE=0)" > "$work/status/slice"; return 0; }
  [ -f "$work/slice.pid" ] || { echo "the slice build was never started (build failed?)"; return 1; }
  while [ ! -f "$work/slice.rc" ]; do sleep 1; done
  cat "$work/logs/slice_build.log"
  echo "background build took $(cat "$work/slice.secs") s"
  return "$(cat "$work/slice.rc")"
}

slice_path() { find "$PYQWEN_CACHE_DIR" -maxdepth 1 -name 'slice27b-*.gguf' 2>/dev/null | head -1; }

bench_model() {  # the bench's model arguments: the slice, or (emulated) a converted fixture
  if [ "$slice" = 1 ]; then echo "--slice-27b"; else echo "-m $work/models/qwen35-r2-untied-f16.gguf"; fi
}

step_bench() {
  if [ "$slice" = 1 ] && [ -z "$(slice_path)" ]; then echo "no slice (see the slice step)"; return 1; fi
  # shellcheck disable=SC2046,SC2086
  "$PY" -P -m pyqwen bench --backend cuda $(bench_model) $bench_args -v | tee "$work/bench.md"
  local rc=${PIPESTATUS[0]}
  { echo '```'; cat "$work/bench.md"; echo '```'; } > "$work/bodies/bench.md"
  "$PY" -P - "$work/bench.md" "$gpu_name" "$repo/benchmarks" >> "$work/bodies/bench.md" <<'EOF'
import re, sys
sys.path.insert(0, sys.argv[3])
from bench_gpu import peak_for
text, name = open(sys.argv[1]).read(), sys.argv[2]
peak = peak_for(name) if name else None
for test, gbs in re.findall(r"^(tg\d+) \([^)]*\): ([0-9.]+) GB/s achieved", text, re.M):
    pct = f"{100 * float(gbs) / peak:.1f} % of the card's {peak:g} GB/s" if peak else "card bandwidth unknown"
    print(f"\n**{test}: {gbs} GB/s achieved = {pct}** ({name or 'no GPU name'})")
EOF
  return "$rc"
}

step_bench_gpu() {
  local model
  if [ "$slice" = 1 ]; then model="$(slice_path)"; else model="$work/models/qwen35-r2-untied-f16.gguf"; fi
  if [ -z "$model" ] || [ ! -f "$model" ]; then echo "no model to bench"; return 1; fi
  # shellcheck disable=SC2086
  "$PY" -P "$repo/benchmarks/bench_gpu.py" "$model" $bench_gpu_args | tee "$work/bench_gpu.md"
  local rc=${PIPESTATUS[0]}
  { echo '```'; cat "$work/bench_gpu.md"; echo '```'; } > "$work/bodies/bench_gpu.md"
  return "$rc"
}

step_logits_slice() {
  [ "$slice" = 1 ] || { echo "SKIP (GPU_PROOF_SLICE=0)" > "$work/status/logits_slice"; return 0; }
  local model; model="$(slice_path)"
  [ -n "$model" ] || { echo "no slice"; return 1; }
  "$PY" -P "$repo/benchmarks/gpu_proof_logits.py" --work "$work" --models "" --gguf "slice27b=$model" \
    --prompt 64 --decode 32 --greedy 8 --n-batch 64 --md "$work/bodies/logits_slice.md"
}

step_tests() {
  # -P: the installed package, not the source folder. Collection errors (a missing optional package) must not
  # stop the other files.
  # shellcheck disable=SC2086
  "$PY" -P -m pytest $tests -k "$tests_k" -q -p no:cacheprovider -rfEs --timeout 150 \
    --continue-on-collection-errors -o addopts="" 2>&1 | tee "$work/tests.log"
  local rc=${PIPESTATUS[0]}
  { echo "\`pytest $tests -k \"$tests_k\"\`:"; echo; echo '```'; grep -E '^(FAILED|ERROR|SKIPPED)|passed|failed|error' "$work/tests.log" | tail -n 40; echo '```'; } \
    > "$work/bodies/tests.md"
  # everything skipped (no device seen, the module not built) is exit 0 for pytest, and no proof here
  if (( rc == 0 )) && ! tail -n 1 "$work/tests.log" | grep -qE '[1-9][0-9]* passed'; then
    echo "no test passed"
    return 1
  fi
  return "$rc"
}

sanitize() {  # sanitize TOOL: compute-sanitizer --tool TOOL on a small prefill + decode run
  local tool="$1"
  local cmd args
  read -r -a args <<< "$san_args"
  # --no-bounds: the step's status is the sanitizer's verdict (the logits step holds the bounds)
  cmd=("$PY" -P "$repo/benchmarks/gpu_proof_logits.py" --work "$work" --no-bounds "${args[@]}")
  if ! command -v compute-sanitizer > /dev/null; then
    if [ -f "$work/status/workload_ran" ]; then
      echo "SKIP (no compute-sanitizer)" > "$work/status/$tool"
      return 0
    fi
    echo "compute-sanitizer not found: running the workload alone"
    "${cmd[@]}" || return 1
    echo "SKIP (no compute-sanitizer; the workload ran)" > "$work/status/$tool"
    : > "$work/status/workload_ran"
    return 0
  fi
  compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 30 --target-processes all "${cmd[@]}"
}
step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }
step_synccheck() { sanitize synccheck; }

export -f step_env step_wheels step_build step_version step_fixtures step_logits step_slice step_bench \
  step_bench_gpu step_logits_slice step_tests sanitize step_memcheck step_racecheck step_synccheck \
  slice_path bench_model

start_slice_build() {  # in the background, while the logits step runs: it needs only the CPU backend
  [ "$slice" = 1 ] || return 0
  (
    t0=$(date +%s)
    timeout -k 10 420 "$PY" -P -c 'from pyqwen.bench_slice import slice_27b_path; print(slice_27b_path(log=print))' \
      > "$work/logs/slice_build.log" 2>&1
    rc=$?
    echo $(( $(date +%s) - t0 )) > "$work/slice.secs"
    echo "$rc" > "$work/slice.rc"
  ) &
  echo $! > "$work/slice.pid"
}

step_pid=""
on_term() {  # killed from outside (the device call's limit): stop the step's process group, keep the report
  [ -n "$step_pid" ] && kill -TERM -- "-$step_pid" 2>/dev/null
  [ -f "$work/slice.pid" ] && kill "$(cat "$work/slice.pid")" 2>/dev/null
  printf '%s\t%s\t%s\t%s\t%s\n' "-" "(interrupted)" "KILLED" "-" "gpu_proof.sh received a signal" >> "$work/summary.tsv"
  write_report
  echo "report (interrupted): $report"
  exit 143
}
trap on_term TERM INT

# ---- run ------------------------------------------------------------------------------------------------

echo "gpu_proof: mode $mode; report $report; work $work" >&2
write_report
run_step env 30 "environment: GPU, driver, nvcc, python, packages" step_env
if run_step wheels 60 "install the carried wheels (benchmarks/gpu_wheels) into $work/site" step_wheels \
    && [ "$EMU" != 1 ]; then
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if run_step build 300 "build pyqwen with CUDA for sm_${arch:-?} (emulated: tests/cuda/emu_build.py)" step_build; then
  if [ "$EMU" = 1 ]; then
    GPU_PROOF_EMU_SO="$(awk '/^pyqwen_cuda_emu: /{print $2}' "$work/emu_paths.txt")"
    export GPU_PROOF_EMU_SO PYTHONPATH="$repo/benchmarks/gpu_proof_emu${PYTHONPATH:+:$PYTHONPATH}"
  fi
  start_slice_build
fi
run_step version 20 "pyqwen --version: CUDA architecture and cuBLAS" step_version
run_step fixtures 60 "convert the test models (tests/fixtures/hf) to GGUF" step_fixtures
run_step logits 120 "CUDA vs CPU logits on the test models ($logits_args)" step_logits
run_step slice 300 "the 27B-shaped slice (4 layers, real dimensions, Q4_K_M), built in the background" step_slice
run_step bench 120 "pyqwen bench --backend cuda $(bench_model) $bench_args" step_bench
run_step bench_gpu 90 "benchmarks/bench_gpu.py: device-side decode, with and without CUDA graphs" step_bench_gpu
run_step logits_slice 90 "CUDA vs CPU logits on the slice (64-token prompt, 32 decode steps)" step_logits_slice
run_step tests 180 "pytest $tests -k '$tests_k'" step_tests
run_step memcheck 60 "compute-sanitizer memcheck on a small run ($san_args)" step_memcheck
run_step racecheck 90 "compute-sanitizer racecheck on the same run" step_racecheck
run_step synccheck 60 "compute-sanitizer synccheck on the same run" step_synccheck

if [ -f "$work/slice.pid" ] && [ ! -f "$work/slice.rc" ]; then kill "$(cat "$work/slice.pid")" 2>/dev/null; fi
write_report
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  tar czf "$OUT/gpu_proof_logs.tar.gz" -C "$work" logs sections summary.tsv 2>/dev/null
fi
awk -F'\t' '{printf "%-3s %-13s %-48s %7s s\n", $1, $2, $3, $4}' "$work/summary.tsv" >&2
echo "report: $report"
