#!/usr/bin/env bash
# sass_report.sh: the decode GEMV's machine code, summarised per `mmv_kernel` instance and architecture --
# registers, spill bytes, spill STL/LDL inside the streaming loop / in other loops / outside loops (with
# their source lines), the IEEE slow-path subroutines called, and for the streaming loop: instructions per
# iteration, global loads per lane and iteration with their widths, and how many weight loads are in flight
# before the first instruction that reads one (benchmarks/sass_table.py explains each column). A report for
# the reader (benchmarks/gpu_roofline.md, "Memory-level parallelism of the decode GEMV"); not run in CI.
#
#   bash benchmarks/sass_report.sh                    # sm_89 and sm_120, markdown on stdout
#   ARCHS="89" FILTER="TQxK" bash benchmarks/sass_report.sh
#   KEEP=/tmp/sass bash benchmarks/sass_report.sh     # keep cubins, ptxas logs and disassembly there
#
# Needs nvcc (no GPU) and a disassembler: nvdisasm (preferred: source lines and ptxas's spill tags) or
# cuobjdump. Neither ships with every toolkit install; both are on the package index as wheels
# (`pip install nvidia-cuda-nvdisasm` / `nvidia-cuda-cuobjdump` into a scratch venv); the script looks in
# $NVDISASM / $CUOBJDUMP, PATH, nvcc's folder and the `nvidia` package of $PYTHON. The compile is
# ptxas_report.sh's (same sources, flags and -arch), with CUBIN=1; ~2 minutes per architecture on 1 core.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
ARCHS="${ARCHS:-89 120}"
FILTER="${FILTER:-mmv_kernel}"
NVCC="${NVCC:-nvcc}"

find_tool() {  # $1: tool name; prints its path or nothing
  local name="$1" p
  if p="$(command -v "$name" 2>/dev/null)"; then echo "$p"; return; fi
  p="$(dirname "$(command -v "$NVCC" 2>/dev/null || echo /nonexistent)")/$name"
  if [ -x "$p" ]; then echo "$p"; return; fi
  "$PY" - "$name" <<'EOF' 2>/dev/null || true
import glob, os, sys
try:
    import nvidia
except ImportError:
    sys.exit(0)
for root in nvidia.__path__:
    for p in sorted(glob.glob(os.path.join(root, "*", "bin", sys.argv[1]))):
        if os.access(p, os.X_OK):
            print(p)
            sys.exit(0)
EOF
}

nvdisasm="${NVDISASM:-$(find_tool nvdisasm)}"
cuobjdump="${CUOBJDUMP:-$(find_tool cuobjdump)}"
if ! command -v "$NVCC" > /dev/null 2>&1; then
  echo "sass_report: nvcc not found (set NVCC): nothing to disassemble" >&2
  exit 2
fi
if [ -z "$nvdisasm" ] && [ -z "$cuobjdump" ]; then
  echo "sass_report: no SASS disassembler (nvdisasm or cuobjdump) found -- install one into a scratch venv," >&2
  echo "  e.g. pip install nvidia-cuda-nvdisasm, and run with PYTHON=that venv's python (or set NVDISASM)" >&2
  exit 2
fi
if [ -z "$nvdisasm" ]; then
  echo "sass_report: nvdisasm not found, using cuobjdump -sass: no source lines; spills = STL/LDL off R1" >&2
fi

if [ -n "${KEEP:-}" ]; then out="$KEEP"; mkdir -p "$out"; else out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT; fi
KEEP="$out" SOURCES="cuda/launch/matvec.cu" CUBIN=1 TABLE=0 ARCHS="$ARCHS" JOBS="${JOBS:-1}" NVCC="$NVCC" \
  bash "$here/ptxas_report.sh" >&2

echo "# SASS report of the decode GEMV ($("$NVCC" --version | grep -o 'release [0-9.]*' || echo nvcc);" \
     "disassembler: $(basename "${nvdisasm:-$cuobjdump}"))"
echo
for arch in $ARCHS; do
  cubin="$out/sm_$arch/matvec.cu.cubin"
  sass="$out/sm_$arch/matvec.sass"
  if [ -n "$nvdisasm" ]; then "$nvdisasm" -gi -c "$cubin" > "$sass"; else "$cuobjdump" -sass "$cubin" > "$sass"; fi
  "$PY" "$here/sass_table.py" --sass "$sass" --log "$out/sm_$arch/matvec.cu.log" --arch "$arch" \
    --filter "$FILTER" --detail
done
