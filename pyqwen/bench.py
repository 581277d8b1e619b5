"""llama-bench-style throughput measurement (pp = prompt processing, tg = text generation).

Definitions (the same for pyqwen and, with `peer_llama_cpp=True`, for llama.cpp on the same GGUF):
- ppN: N random token ids prefilled into a fresh sequence state in chunks of n_batch; t/s = N / time.
- tgN: after a short untimed prompt (PROMPT_TG random tokens), N tokens decoded one at a time with
  greedy (argmax) feedback; t/s = N / time of those N single-token forward passes.
Each test runs once untimed as warm-up, then `reps` times; the table shows mean ± sample std of t/s.

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
from typing import Callable

import numpy as np

PROMPT_TG = 8   # untimed prompt before the tg test

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

    def ratio(self, test: str) -> float | None:
        a = next((r for r in self.rows if r.engine == "pyqwen" and r.test == test), None)
        b = next((r for r in self.rows if r.engine == "llama.cpp" and r.test == test), None)
        if a is None or b is None or b.mean <= 0:
            return None
        return a.mean / b.mean

    def to_dict(self) -> dict:
        d = {"model": asdict(self.model), "path": self.path, "n_batch": self.n_batch, "peer_error": self.peer_error,
             "rows": [dict(asdict(r), mean=r.mean, std=r.std) for r in self.rows]}
        d["ratios"] = {t: self.ratio(t) for t in dict.fromkeys(r.test for r in self.rows)}
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


# ---- pyqwen ---------------------------------------------------------------------------------------

def bench_pyqwen(model, n_prompt: int, n_gen: int, reps: int, seed: int = 1234) -> tuple[list[float], list[float]]:
    """(pp samples, tg samples) in tokens/s for a loaded pyqwen Model."""
    rng = np.random.default_rng(seed)
    V = model.n_vocab
    pp, tg = [], []

    def run_pp() -> float:
        toks = rng.integers(0, V, n_prompt).tolist()
        state = model.new_state(n_prompt)
        t0 = time.perf_counter()
        model.forward(state, toks, logits="last")
        return n_prompt / (time.perf_counter() - t0)

    def run_tg() -> float:
        prompt = rng.integers(0, V, PROMPT_TG).tolist()
        state = model.new_state(PROMPT_TG + n_gen)
        logits = model.forward(state, prompt, logits="last")
        t0 = time.perf_counter()
        for _ in range(n_gen):
            logits = model.forward(state, [int(np.argmax(logits))], logits="last")
        return n_gen / (time.perf_counter() - t0)

    if n_prompt > 0:
        pp = _timed(run_pp, reps)
    if n_gen > 0:
        tg = _timed(run_tg, reps)
    return pp, tg


# ---- llama.cpp (llama-cpp-python) ---------------------------------------------------------------

def llama_cpp_available() -> str | None:
    """None when llama_cpp imports, else the reason it does not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or a broken shared library
        return f"llama_cpp (llama-cpp-python) is not importable: {type(e).__name__}: {e}"
    return None


def bench_llama_cpp(path: str | Path, n_prompt: int, n_gen: int, reps: int, threads: int, n_batch: int,
                    seed: int = 1234) -> tuple[list[float], list[float]]:
    """The same pp/tg measurements through llama.cpp's llama_decode on the same GGUF."""
    import llama_cpp

    n_ctx = max(n_prompt, PROMPT_TG + n_gen, 16)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=n_batch, n_ubatch=n_batch, verbose=False)
    ctx = llm._ctx.ctx
    V = llm.n_vocab()
    rng = np.random.default_rng(seed)
    mem = llama_cpp.llama_get_memory(ctx)

    def clear():
        llama_cpp.llama_memory_clear(mem, True)

    def decode(tokens: list[int]) -> None:
        for i in range(0, len(tokens), n_batch):
            chunk = tokens[i:i + n_batch]
            arr = (llama_cpp.llama_token * len(chunk))(*chunk)
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        llama_cpp.llama_synchronize(ctx)

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(V,))

    def run_pp() -> float:
        toks = rng.integers(0, V, n_prompt).tolist()
        clear()
        t0 = time.perf_counter()
        decode(toks)
        return n_prompt / (time.perf_counter() - t0)

    def run_tg() -> float:
        clear()
        decode(rng.integers(0, V, PROMPT_TG).tolist())
        t0 = time.perf_counter()
        for _ in range(n_gen):
            decode([int(np.argmax(last_logits()))])
        return n_gen / (time.perf_counter() - t0)

    try:
        pp = _timed(run_pp, reps) if n_prompt > 0 else []
        tg = _timed(run_tg, reps) if n_gen > 0 else []
    finally:
        if hasattr(llm, "close"):
            llm.close()
    return pp, tg


# ---- driver ---------------------------------------------------------------------------------------

def run_bench(path: str | Path | None = None, *, n_prompt: int = 512, n_gen: int = 128, reps: int = 3,
              threads: int | None = None, n_batch: int = 256, backend: str = "auto", device: int = 0,
              peer_llama_cpp: bool = False, model=None, log: Callable[[str], None] | None = None) -> BenchReport:
    """Measure pyqwen (and optionally llama.cpp) on path (None = the demo model); see module doc."""
    from .gguf_file import GGUFFile
    from .model import Model, default_threads

    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise ValueError("need -p > 0 or -n > 0 (and neither negative)")
    if reps < 1:
        raise ValueError("repetitions must be >= 1")
    if n_batch < 1:
        raise ValueError("n_batch must be >= 1")
    threads = threads or default_threads()
    if threads < 1:
        raise ValueError("threads must be >= 1")
    log = log or (lambda s: None)
    if model is None:
        if path is None:
            from .demo import demo_model_path

            path = demo_model_path()
        n_ctx = max(n_prompt, PROMPT_TG + n_gen, 16)
        gf = GGUFFile.open(path)
        if n_ctx > gf.hparams.n_ctx_train:
            raise ValueError(f"-p/-n need a context of {n_ctx} tokens; the model was trained for "
                             f"{gf.hparams.n_ctx_train}")
        model = Model.load(path, n_ctx=n_ctx, threads=threads, n_batch=n_batch, backend=backend, device=device)
    path = Path(model.path)
    report = BenchReport(describe_model(model.gguf), str(path), n_batch)
    be = str(getattr(model, "backend", "cpu")).upper()
    log(f"pyqwen: pp{n_prompt} tg{n_gen} x{reps}, {threads} threads, n_batch {n_batch}")
    pp, tg = bench_pyqwen(model, n_prompt, n_gen, reps)
    peer = None
    if peer_llama_cpp:
        report.peer_error = llama_cpp_available()
        if report.peer_error is None:
            log("llama.cpp: same tests")
            try:
                peer = bench_llama_cpp(path, n_prompt, n_gen, reps, threads, n_batch)
            except Exception as e:  # e.g. llama.cpp too old for the architecture
                report.peer_error = f"llama.cpp failed: {type(e).__name__}: {e}"
    if n_gen > 0:
        from .memory_plan import decode_traffic, plan

        kv_type = model.kv_type if model.kv_type in ("f16", "f32") else "f16"
        report.decode_bytes = int(decode_traffic(plan(model.gguf, model.n_ctx, kv_type), PROMPT_TG + n_gen // 2)["total"])
    for i, (test, n) in enumerate((("pp", n_prompt), ("tg", n_gen))):
        if n <= 0:
            continue
        report.rows.append(BenchRow("pyqwen", be, threads, f"{test}{n}", n, (pp, tg)[i]))
        if peer is not None:
            report.rows.append(BenchRow("llama.cpp", "CPU", threads, f"{test}{n}", n, peer[i]))
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
            cells.append(f"{ratio:.2f}" if ratio is not None and math.isfinite(ratio) else "")
        rows.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if h in right else c.ljust(w)
                                 for c, w, h in zip(cells, widths, head)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if h in right else "-" * w for w, h in zip(widths, head)) + " |"
    out = [line(head), sep] + [line(c) for c in rows]
    tg = next((r for r in report.rows if r.engine == "pyqwen" and r.test.startswith("tg")), None)
    if tg is not None and report.decode_bytes:
        # The decode roofline: every step streams the weights and the recurrent state once.
        gbs = report.decode_bytes * tg.mean / 1e9
        out.append("")
        out.append(f"{tg.test} ({tg.backend}): {gbs:.1f} GB/s achieved ({report.decode_bytes / 1e6:.3f} MB moved "
                   f"per token: weights, recurrent state, KV)")
    if report.peer_error:
        out.append("")
        out.append(f"(llama.cpp not measured: {report.peer_error})")
    return "\n".join(out)
