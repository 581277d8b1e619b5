"""benchmarks/sass_report.sh and sass_table.py without a toolkit: the script's syntax and its message when no
disassembler is found, and the SASS analysis on a recorded-style listing (the shapes nvdisasm -gi prints:
labels, source-line chains, ptxas's SpillRefill tags). Cheap; the real report needs nvcc + nvdisasm and is
a benchmark, not a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import sass_table  # noqa: E402

# A kernel body in nvdisasm -gi's shape: a prologue with a spilled value, a double-buffered loop (the weight
# load's registers are read by the next iteration's STS at the loop head), a tail path taken only at the end
# of a tensor, an epilogue with a refill and a call into an IEEE slow path.
LISTING = """\
//--------------------- .text.kern --------------------------
\t.section\t.text.kern,"ax",@progbits
\t.sectioninfo\t@"SHI_REGISTERS=56"
kern:
\t//## File "/x/matvec.cuh", line 262
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;
        /*0010*/                   STL [R1+0x6c], R9      (*"SpillRefill"*);
        /*0020*/                   LDG.E.NA.128.CONSTANT R4, [R10.64] ;
.L_x_1:
\t//## File "/x/matvec.cuh", line 288
        /*0030*/                   STS.128 [R34], R4 ;
        /*0040*/                   BRA.CONV ~URZ, `(.L_x_2) ;
        /*0050*/                   CALL.REL.NOINC `($__internal_9_$__cuda_sm70_warpsync) ;
.L_x_2:
        /*0060*/                   ISETP.GE.AND P0, PT, R33, R26, PT ;
        /*0070*/               @P0 BRA `(.L_x_3) ;
\t//## File "/x/matvec.cuh", line 153 inlined at "/x/matvec.cuh", line 292
        /*0080*/                   LDG.E.NA.128.CONSTANT R4, [R10.64] ;
        /*0090*/                   BRA `(.L_x_3) ;
        /*00a0*/              @!P1 LDG.E.U16.CONSTANT R16, [R10.64+0x2] ;
        /*00b0*/                   LOP3.LUT R4, R16, R4, RZ, 0xfc, !PT ;
.L_x_3:
\t//## File "/x/matvec_types.cuh", line 407 inlined at "/x/matvec.cuh", line 319
        /*00c0*/                   LDS.128 R12, [R35] ;
        /*00d0*/                   LDG.E.128 R16, [R30.64] ;
        /*00e0*/                   IDP.4A.S8.S8 R0, R12, R16, R0 ;
        /*00f0*/                   ISETP.LT.AND P0, PT, R33, R26, PT ;
        /*0100*/               @P0 BRA `(.L_x_1) ;
\t//## File "/x/matvec.cuh", line 368
        /*0110*/                   CALL.REL.NOINC `($__internal_7_$__cuda_sm3x_div_rn_noftz_f32_slowpath) ;
        /*0120*/                   LDL R6, [R1+0x6c]      (*"SpillRefill"*);
        /*0130*/                   STL.128 [R35], R8 ;
        /*0140*/                   EXIT ;
.L_x_4:
        /*0150*/                   BRA `(.L_x_4);
$__internal_7_$__cuda_sm3x_div_rn_noftz_f32_slowpath:
        /*0160*/                   FFMA R0, R1, R2, R3 ;
        /*0170*/                   RET.REL.NODEC R6 0x0 ;
$__internal_9_$__cuda_sm70_warpsync:
        /*0180*/                   WARPSYNC R13 ;
        /*0190*/                   RET.REL.NODEC R12 0x0 ;
"""


def test_listing_analysis():
    (f,) = sass_table.parse(LISTING)
    assert f.regs == 56 and f.labels[".L_x_1"] == 0x30
    assert sass_table.loops(f) == [(0x30, 0x100)]  # the trap `BRA self` after EXIT is no loop
    r = sass_table.analyse(f, "4/4")
    assert r.stream == (0x30, 0x100)
    assert (r.spill_in_stream, r.spill_in_other_loop, r.spill_outside) == (0, 0, 2)
    assert r.spill_lines == {"STL matvec.cuh:262": 1, "LDL matvec.cuh:368": 1}
    assert r.local_other == 1  # the STL.128 off R35: a local array, not a spill
    assert r.calls == ["div_rn_noftz_f32_slowpath"]  # warpsync is no slow path of the arithmetic
    # common path: head, STS, BRA.CONV taken over the call, the load, BRA over the tail, the compute, back edge
    assert [i.addr for i in sass_table.fast_path(f, r.stream)] == [0x30, 0x40, 0x60, 0x70, 0x80, 0x90, 0xC0, 0xD0,
                                                                    0xE0, 0xF0, 0x100]
    assert r.loads == {"tail 16-bit (static, rare path)": 1, "weights 128-bit": 1, "act 128-bit": 1}
    # the weight load is read first by the next iteration's STS, 7 instructions on; 4 precede it
    assert (r.in_flight, r.overlap_insns, r.head_insns) == (1, 7, 4)


def test_consumed_in_the_same_iteration_counts_no_overlap():
    # the load's registers read in the same iteration (no double buffering): the distance shrinks to 2
    (f,) = sass_table.parse(LISTING.replace("LDS.128 R12, [R35]", "LDS.128 R12, [R4]"))
    r = sass_table.analyse(f)
    assert (r.in_flight, r.overlap_insns) == (1, 2)


def test_report_script_syntax_and_missing_tool(tmp_path):
    script = BENCH / "sass_report.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # no disassembler anywhere: a clear message and exit 2, before any compile
    path = "/usr/bin:/bin"
    if any(shutil.which(t, path=path) for t in ("nvdisasm", "cuobjdump")):
        pytest.skip("a disassembler is installed system-wide")
    env = {**os.environ, "PATH": path, "NVCC": "/bin/true", "PYTHON": "/bin/false"}
    env.pop("NVDISASM", None), env.pop("CUOBJDUMP", None)
    p = subprocess.run(["/bin/bash", str(script)], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "no SASS disassembler" in p.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_report_script_lint():
    subprocess.run(["shellcheck", str(BENCH / "sass_report.sh"), str(BENCH / "ptxas_report.sh")], check=True)
