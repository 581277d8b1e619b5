#!/usr/bin/env python3
"""Per-kernel SASS facts of the decode GEMV (`mmv_kernel`): where its local-memory traffic sits and how many
weight loads each thread keeps in flight. Input: `nvdisasm -gi` of a cubin (benchmarks/sass_report.sh makes
them); `cuobjdump -sass` text works too, without source lines or ptxas's spill tags.

    python benchmarks/sass_table.py --sass sm_89/matvec.sass [--log sm_89/matvec.cu.log] [--filter mmv_kernel]
                                    [--detail]

Per kernel instance: registers; spill bytes (from the `ptxas -v` log when given); STL/LDL instructions that
ptxas tags as spill/refill (nvdisasm's `(*"SpillRefill"*)`; with cuobjdump: those addressed off R1, the stack
pointer), split into inside the streaming loop / inside another loop / outside loops, with the source line
of the kernel they belong to; other STL/LDL (local arrays, e.g. the conv epilogue's taps); the slow-path
subroutines called (IEEE division, reciprocal, ...); and for the streaming loop -- the innermost loop that
holds the weight loads (`ld.global.nc.L1::no_allocate`, SASS `LDG.E.NA.128.CONSTANT`) -- its static size and
its instructions per iteration on the common path (fast_path: every lane active, the usual side of each
`if`), the global loads one lane issues per iteration by kind and width (plus the static count of the
16-bit tail loads, a path taken only at the end of a tensor), how many weight loads are issued before the
first instruction that reads any of them (following the path into the next iteration: matvec.cuh's
register double buffer shows as every weight load of an iteration being read first by the next
iteration's shared-memory store), that distance in instructions, and the instructions from the loop head
to the first weight load (the part of an iteration with none of the warp's weight loads in flight).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_CUOBJ_FUNC = re.compile(r"^\s*Function : (\S+)")
_REGS = re.compile(r'SHI_REGISTERS=(\d+)')
_LABEL = re.compile(r"^([.$\w][\w.$]*):\s*$")
_LOC = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*)$")
_REG = re.compile(r"\bR(\d+)\b")
_TARGET_LABEL = re.compile(r"`\(([^)]+)\)")
_TARGET_HEX = re.compile(r"\b0x([0-9a-f]+)\b")


@dataclass
class Insn:
    addr: int
    pred: str
    op: str
    args: str
    spill: bool  # ptxas's SpillRefill tag (or, without tags, an STL/LDL off the stack pointer R1)
    loc: tuple[tuple[str, int], ...]  # source lines, innermost first (nvdisasm -gi), () without line info

    @property
    def outer(self) -> str:
        return f"{self.loc[-1][0]}:{self.loc[-1][1]}" if self.loc else "?"


@dataclass
class Func:
    name: str
    regs: int = 0
    insns: list[Insn] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # label -> address of the next instruction
    tagged: bool = False  # whether the disassembler tagged spills (nvdisasm)


def parse(text: str) -> list[Func]:
    funcs: list[Func] = []
    f: Func | None = None
    loc: list[tuple[str, int]] = []
    loc_open = False  # the previous line was a source-line comment (a chain continues)
    pending: list[str] = []
    for line in text.splitlines():
        m = _SECTION.match(line) or _CUOBJ_FUNC.match(line)
        if m:
            f = Func(m.group(1), tagged="SpillRefill" in text)
            funcs.append(f)
            loc, loc_open, pending = [], False, []
            continue
        if f is None:
            continue
        if m := _REGS.search(line):
            f.regs = int(m.group(1))
            continue
        if m := _LOC.search(line):
            if not loc_open:
                loc = []
            loc.append((Path(m.group(1)).name, int(m.group(2))))
            loc_open = m.group(3) is not None
            continue
        if m := _LABEL.match(line.strip()):
            pending.append(m.group(1))
            continue
        if m := _INSN.match(line):
            addr = int(m.group(1), 16)
            for lab in pending:
                f.labels[lab] = addr
            pending = []
            args = m.group(4)
            op = m.group(3)
            tagged = "SpillRefill" in args
            args = re.sub(r"\(\*.*?\*\)", "", args).split("/*")[0].strip().rstrip(";").strip()
            if not f.tagged and op.startswith(("STL", "LDL")):
                tagged = bool(re.search(r"\[R1(\+0x[0-9a-f]+)?\]", args))
            f.insns.append(Insn(addr, (m.group(2) or "").strip(), op, args, tagged, tuple(loc)))
            loc_open = False
    return funcs


def branch_target(f: Func, ins: Insn) -> int | None:
    if m := _TARGET_LABEL.search(ins.args):
        return f.labels.get(m.group(1))
    if m := _TARGET_HEX.search(ins.args):
        return int(m.group(1), 16)
    return None


def loops(f: Func) -> list[tuple[int, int]]:
    """(first, last) address of every loop: a backward BRA (not the trap `BRA self` after EXIT)."""
    out = []
    for ins in f.insns:
        if ins.op.startswith("BRA") and not ins.op.startswith(("BRA.DIV", "BRA.CONV")):
            t = branch_target(f, ins)
            if t is not None and t < ins.addr:
                out.append((t, ins.addr))
    return out


def subroutines(f: Func) -> list[tuple[str, int, int]]:
    """(name, first, end) of the compiler's helper routines after the kernel body ($__internal_*)."""
    starts = sorted((a, lab) for lab, a in f.labels.items() if lab.startswith("$__internal"))
    end = f.insns[-1].addr + 16 if f.insns else 0
    out = []
    for i, (a, lab) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else end
        short = re.sub(r"^\$__internal_\d+_\$__cuda_(sm\w+?_)?", "", lab)
        out.append((short, a, nxt))
    return out


def fast_path(f: Func, loop: tuple[int, int]) -> list[Insn]:
    """One iteration of a loop on its common path, every lane active: from the loop head, conditional
    branches not taken (the compiler branches around the bodies of `if`s that usually hold -- a piece
    inside the tensor, a unit inside the row, a token inside the launch), unconditional branches and
    BRA.CONV (converged warp: the warpsync call skipped) taken, calls skipped; until the head comes round."""
    at = {i.addr: k for k, i in enumerate(f.insns)}
    k = at[loop[0]]
    out: list[Insn] = []
    while len(out) < 20000:
        i = f.insns[k]
        out.append(i)
        conditional = bool(i.pred) or bool(re.match(r"!?U?P\d", i.args))  # @P0 BRA / BRA.U !UP0, ...
        taken = not conditional or i.op.startswith("BRA.CONV")
        if i.op.startswith("BRA") and not i.op.startswith("BRA.DIV") and taken:
            t = branch_target(f, i)
            if t == loop[0] or t is None or t not in at or not loop[0] <= t <= loop[1]:
                break
            k = at[t]
        else:
            k += 1
            if k >= len(f.insns) or f.insns[k].addr > loop[1]:
                break
    return out


def width(op: str) -> int:
    """Bytes of a load/store from its SASS modifiers."""
    for mod, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if mod in op:
            return b
    return 4


def dest_regs(ins: Insn) -> set[int]:
    regs = _REG.findall(ins.args.split(",")[0])
    if not regs:
        return set()
    r = int(regs[0])
    return set(range(r, r + max(1, width(ins.op) // 4)))


def reads(ins: Insn) -> set[int]:
    """Registers an instruction reads (a store's data operand widened by its width; the destination of
    other instructions excluded). Conservative enough for a first-use scan."""
    parts = [p.strip() for p in ins.args.split(",")]
    src = parts if ins.op.startswith(("ST", "RED")) else parts[1:]  # stores and reductions have no destination
    out: set[int] = set()
    for p in src:
        for r in _REG.findall(p):
            r = int(r)
            n = max(1, width(ins.op) // 4) if ins.op.startswith("ST") and "[" not in p else 1
            out.update(range(r, r + n))
    return out


@dataclass
class Report:
    name: str
    regs: int
    spill_bytes: str
    spill_in_stream: int
    spill_in_other_loop: int
    spill_outside: int
    spill_lines: dict[str, int]
    local_other: int  # STL/LDL that are not spills (local arrays)
    calls: list[str]
    stream: tuple[int, int] | None
    stream_insns: int
    path_insns: int  # instructions of one iteration on the common path (fast_path)
    loads: dict[str, int]  # kind/width -> count in the streaming loop
    weight_loads: int
    in_flight: int  # weight loads issued before the first read of any of them
    overlap_insns: int  # distance (instructions on the path) from the last weight load to the first read of one
    head_insns: int  # instructions from the loop head to the first weight load (nothing of the warp in flight)


def analyse(f: Func, spill_bytes: str = "") -> Report:
    lps = loops(f)
    subs = subroutines(f)
    body_end = subs[0][1] if subs else (f.insns[-1].addr + 16 if f.insns else 0)
    weights = [i for i in f.insns if i.op.startswith("LDG") and ".NA" in i.op and i.addr < body_end]
    stream = None
    if weights:
        cands = [lp for lp in lps if any(lp[0] <= w.addr <= lp[1] for w in weights)]
        if cands:
            stream = min(cands, key=lambda lp: lp[1] - lp[0])

    def where(ins: Insn) -> str:
        if ins.addr >= body_end:
            return "sub"
        if stream and stream[0] <= ins.addr <= stream[1]:
            return "stream"
        if any(a <= ins.addr <= b for a, b in lps):
            return "loop"
        return "outside"

    spills = [i for i in f.insns if i.op.startswith(("STL", "LDL")) and i.spill]
    locs = [i for i in f.insns if i.op.startswith(("STL", "LDL")) and not i.spill]
    lines: dict[str, int] = {}
    for s in spills:
        key = f"{s.op.split('.')[0]} {s.outer}" + (" (in a subroutine)" if where(s) == "sub" else "")
        lines[key] = lines.get(key, 0) + 1
    calls = sorted({sub for sub, a, b in subs if not sub.endswith(("warpsync", "shflsync_bfly_p", "shflsync_idx_p",
                                                                     "shflsync_down_p", "shflsync_up_p"))})
    if not subs and not f.tagged:
        calls = ["? (cuobjdump names no subroutines)"]
    loads: dict[str, int] = {}
    in_flight = overlap = n_stream = n_path = head = 0
    if stream:
        body = [i for i in f.insns if stream[0] <= i.addr <= stream[1]]
        n_stream = len(body)
        loads["tail 16-bit (static, rare path)"] = sum(i.op.startswith("LDG") and ".U16" in i.op and ".CONSTANT" in i.op
                                                       for i in body)
        path = fast_path(f, stream)
        n_path = len(path)
        head = next((k for k, i in enumerate(path) if i.op.startswith("LDG") and ".NA" in i.op), 0)
        for i in path:
            if i.op.startswith(("LDG", "LD.")):
                kind = "weights" if ".NA" in i.op else "act"
                key = f"{kind} {8 * width(i.op)}-bit"
                loads[key] = loads.get(key, 0) + 1
        # first read of any weight load's registers, following the path on into the next iteration
        pending: dict[int, set[int]] = {}
        for k in range(2 * len(path)):
            i = path[k % len(path)]
            if k < len(path) and i.op.startswith("LDG") and ".NA" in i.op:
                pending[k] = dest_regs(i)
                continue
            if pending and any(reads(i) & regs for regs in pending.values()):
                in_flight = len(pending)
                overlap = k - max(pending)
                break
        else:
            in_flight = len(pending)
    return Report(f.name, f.regs, spill_bytes, sum(where(s) == "stream" for s in spills),
                  sum(where(s) == "loop" for s in spills), sum(where(s) in ("outside", "sub") for s in spills),
                  lines, len(locs), calls, stream, n_stream, n_path, loads, len(weights), in_flight, overlap, head)


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return {n: d.replace("pq::cuda::", "").replace("(pq::cuda::MmvArgs)", "").replace("void ", "")
            for n, d in zip(names, out.splitlines())}


def usage_from_log(log: Path | None) -> dict:
    """{mangled name: ptxas_table.Usage} (registers, spill bytes) of the ptxas -v log."""
    if log is None or not log.exists():
        return {}
    sys.path.insert(0, str(Path(__file__).parent))
    import ptxas_table  # the one parser of ptxas -v logs

    return {name: u for (name, _arch), u in ptxas_table.parse_log(log.read_text()).items()}


def render(reports: list[Report], arch: str, detail: bool) -> str:
    names = demangle([r.name for r in reports])
    head = ("| kernel | regs | spill B st/ld | spill STL/LDL: stream loop / other loops / outside | "
            "non-spill STL/LDL | slow-path calls | stream loop insns: static / per iteration | "
            "loads per lane and iteration | weight loads in flight per lane | insns: loop head to first weight load / "
            "last weight load to first use |")
    rows = [f"### sm_{arch}", "", head, "|" + "---|" * 10]
    for r in sorted(reports, key=lambda r: names[r.name]):
        loads = ", ".join(f"{v} {k}" for k, v in sorted(r.loads.items())) or "-"
        rows.append(f"| `{names[r.name]}` | {r.regs} | {r.spill_bytes or '?'} | {r.spill_in_stream} / "
                    f"{r.spill_in_other_loop} / {r.spill_outside} | {r.local_other} | {', '.join(r.calls) or '-'} | "
                    f"{r.stream_insns} / {r.path_insns} | {loads} | {r.in_flight} | "
                    f"{r.head_insns} / {r.overlap_insns} |")
    if detail:
        rows.append("")
        for r in sorted(reports, key=lambda r: names[r.name]):
            if r.spill_lines:
                rows.append(f"- `{names[r.name]}` spills at: "
                            + ", ".join(f"{k} x{v}" for k, v in sorted(r.spill_lines.items())))
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sass", type=Path, required=True, help="nvdisasm -gi (or cuobjdump -sass) output")
    ap.add_argument("--log", type=Path, help="the ptxas -v log of the same compile (spill bytes)")
    ap.add_argument("--arch", default="?")
    ap.add_argument("--filter", default="mmv_kernel", help="substring of the mangled names to report")
    ap.add_argument("--detail", action="store_true", help="also list the source line of every spill")
    a = ap.parse_args()
    funcs = [f for f in parse(a.sass.read_text()) if a.filter in f.name and f.insns]
    if not funcs:
        print(f"sass_table: no function matching {a.filter!r} in {a.sass}", file=sys.stderr)
        return 1
    usage = usage_from_log(a.log)
    reports = []
    for f in funcs:
        u = usage.get(f.name)
        if u is not None and not f.regs:
            f.regs = u.regs  # nvdisasm prints SHI_REGISTERS for some architectures only
        reports.append(analyse(f, f"{u.spill_st}/{u.spill_ld}" if u is not None else ""))
    print(render(reports, a.arch, a.detail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
