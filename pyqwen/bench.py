"""llama-bench-style throughput measurement (pp = prompt processing, tg = text generation).

Definitions (the same for pyqwen and, with `peer_llama_cpp=True`, for llama.cpp on the same GGUF):
- ppN: N random token ids prefilled into a fresh sequence state in chunks of n_batch; t/s = N / time.
- tgN: after a short untimed prompt (PROMPT_TG random tokens), N tokens decoded one at a time with
  greedy (argmax) feedback; t/s = N / time of those N single-token forward passes.
Each test runs once untimed as warm-up (a ppN test with min(N, 512) tokens), then `reps` times, the
engines' repetitions alternating; the table shows mean ± sample std of t/s.

    from pyqwen.bench import run_bench, format_markdown
    report = run_bench("model.gguf", n_prompt=512, n_gen=128, reps=3, threads=8, peer_llama_cpp=True)
    print(format_markdown(report))
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .llama_cpp_peer import extra_bufts_usable, llama_cpp_available, open_llama  # noqa: F401 (re-exported)

PROMPT_TG = 8   # untimed prompt before the tg test
# A ratio whose highest and lowest values over the repetitions differ by more than this factor is flagged.
UNRELIABLE_SPREAD = 1.5
WARMUP_PP = 512  # the untimed warm-up of a ppN test prefills min(N, WARMUP_PP) tokens

# llama.cpp's llama_model_ftype_name() for the file types a qwen35 GGUF is likely to carry.
_FTYPE_NAMES = {
    0: "all F32", 1: "F16", 7: "Q8_0", 2: "Q4_0", 3: "Q4_1", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K - Medium", 11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large",
    14: "Q4_K - Small", 15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K",
    19: "IQ2_XXS - 2.0625 bpw", 20: "IQ2_XS - 2.3125 bpw", 21: "Q2_K - Small", 22: "IQ3_XS - 3.3 bpw",
    23: "IQ3_XXS - 3.0625 bpw", 24: "IQ1_S - 1.5625 bpw", 25: "IQ4_NL - 4.5 bpw", 26: "IQ3_S - 3.4375 bpw",
    27: "IQ3_S mix - 3.66 bpw", 28: "IQ2_S - 2.5 bpw", 29: "IQ2_M - 2.7 bpw", 30: "IQ4_XS - 4.25 bpw",
    31: "IQ1_M - 1.75 bpw", 32: "BF16",
}


@dataclass
class ModelDesc:
    name: str        # e.g. "qwen35 27B Q4_K - Medium"
    size: int        # bytes of tensor data in the file
    n_params: int    # elements of every tensor in the file

    @property
    def size_str(self) -> str:
        if self.size < 1 << 30:
            return f"{self.size / 2**20:.2f} MiB"
        return f"{self.size / 2**30:.2f} GiB"

    @property
    def params_str(self) -> str:
        if self.n_params < 1_000_000_000:
            return f"{self.n_params / 1e6:.2f} M"
        return f"{self.n_params / 1e9:.2f} B"


@dataclass
class BenchRow:
    engine: str              # "pyqwen" or "llama.cpp"
    backend: str             # "CPU", "CUDA"
    threads: int
    test: str                # "pp512", "tg128"
    n_tokens: int
    samples: list[float] = field(default_factory=list)   # t/s of each repetition

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else 0.0

    @property
    def std(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


@dataclass
class BenchReport:
    model: ModelDesc
    path: str
    n_batch: int
    rows: list[BenchRow] = field(default_factory=list)
    peer_error: str | None = None    # why llama.cpp was not measured, when it was asked for
    decode_bytes: int = 0            # DRAM bytes one decode step moves (weights, state, KV) at the tg context
    peer_note: str | None = None     # how llama.cpp was configured, when not as it defaults
    read_bandwidth: float | None = None   # GB/s this machine reads with the same threads (measured), if asked
    spec_notes: dict = field(default_factory=dict)  # test -> acceptance summary of a speculative tg row
    decode_nodes: int = 0            # CUDA: kernels + copies of one decode step's graph (issue 10's count)

    def ratio(self, test: str) -> float | None:
        a = next((r for r in self.rows if r.engine == "pyqwen" and r.test == test), None)
        b = next((r for r in self.rows if r.engine == "llama.cpp" and r.test == test), None)
        if a is None or b is None or b.mean <= 0:
            return None
        return a.mean / b.mean

    def ratio_range(self, test: str) -> tuple[float, float] | None:
        """Lowest and highest ratio the repetitions allow (min/max and max/min of the two sample sets)."""
        a = next((r for r in self.rows if r.engine == "pyqwen" and r.test == test), None)
        b = next((r for r in self.rows if r.engine == "llama.cpp" and r.test == test), None)
        if a is None or b is None or not a.samples or not b.samples or min(b.samples) <= 0:
            return None
        return min(a.samples) / max(b.samples), max(a.samples) / min(b.samples)

    def warnings(self) -> list[str]:
        """Tests whose ratio the spread of the repetitions makes meaningless (a loaded machine: llama.cpp's
        spinning worker threads collapse under other load, which once showed as a 16x 'speed-up')."""
        out = []
        for test in dict.fromkeys(r.test for r in self.rows):
            rr = self.ratio_range(test)
            if rr is not None and rr[1] > UNRELIABLE_SPREAD * rr[0]:
                out.append(f"warning: {test}: over the repetitions the ratio ranges from {rr[0]:.2f} to {rr[1]:.2f}; "
                           "the machine is too busy for it to mean anything (rerun on an idle machine, "
                           "with fewer threads or more repetitions)")
        return out

    def to_dict(self) -> dict:
        d = {"model": asdict(self.model), "path": self.path, "n_batch": self.n_batch, "peer_error": self.peer_error,
             "decode_bytes": self.decode_bytes, "decode_nodes": self.decode_nodes,
             "read_bandwidth_gbs": self.read_bandwidth,
             "rows": [dict(asdict(r), mean=r.mean, std=r.std) for r in self.rows], "spec": self.spec_notes}
        tests = list(dict.fromkeys(r.test for r in self.rows))
        d["ratios"] = {t: self.ratio(t) for t in tests}
        d["ratio_ranges"] = {t: self.ratio_range(t) for t in tests}
        d["warnings"] = self.warnings()
        return d


def describe_model(gguf) -> ModelDesc:
    """llama-bench's model/size/params columns from a GGUFFile (no C++ extension needed)."""
    md = gguf.metadata
    arch = md.get("general.architecture", "?")
    label = md.get("general.size_label")
    if not isinstance(label, str) or not label:
        label = "?B"
    ft = md.get("general.file_type")
    ftype = _FTYPE_NAMES.get(ft, f"ftype {ft}") if isinstance(ft, int) else "?"
    size = sum(t.nbytes for t in gguf.tensors.values())
    n_params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in gguf.tensors.values())
    return ModelDesc(f"{arch} {label} {ftype}", size, n_params)


def _timed(fn: Callable[[], int], reps: int) -> list[float]:
    """Run fn once as warm-up, then reps times; fn returns the token count it timed itself."""
    fn()
    return [fn() for _ in range(reps)]


# ---- pyqwen ----------------------------------------------------------------------------------------

class PyqwenRunner:
    """One pp or tg measurement at a time on a loaded pyqwen Model (so they can be interleaved with llama.cpp)."""

    def __init__(self, model, seed: int = 1234):
        self.model = model
        self.rng = np.random.default_rng(seed)

    def pp(self, n_prompt: int) -> float:
        toks = self.rng.integers(0, self.model.n_vocab, n_prompt).tolist()
        state = self.model.new_state(n_prompt)
        t0 = time.perf_counter()
        self.model.forward(state, toks, logits="last")
        return n_prompt / (time.perf_counter() - t0)

    def tg(self, n_gen: int) -> float:
        m = self.model
        state = m.new_state(PROMPT_TG + n_gen)
        logits = m.forward(state, self.rng.integers(0, m.n_vocab, PROMPT_TG).tolist(), logits="last")
        t0 = time.perf_counter()
        for _ in range(n_gen):
            logits = m.forward(state, [int(np.argmax(logits))], logits="last")
        return n_gen / (time.perf_counter() - t0)

    def tg_generate(self, n_gen: int, spec: str, prompt: list[int], acc: "SpecTally") -> float:
        """Greedy generation of n_gen tokens from `prompt` through the generation loop with `spec`
        (decode time only, as tg); the drafted/accepted counts go to acc."""
        g = self.model.generate(prompt, max_tokens=n_gen, temperature=0, spec=spec, stop=[])
        for _ in g:
            pass
        acc.add(g.stats)
        return g.stats.decode_tokens_per_second

    def close(self) -> None:
        pass


@dataclass
class SpecTally:
    """Drafted and accepted tokens over the repetitions of a speculative tg row."""
    verifies: int = 0
    drafted: int = 0
    accepted: int = 0

    def add(self, stats) -> None:
        self.verifies += stats.verify_steps
        self.drafted += stats.draft_tokens
        self.accepted += stats.accepted_tokens

    def summary(self) -> str:
        if not self.verifies:
            return "no drafts"
        return (f"{self.accepted}/{self.drafted} drafts accepted ({100 * self.accepted / self.drafted:.0f}%), "
                f"{(self.accepted + self.verifies) / self.verifies:.2f} tokens per verification")


# The text speculative tg rows continue: code with the repetition agents produce (a function, then a
# near copy of it), so prompt lookup has something to find, and prose-like comments for the MTP head.
SPEC_PROMPT = (
    "def moving_average(values, window):\n"
    "    \"\"\"Return the moving average of values over the given window.\"\"\"\n"
    "    if window <= 0:\n        raise ValueError(\"window must be positive\")\n"
    "    out = []\n    total = 0.0\n    for i, v in enumerate(values):\n        total += v\n"
    "        if i >= window:\n            total -= values[i - window]\n"
    "        out.append(total / min(i + 1, window))\n    return out\n\n\n"
    "def moving_sum(values, window):\n"
    "    \"\"\"Return the moving sum of values over the given window.\"\"\"\n"
)


def bench_pyqwen(model, n_prompt: int, n_gen: int, reps: int, seed: int = 1234) -> tuple[list[float], list[float]]:
    """(pp samples, tg samples) in tokens/s for a loaded pyqwen Model."""
    r = PyqwenRunner(model, seed)
    pp = _timed(lambda: r.pp(n_prompt), reps) if n_prompt > 0 else []
    tg = _timed(lambda: r.tg(n_gen), reps) if n_gen > 0 else []
    return pp, tg


# ---- llama.cpp (llama-cpp-python) ---------------------------------------------------------------

class LlamaCppRunner:
    """The same pp/tg measurements through llama.cpp's llama_decode on the same GGUF."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int, n_batch: int, seed: int = 1234):
        import llama_cpp

        self.lc = llama_cpp
        self.n_batch = n_batch
        # llama.cpp's fastest CPU path (AMX / repacked weights) when it runs this file here, else its plain
        # kernels (see llama_cpp_peer): the table says which.
        self.extra_bufts = extra_bufts_usable(str(path))
        self.llm = open_llama(path, extra_bufts=self.extra_bufts, n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, n_batch=n_batch, n_ubatch=n_batch, verbose=False)
        self.ctx = self.llm._ctx.ctx
        self.V = self.llm.n_vocab()
        self.rng = np.random.default_rng(seed)
        self.mem = llama_cpp.llama_get_memory(self.ctx)

    def _decode(self, tokens: list[int]) -> None:
        lc = self.lc
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            arr = (lc.llama_token * len(chunk))(*chunk)
            rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        lc.llama_synchronize(self.ctx)

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, -1), shape=(self.V,))

    def pp(self, n_prompt: int) -> float:
        toks = self.rng.integers(0, self.V, n_prompt).tolist()
        self.lc.llama_memory_clear(self.mem, True)
        t0 = time.perf_counter()
        self._decode(toks)
        return n_prompt / (time.perf_counter() - t0)

    def tg(self, n_gen: int) -> float:
        self.lc.llama_memory_clear(self.mem, True)
        self._decode(self.rng.integers(0, self.V, PROMPT_TG).tolist())
        t0 = time.perf_counter()
        for _ in range(n_gen):
            self._decode([int(np.argmax(self._last_logits()))])
        return n_gen / (time.perf_counter() - t0)

    def close(self) -> None:
        if hasattr(self.llm, "close"):
            self.llm.close()


def bench_llama_cpp(path: str | Path, n_prompt: int, n_gen: int, reps: int, threads: int, n_batch: int,
                    seed: int = 1234) -> tuple[list[float], list[float]]:
    """The same pp/tg measurements through llama.cpp's llama_decode on the same GGUF."""
    r = LlamaCppRunner(path, max(n_prompt, PROMPT_TG + n_gen, 16), threads, n_batch, seed)
    try:
        pp = _timed(lambda: r.pp(n_prompt), reps) if n_prompt > 0 else []
        tg = _timed(lambda: r.tg(n_gen), reps) if n_gen > 0 else []
    finally:
        r.close()
    return pp, tg


def read_bandwidth_gbs(threads: int, nbytes: int = 1 << 30, reps: int = 3) -> float | None:
    """This machine's DRAM read bandwidth with `threads` threads (best of reps), the decode roofline;
    None when the C++ extension lacks the probe."""
    try:
        from . import _core
    except ImportError:
        return None
    fn = getattr(_core, "read_bandwidth", None)
    return float(fn(threads, nbytes, reps)) / 1e9 if fn is not None else None


# ---- driver ---------------------------------------------------------------------------------------

def _prompt_sizes(n_prompt: int | Sequence[int]) -> list[int]:
    sizes = [n_prompt] if isinstance(n_prompt, int) else list(n_prompt)
    return [n for n in sizes if n != 0]


def run_bench(path: str | Path | None = None, *, n_prompt: int | Sequence[int] = 512, n_gen: int = 128,
              reps: int = 3, threads: int | None = None, n_batch: int = 256, backend: str = "auto",
              device: int = 0, peer_llama_cpp: bool = False, model=None, measure_bandwidth: bool = False,
              spec: Sequence[str] = (), log: Callable[[str], None] | None = None) -> BenchReport:
    """Measure pyqwen (and optionally llama.cpp) on path (None = the demo model); see module doc.

    n_prompt may be a list (one pp row each, e.g. [512, 8192]). With the peer, both engines are loaded
    at once and their repetitions alternate (pyqwen, llama.cpp, pyqwen, ...), so a change of machine
    load during the run hits both alike and the ratio stays meaningful. spec: speculative-decoding modes
    to measure as extra rows `tgN+MODE` (greedy generation of SPEC_PROMPT's continuation through the
    generation loop, with `tgN+off` the same loop without drafts, interleaved with them).
    """
    from .gguf_file import GGUFFile
    from .model import Model, default_threads

    sizes = _prompt_sizes(n_prompt)
    if any(n < 0 for n in sizes) or n_gen < 0 or (not sizes and n_gen == 0):
        raise ValueError("need -p > 0 or -n > 0 (and neither negative)")
    if reps < 1:
        raise ValueError("repetitions must be >= 1")
    if n_batch < 1:
        raise ValueError("n_batch must be >= 1")
    threads = threads or default_threads()
    if threads < 1:
        raise ValueError("threads must be >= 1")
    log = log or (lambda s: None)
    n_ctx = max([*sizes, PROMPT_TG + n_gen, 16])
    if model is None:
        if path is None:
            from .demo import demo_model_path

            path = demo_model_path()
        gf = GGUFFile.open(path)
        if n_ctx > gf.hparams.n_ctx_train:
            raise ValueError(f"-p/-n need a context of {n_ctx} tokens; the model was trained for "
                             f"{gf.hparams.n_ctx_train}")
        model = Model.load(path, n_ctx=n_ctx + 256, threads=threads, n_batch=n_batch, backend=backend,
                           device=device, spec="auto" if spec else "off")
    path = Path(model.path)
    report = BenchReport(describe_model(model.gguf), str(path), n_batch)
    be = str(getattr(model, "backend", "cpu")).upper()
    runners = [("pyqwen", be, PyqwenRunner(model))]
    if peer_llama_cpp:
        report.peer_error = llama_cpp_available()
        if report.peer_error is None:
            try:
                runners.append(("llama.cpp", "CPU", LlamaCppRunner(path, n_ctx, threads, n_batch)))
                if not runners[-1][2].extra_bufts:
                    report.peer_note = ("use_extra_bufts=False: with its defaults (AMX buffers) llama.cpp crashed "
                                        "on this file here; this also disables its repacked GEMM weights")
            except Exception as e:  # e.g. llama.cpp too old for the architecture
                report.peer_error = f"llama.cpp failed: {type(e).__name__}: {e}"
    tests = [("pp", n) for n in sizes] + ([("tg", n_gen)] if n_gen > 0 else [])
    try:
        for kind, n in tests:
            rows = [BenchRow(engine, b, threads, f"{kind}{n}", n) for engine, b, _ in runners]
            log(f"{kind}{n}: warm-up, then {reps} interleaved repetitions of {', '.join(e for e, _, _ in runners)}")
            for rep in range(reps + 1):
                for row, (engine, _, r) in zip(rows, runners):
                    # The warm-up (rep 0) pages the weights in and sizes the buffers; for a long prompt
                    # its first WARMUP_PP tokens do that as well as all of them would.
                    m = min(n, WARMUP_PP) if rep == 0 and kind == "pp" else n
                    try:
                        v = r.pp(m) if kind == "pp" else r.tg(n)
                    except Exception as e:
                        if engine == "pyqwen":
                            raise
                        report.peer_error = f"llama.cpp failed: {type(e).__name__}: {e}"
                        continue
                    if rep > 0:  # rep 0 is the warm-up
                        row.samples.append(v)
            report.rows.extend(r for r in rows if r.engine == "pyqwen" or r.samples)
        spec = [m for m in spec if m != "off"]
        if spec and n_gen > 0:
            modes = ["off", *spec]
            prompt = model.tokenize(SPEC_PROMPT, parse_special=False)
            r = runners[0][2]
            rows = {m: BenchRow("pyqwen", be, threads, f"tg{n_gen}+{m}", n_gen) for m in modes}
            tally = {m: SpecTally() for m in modes}
            log(f"tg{n_gen} with speculative decoding ({', '.join(spec)}) and without, interleaved")
            for rep in range(reps + 1):
                for m in modes:
                    v = r.tg_generate(n_gen, m, prompt, tally[m] if rep > 0 else SpecTally())
                    if rep > 0:
                        rows[m].samples.append(v)
            report.rows.extend(rows.values())
            report.spec_notes = {rows[m].test: tally[m].summary() for m in spec}
    finally:
        for _, _, r in runners[1:]:
            r.close()
    if n_gen > 0:
        from .memory_plan import decode_traffic, plan

        kv_type = model.kv_type if model.kv_type in ("f16", "f32") else "f16"
        report.decode_bytes = int(decode_traffic(plan(model.gguf, model.n_ctx, kv_type), PROMPT_TG + n_gen // 2)["total"])
        stats = getattr(getattr(model, "_core", None), "graph_stats", None)
        if isinstance(stats, dict):
            report.decode_nodes = int(stats.get("body_nodes", 0))
        if measure_bandwidth:
            report.read_bandwidth = read_bandwidth_gbs(threads)
    return report


def format_markdown(report: BenchReport) -> str:
    """llama-bench's markdown table; with llama.cpp rows, an engine in the backend column and a ratio column."""
    peer = any(r.engine == "llama.cpp" for r in report.rows)
    head = ["model", "size", "params", "backend", "threads", "test", "t/s"]
    right = {"size", "params", "threads", "test", "t/s", "pyqwen/llama.cpp"}
    if peer:
        head.append("pyqwen/llama.cpp")
    rows = []
    for r in report.rows:
        backend = f"{r.backend} ({r.engine})" if peer else r.backend
        cells = [report.model.name, report.model.size_str, report.model.params_str, backend, str(r.threads),
                 r.test, f"{r.mean:.2f} ± {r.std:.2f}"]
        if peer:
            ratio = report.ratio(r.test) if r.engine == "pyqwen" else None
            rr = report.ratio_range(r.test)
            cell = ""
            if ratio is not None and math.isfinite(ratio):
                cell = f"{ratio:.2f}" + (f" ({rr[0]:.2f}-{rr[1]:.2f})" if rr is not None and len(r.samples) > 1 else "")
            cells.append(cell)
        rows.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if h in right else c.ljust(w)
                                 for c, w, h in zip(cells, widths, head)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if h in right else "-" * w for w, h in zip(widths, head)) + " |"
    out = [line(head), sep] + [line(c) for c in rows]
    if report.decode_bytes:
        # The decode roofline: every step streams the weights and the recurrent state once.
        for r in report.rows:
            if not r.test.startswith("tg") or "+" in r.test:  # speculative rows: per emitted token, not step
                continue
            gbs = report.decode_bytes * r.mean / 1e9
            who = r.backend if r.engine == "pyqwen" else f"{r.backend}, {r.engine}"
            line = (f"{r.test} ({who}): {gbs:.1f} GB/s achieved ({report.decode_bytes / 1e6:.3f} MB moved "
                    f"per token: weights, recurrent state, KV)")
            if report.read_bandwidth:
                line += f", {100 * gbs / report.read_bandwidth:.0f}% of the {report.read_bandwidth:.1f} GB/s measured read bandwidth"
            out.append("")
            out.append(line)
    if report.decode_nodes:
        out.append("")
        out.append(f"decode step: {report.decode_nodes} graph nodes (kernels + copies) per token")
    base = next((r for r in report.rows if r.test.endswith("+off")), None)
    for test, note in report.spec_notes.items():
        row = next(r for r in report.rows if r.test == test)
        x = f", {row.mean / base.mean:.2f}x {base.test}" if base is not None and base.mean > 0 else ""
        out.append("")
        out.append(f"{test}: {note}{x}")
    if any(r.engine == "llama.cpp" for r in report.rows) and report.peer_note:
        out.append("")
        out.append(f"(llama.cpp: {report.peer_note})")
    if report.peer_error:
        out.append("")
        out.append(f"(llama.cpp not measured: {report.peer_error})")
    warnings = report.warnings()
    if warnings:
        out.append("")
        out.extend(warnings)
    return "\n".join(out)
