"""The `pyqwen` command line: generate, chat, info, bench, convert (and serve, when installed).

    pyqwen generate -m model.gguf -p "The capital of France is" -n 32 --temp 0
    pyqwen generate --hf unsloth/Qwen3.6-27B-GGUF:Q4_K_M --chat -p "Why is the sky blue?"
    pyqwen chat -m model.gguf --system "You are terse."
    pyqwen info model.gguf --ctx 32768 --gpu-mem 24GiB
    pyqwen bench -m model.gguf -p 512 -n 128 -r 3 -t 8 --peer-llama-cpp

Bad input (missing or invalid file, bad numbers, a prompt that does not fit) prints one line on stderr
and exits with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from .errors import CLIError, ContextOverflowError, ModelFormatError
from .cli_compat import backend_arg
from .cli_model_args import add_cache_and_rope_args, cache_and_rope_kwargs
from .cli_values import float_arg, int_arg
from .model_path import DEMO_NOTE, model_arg, resolve_model_path  # noqa: F401  (part of this module's API)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---- argument types --------------------------------------------------------------------------------

_int = int_arg


def _int_list(lo: int | None = None):
    """Comma-separated integers (llama-bench's `-p 512,8192`)."""
    one = _int(lo)

    def parse(s: str) -> list[int]:
        return [one(x) for x in s.split(",") if x.strip()]
    return parse


_float = float_arg


_UNITS = {"": 2**30, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_size(s: str) -> int:
    """'24GiB', '24G' (binary), '24GB' (decimal), '16000MiB', '24' (GiB) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", s)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 24GiB, 80G or 16000MiB, got {s!r}")
    v = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if v <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {s!r}")
    return int(v)


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


# ---- shared option groups --------------------------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The model as `-m FILE` or as a positional FILE (both spellings work for every command)."""
    g = p.add_argument_group("model")
    g.add_argument("model_file", nargs="?", metavar="MODEL", help="GGUF file (same as -m)")
    g.add_argument("-m", "--model", metavar="FILE", help="GGUF file (default: the built-in demo model)")
    g.add_argument("--hf", metavar="REPO[:QUANT]",
                   help="download/cached GGUF from the Hugging Face Hub, e.g. unsloth/Qwen3.6-27B-GGUF:Q4_K_M")


def _add_gpu_layers_arg(g) -> None:
    g.add_argument("-ngl", "--n-gpu-layers", type=_int(-1), default=None, metavar="N",
                   help="llama.cpp's option, accepted: pyqwen runs all layers on the GPU or none, so 0 = CPU and "
                        "any other value = the GPU when one is visible")


def _spec_list(text: str) -> list[str]:
    from .speculative.policy import SPEC_MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in SPEC_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(SPEC_MODES)}; got {text!r}")
    return modes


def _add_runtime_args(p: argparse.ArgumentParser, ctx_default: int = 4096) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("-c", "--ctx", type=_int(1, "integer >= 1"), default=ctx_default, metavar="N",
                   help=f"context size in tokens (default {ctx_default}, capped at the model's training context)")
    g.add_argument("-t", "--threads", type=_int(1), default=None, metavar="T",
                   help="CPU threads (default: all cores available to this process)")
    g.add_argument("-b", "--batch-size", type=_int(1), default=256, metavar="N",
                   help="maximum tokens per prefill chunk (default 256)")
    add_cache_and_rope_args(g)
    g.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto", help="compute backend")
    _add_gpu_layers_arg(g)
    g.add_argument("--device", type=_int(0), default=0, metavar="N",
                   help="CUDA device index (default 0; CUDA_VISIBLE_DEVICES selects and renumbers devices)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    from .speculative.policy import add_spec_args

    add_spec_args(p)
    g = p.add_argument_group("sampling (llama.cpp defaults)")
    g.add_argument("-n", "--n-predict", type=_int(-1), default=None, metavar="N",
                   help="tokens to generate; -1 = until end of turn or the context is full "
                        "(default 256 for raw completion, -1 for chat)")
    g.add_argument("--temp", type=_float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=_int(0), default=40, help="top-k, 0 = off (default 40)")
    g.add_argument("--top-p", type=_float, default=0.95, help="top-p, 1 = off (default 0.95)")
    g.add_argument("--min-p", type=_float, default=0.05, help="min-p, 0 = off (default 0.05)")
    g.add_argument("--presence-penalty", type=_float, default=0.0, help="presence penalty (default 0)")
    g.add_argument("--repeat-penalty", type=_float, default=1.0, help="repetition penalty, 1 = off (default 1)")
    g.add_argument("--repeat-last-n", type=_int(0), default=64, help="tokens the penalties look at (default 64)")
    g.add_argument("-s", "--seed", type=_int(-1), default=-1, help="RNG seed, -1 = random (default -1)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT is generated (repeatable)")


def _add_chat_display_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chat")
    g.add_argument("--system", metavar="TEXT", help="system message")
    g.add_argument("--no-think", action="store_true", help="disable thinking (enable_thinking=False)")
    g.add_argument("--hide-reasoning", action="store_true", help="do not print the reasoning (<think>) text")


def _sampling(args) -> dict:
    from .sampling import SamplingParams

    kw = dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
              presence_penalty=args.presence_penalty, repetition_penalty=args.repeat_penalty,
              penalty_last_n=args.repeat_last_n, seed=None if args.seed < 0 else args.seed, stop=list(args.stop))
    SamplingParams(**kw).validate()  # ValueError before any model is loaded
    return kw


# ---- model resolution and loading -----------------------------------------------------------------

def _load(args, n_ctx: int | None = None):
    try:
        from .model import Model
        from . import _core  # noqa: F401  (a clear message when the extension is missing)
    except ImportError as e:
        raise CLIError(f"the C++ extension pyqwen._core is not available ({e}); build/install pyqwen first") from None
    path = resolve_model_path(model_arg(args), args.hf)
    backend = backend_arg(args)
    try:
        from .prefill_progress import PrefillBar

        progress = PrefillBar() if sys.stderr.isatty() else None  # a bar for long prompts; Ctrl-C between pieces
        return Model.load(path, n_ctx=n_ctx or args.ctx, threads=args.threads, **cache_and_rope_kwargs(args),
                          progress=progress,
                          n_batch=args.batch_size, backend=backend, device=args.device,
                          spec=getattr(args, "spec", "off"), draft=getattr(args, "draft", None))
    except RuntimeError as e:  # e.g. --backend cuda on a CPU-only build
        raise CLIError(str(e)) from None
    except ValueError as e:  # e.g. --spec mtp on a file without an MTP head
        if type(e) is not ValueError:  # ModelFormatError and other specific errors keep their handling
            raise
        raise CLIError(str(e)) from None


# ---- output of chat replies -----------------------------------------------------------------------

class ReplyPrinter:
    """Writes ChatChunks: reasoning dimmed (ANSI) on a terminal, inside <think> tags otherwise, or hidden."""

    DIM, RESET = "\033[2m", "\033[0m"

    def __init__(self, out, hide_reasoning: bool = False, color: bool | None = None):
        self.out = out
        if hide_reasoning:
            self.mode = "hide"
        else:
            tty = color if color is not None else (_isatty(out) and not os.environ.get("NO_COLOR"))
            self.mode = "dim" if tty else "tags"
        self.section = None      # None, "reasoning", "content"
        self.last = ""

    def _w(self, s: str) -> None:
        if s:
            self.out.write(s)
            self.last = s

    def reasoning(self, text: str) -> None:
        if not text or self.mode == "hide":
            return
        if self.section is None:
            self._w(self.DIM if self.mode == "dim" else "<think>\n")
            self.section = "reasoning"
        self._w(text)
        self.out.flush()

    def content(self, text: str) -> None:
        if not text:
            return
        if self.section == "reasoning":
            self._w(self.RESET + "\n\n" if self.mode == "dim" else "\n</think>\n\n")
        self.section = "content"
        self._w(text)
        self.out.flush()

    def finish(self, newline: bool = True) -> None:
        if self.section == "reasoning":
            self._w(self.RESET if self.mode == "dim" else "\n</think>")
        if newline and self.last and not self.last.endswith("\n"):
            self._w("\n")
        self.section = None
        self.last = ""
        self.out.flush()


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def _stream_chat(cg, printer: ReplyPrinter) -> None:
    try:
        for c in cg:
            printer.reasoning(c.reasoning)
            printer.content(c.content)
    finally:
        printer.finish()


# ---- generate ---------------------------------------------------------------------------------------

def _read_prompt(args) -> str:
    if args.prompt is not None and args.file is not None:
        raise CLIError("give either -p or -f, not both")
    if args.file is not None:
        if args.file == "-":
            return sys.stdin.read()
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            raise FileNotFoundError(f"cannot read prompt file {args.file}: {e.strerror}") from None
    if args.prompt is not None:
        return args.prompt
    if not _isatty(sys.stdin):
        return sys.stdin.read()
    raise CLIError("no prompt: give -p TEXT, -f FILE or pipe text on stdin")


def _constraint(args) -> dict:
    """generate()'s grammar / response_format keywords from --grammar[-file] / --json-schema[-file]."""
    given = [(k, v) for k, v in (("grammar", args.grammar), ("grammar_file", args.grammar_file),
                                 ("json_schema", args.json_schema), ("json_schema_file", args.json_schema_file))
             if v is not None]
    if not given:
        return {}
    if len(given) > 1:
        raise CLIError("give only one of --grammar, --grammar-file, --json-schema, --json-schema-file")
    kind, text = given[0]
    if kind.endswith("_file"):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as e:
            raise FileNotFoundError(f"cannot read {text}: {e.strerror}") from None
    if kind.startswith("grammar"):
        return {"grammar": text}
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise CLIError(f"the JSON schema is not valid JSON: {e}") from None
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "cli", "schema": schema}}}


def cmd_generate(args) -> int:
    constraint = _constraint(args)
    prompt = _read_prompt(args)
    if not prompt:
        raise CLIError("the prompt is empty")
    sampling = _sampling(args)
    chat = args.chat or args.no_think or args.system is not None
    n = args.n_predict if args.n_predict is not None else (-1 if chat else 256)
    model = _load(args)
    max_tokens = model.n_ctx if n < 0 else n
    if max_tokens < 1:
        raise CLIError("-n must be -1 or >= 1")
    out = sys.stdout
    if chat:
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else [])
        messages.append({"role": "user", "content": prompt})
        gen = model.chat(messages, max_tokens=max_tokens, enable_thinking=False if args.no_think else None,
                         sampling=sampling, **constraint)
    else:
        gen = model.generate(prompt, max_tokens=max_tokens, **constraint, **sampling)
        if args.echo:
            out.write(prompt)
            out.flush()
    try:
        if chat:
            _stream_chat(gen, ReplyPrinter(out, args.hide_reasoning))
        else:
            last = ""
            for c in gen:
                if c.text:
                    out.write(c.text)
                    out.flush()
                    last = c.text
            if _isatty(out) and last and not last.endswith("\n"):
                out.write("\n")
    except KeyboardInterrupt:
        gen.close()
        out.write("\n")
        print(gen.stats.summary() + " (interrupted)", file=sys.stderr)
        return 130
    print(gen.stats.summary(), file=sys.stderr)
    return 0


# ---- chat REPL --------------------------------------------------------------------------------------

def cmd_chat(args) -> int:
    from .chat_repl import CHAT_HELP, ChatREPL, run

    sampling = _sampling(args)
    model = _load(args)
    n = args.n_predict if args.n_predict is not None else -1
    max_tokens = model.n_ctx if n < 0 else n
    if max_tokens < 1:
        raise CLIError("-n must be -1 or >= 1")
    print(f"pyqwen chat: {Path(model.path).name}, context {model.n_ctx} tokens. {CHAT_HELP}", file=sys.stderr)
    kwargs = {"enable_thinking": False} if args.no_think else {}
    repl = ChatREPL(model, sampling, max_tokens, system=args.system, template_kwargs=dict(
        kwargs, preserve_thinking=not args.drop_thinking), cache_ram_mib=args.cache_ram)
    try:
        return run(repl, ReplyPrinter(sys.stdout, args.hide_reasoning), _isatty(sys.stdin))
    finally:
        repl.close()


# ---- info -------------------------------------------------------------------------------------------

def _layer_pattern(recurrent: list[bool]) -> str:
    s = "".join("L" if r else "A" for r in recurrent)
    n = len(s)
    for p in range(1, n):
        if n % p == 0 and s[:p] * (n // p) == s:
            return f"[{s[:p]}] x {n // p}"
    return s


def memory_plan(gf, n_ctx: int, kv_type: str = "f16") -> dict:
    """Bytes of weights (tensors the forward pass reads) and one sequence's state at n_ctx (the spec's
    state buffers, computed in C++)."""
    weights = sum(gf.tensors[name].nbytes for name in gf.expected_tensors())
    st = gf.hparams.state_bytes(n_ctx, kv_type)
    return {"n_ctx": n_ctx, "weights": weights, "kv_cache": st["kv_cache"], "recurrent": st["recurrent"],
            "kv_per_token": st["kv_per_token"], "total": weights + st["total"]}


def max_context(plan: dict, budget: int, n_ctx_train: int) -> int:
    """Largest n_ctx whose weights + state fit in budget bytes (0 if not even the weights fit)."""
    room = budget - plan["weights"] - plan["recurrent"]
    if room < plan["kv_per_token"]:
        return 0
    return min(room // plan["kv_per_token"], n_ctx_train) if plan["kv_per_token"] else n_ctx_train


def cmd_info(args) -> int:
    import numpy as np
    from gguf import GGMLQuantizationType

    from .bench import describe_model
    from .gguf_file import GGUFFile

    path = resolve_model_path(model_arg(args), args.hf)
    gf = GGUFFile.open(path, validate=False)
    md = gf.metadata
    out = []
    w = out.append
    size = path.stat().st_size
    desc = describe_model(gf)
    w(f"file:            {path} ({fmt_bytes(size)}, {size:,} bytes)")
    if md.get("split.count", 1) not in (None, 1):
        w(f"split:           part {md.get('split.no', 0) + 1} of {md.get('split.count')} (this part only)")
    w(f"name:            {md.get('general.name', '?')}")
    w(f"model:           {desc.name}")
    arch = md.get("general.architecture", "?")
    hp = None
    problem = None
    try:
        hp = gf._read_hparams()
        from dataclasses import replace

        from .cli_model_args import rope_kwargs
        from .rope_scaling import override

        try:
            hp = replace(hp, rope_scaling=override(hp.rope_scaling, n_ctx_train=hp.n_ctx_train, **rope_kwargs(args)))
        except ValueError as e:
            raise CLIError(str(e)) from None
        gf.hparams = hp
    except ModelFormatError as e:
        problem = str(e)
    if hp is not None:
        try:
            gf._check_tensors()
        except ModelFormatError as e:
            problem = str(e)
    runnable = "yes" if problem is None else f"no: {problem}"
    w(f"architecture:    {arch} (runnable by this build: {runnable})")
    w(f"parameters:      {desc.n_params:,} ({desc.params_str})")
    w(f"tensor data:     {desc.size:,} bytes ({fmt_bytes(desc.size)}), {len(gf.tensors)} tensors, "
      f"{8 * desc.size / max(desc.n_params, 1):.2f} bits per weight")
    if hp is not None:
        w("hyper-parameters:")
        w(f"  vocab {hp.n_vocab}, embedding {hp.n_embd}, feed-forward {hp.n_ff}, layers {hp.n_layer}"
          + (f" (+{hp.n_nextn} MTP)" if hp.n_nextn else "") + f", trained context {hp.n_ctx_train}")
        w(f"  RoPE scaling: {hp.rope_scaling.describe()}" +
          (f" -> context up to {hp.n_ctx_max:,}" if hp.n_ctx_max != hp.n_ctx_train else ""))
        w(f"  attention: heads {hp.n_head}, kv heads {hp.n_head_kv}, head dim {hp.head_dim}, "
          f"rope dims {hp.n_rot}, rope base {hp.rope_base:g}, rms eps {hp.rms_eps:g}")
        w(f"  gated delta net: conv {hp.ssm_conv}, qk heads {hp.ssm_k_heads}, v heads {hp.ssm_v_heads}, "
          f"k dim {hp.ssm_k_dim}, v dim {hp.ssm_v_dim}")
        w(f"layers:          {hp.n_layer - hp.n_attn_layers} gated delta net (L) + {hp.n_attn_layers} "
          f"full attention (A): {_layer_pattern(hp.recurrent)}")
    counts: dict[str, list[int]] = {}
    for t in gf.tensors.values():
        c = counts.setdefault(GGMLQuantizationType(t.type).name, [0, 0, 0])
        c[0] += 1
        c[1] += t.nbytes
        c[2] += int(np.prod(t.shape, dtype=np.int64))
    w("tensor types:")
    w(f"  {'type':<8} {'tensors':>7} {'params':>16} {'bytes':>16} {'size':>11}")
    for name, (k, b, ne) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
        w(f"  {name:<8} {k:>7} {ne:>16,} {b:>16,} {fmt_bytes(b):>11}")
    w(f"  {'total':<8} {len(gf.tensors):>7} {desc.n_params:>16,} {desc.size:>16,} {fmt_bytes(desc.size):>11}")
    plan = None
    choice = None
    if hp is not None and all(n in gf.tensors for n in gf.expected_tensors()):
        n_ctx = min(args.ctx, hp.n_ctx_max)
        kv_type = _info_kv_type(gf, n_ctx, args)
        if kv_type == "auto":  # --gpu-mem given: the planner chooses
            choice = _choose_kv(gf, n_ctx, args.gpu_mem)
            kv_type = choice.kv_type or "q4_0"
        plan = memory_plan(gf, n_ctx, kv_type)
        capped = (f", capped from {args.ctx} at the model's context" +
                  (" (use --rope-scaling yarn to extend it)" if hp.rope_scaling.kind == "none" else "")
                  if n_ctx < args.ctx else "")
        w(f"memory at context {n_ctx} ({kv_type.upper()} KV cache, one sequence{capped}; "
          "compute scratch not included):")
        w(f"  weights          {plan['weights']:>16,} bytes {fmt_bytes(plan['weights']):>11}  "
          "(tensors the forward pass reads)")
        w(f"  KV cache         {plan['kv_cache']:>16,} bytes {fmt_bytes(plan['kv_cache']):>11}  "
          f"({plan['kv_per_token']:,} bytes per token over {hp.n_attn_layers} attention layers)")
        w(f"  recurrent state  {plan['recurrent']:>16,} bytes {fmt_bytes(plan['recurrent']):>11}  "
          f"({hp.n_layer - hp.n_attn_layers} layers, F32, independent of context)")
        w(f"  total            {plan['total']:>16,} bytes {fmt_bytes(plan['total']):>11}")
        if args.gpu_mem is not None:
            budget = args.gpu_mem
            fits = plan["total"] <= budget
            verdict = (f"yes ({fmt_bytes(budget - plan['total'])} to spare)" if fits
                       else f"no (short by {fmt_bytes(plan['total'] - budget)})")
            w(f"fits in {fmt_bytes(budget)}: {verdict}")
            best = max_context(plan, budget, hp.n_ctx_max)
            if best == 0:
                w(f"largest context that fits in {fmt_bytes(budget)}: none (the weights alone do not fit)")
            else:
                cap = " (the model's whole context)" if best == hp.n_ctx_max else ""
                w(f"largest context that fits in {fmt_bytes(budget)}: {best:,} tokens{cap}")
            if choice is not None:
                w(f"KV cache types for the CUDA backend at {n_ctx:,} tokens in {fmt_bytes(budget)}:")
                out.extend(choice.lines())
            gpu = _cuda_plan(gf, n_ctx, kv_type, budget)
            if gpu is not None:
                w("CUDA backend plan (adds snapshots, scratch and the CUDA context; what Model.load checks):")
                out.extend("  " + line for line in gpu.lines())
    if args.json:
        data = {"path": str(path), "file_size": size, "architecture": arch, "name": md.get("general.name"),
                "model": desc.name, "runnable": problem is None, "problem": problem, "n_params": desc.n_params,
                "tensor_bytes": desc.size, "n_tensors": len(gf.tensors),
                "types": {k: {"tensors": v[0], "bytes": v[1], "params": v[2]} for k, v in counts.items()},
                "hparams": None if hp is None else {k: (vars(v) if k == "rope_scaling" else v)
                                                    for k, v in vars(hp).items() if k != "recurrent"},
                "layer_pattern": None if hp is None else "".join("L" if r else "A" for r in hp.recurrent),
                "memory": plan}
        if plan is not None and args.gpu_mem is not None:
            gpu = _cuda_plan(gf, min(args.ctx, hp.n_ctx_max), kv_type, args.gpu_mem)
            if gpu is not None:
                data["cuda_plan"] = {"fits": gpu.fits, "max_ctx": gpu.max_ctx, "lines": gpu.lines(),
                                     "total": gpu.total, "free": args.gpu_mem - gpu.total}
            if choice is not None:
                data["kv_choice"] = {"chosen": choice.kv_type,
                                     "candidates": {k: {"total": p.total, "fits": p.fits, "max_ctx": p.max_ctx}
                                                    for k, p in choice.plans.items()}}
            data["kv_type"] = kv_type
            data["gpu_mem"] = args.gpu_mem
            data["fits"] = plan["total"] <= args.gpu_mem
            data["max_ctx"] = max_context(plan, args.gpu_mem, hp.n_ctx_max)
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(out))
    return 0


def _info_kv_type(gf, n_ctx: int, args) -> str:
    """info's KV type: the one asked for (K,V with --kv-type-v), or auto: chosen with --gpu-mem, else f16."""
    from .kv_cache import kv_spec

    if args.kv_type == "auto":
        return "auto" if args.gpu_mem is not None else kv_spec("f16", args.kv_type_v)
    try:
        return kv_spec(args.kv_type, args.kv_type_v)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _choose_kv(gf, n_ctx: int, budget: int):
    from .plan_choice import choose_kv_type

    hp = gf.hparams
    mtp = hp.n_nextn > 0 and gf.mtp_problem() is None
    return choose_kv_type(hp.core_config(mtp=mtp), gf.tensor_table(), n_ctx, budget, n_ctx_train=hp.n_ctx_max)


def _cuda_plan(gf, n_ctx: int, kv_type: str, budget: int):
    """The CUDA backend's memory plan (pyqwen.memory_plan), or None where it does not apply."""
    from .memory_plan import plan as gpu_plan

    try:
        return gpu_plan(gf, n_ctx, kv_type, budget)
    except ValueError:  # e.g. an F32 KV cache, which the GPU backend does not implement
        return None


# ---- bench ------------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    from .bench import format_markdown, run_bench

    backend = backend_arg(args)
    try:
        from . import _core  # noqa: F401
    except ImportError as e:
        raise CLIError(f"the C++ extension pyqwen._core is not available ({e})") from None
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    if args.slice_27b:
        if args.model or args.hf:
            raise CLIError("--slice-27b builds its own model: give it without -m/--hf")
        from .bench_slice import slice_27b_path

        path = slice_27b_path(log=lambda s: print(s, file=sys.stderr, flush=True))
    else:
        path = resolve_model_path(model_arg(args), args.hf)
    try:
        report = run_bench(path, n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.repetitions,
                           threads=args.threads, n_batch=args.batch_size, backend=backend,
                           device=args.device, peer_llama_cpp=args.peer_llama_cpp,
                           measure_bandwidth=args.bandwidth, spec=args.spec, log=log)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_markdown(report))
    return 0


# ---- convert / serve --------------------------------------------------------------------------------

def cmd_convert(argv: Sequence[str]) -> int:
    from .convert import main as convert_main

    return _bad_input_is_2(convert_main(list(argv), prog="pyqwen convert"))


def cmd_quantize(argv: Sequence[str]) -> int:
    from .convert.quantize import main as quantize_main

    return _bad_input_is_2(quantize_main(list(argv), prog="pyqwen quantize"))


def _bad_input_is_2(rc: int) -> int:
    # convert_gguf.py keeps llama.cpp's converter status (1) for a bad checkpoint; as a `pyqwen` command,
    # bad input exits 2 like every other subcommand.
    return 2 if rc == 1 else rc


def _add_serve(subparsers) -> None:
    """`pyqwen serve` lives in pyqwen.server.cli (another module): it must provide
    `add_parser(subparsers)` that registers a "serve" sub-parser whose defaults set `func(args) -> int`,
    and keep heavy imports (fastapi, uvicorn) inside that function so other subcommands stay fast."""
    import importlib

    try:
        server_cli = importlib.import_module("pyqwen.server.cli")
    except ModuleNotFoundError as e:
        if not e.name or e.name == "pyqwen" or e.name.startswith("pyqwen."):
            return  # not written yet / not shipped: no serve subcommand
        missing = e.name

        def unavailable(args) -> int:
            raise CLIError(f"`pyqwen serve` needs the {missing!r} package: pip install 'pyqwen[server]'")

        p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (not installed)")
        p.set_defaults(func=unavailable)
        return
    if not hasattr(server_cli, "add_parser"):
        return
    server_cli.add_parser(subparsers)


# ---- parser -----------------------------------------------------------------------------------------

class _BuildVersion(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from .build_info import describe

        print(describe())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="pyqwen", description="llama.cpp-style inference for Qwen3.6 (GGUF arch qwen35).",
                 epilog="Run `pyqwen COMMAND --help` for the options of a command.")
    ap.add_argument("--version", action=_BuildVersion, nargs=0,
                    help="show the version and what this build holds (SIMD kernels, CUDA architectures, cuBLAS)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("generate", help="complete a prompt (raw text, or --chat through the chat template)",
                       description="Stream a completion of a prompt to stdout; statistics go to stderr.")
    _add_model_args(p)
    g = p.add_argument_group("prompt")
    g.add_argument("-p", "--prompt", metavar="TEXT", help="prompt text (special tokens are parsed)")
    g.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE ('-' = stdin)")
    g.add_argument("--chat", action="store_true", help="send the prompt as one user message through the chat template")
    g.add_argument("--echo", action="store_true", help="print the prompt before the completion (raw mode)")
    g = p.add_argument_group("structured output (as llama.cpp's; one of them)")
    g.add_argument("--grammar", metavar="GRAMMAR", help="hold the output to a GBNF (or Lark) grammar")
    g.add_argument("--grammar-file", metavar="FILE", help="... read from FILE")
    g.add_argument("-j", "--json-schema", metavar="SCHEMA", help="hold the output to this JSON schema ('{}': any JSON)")
    g.add_argument("--json-schema-file", metavar="FILE", help="... read from FILE")
    _add_chat_display_args(p)
    _add_sampling_args(p)
    _add_runtime_args(p)
    p.set_defaults(func=cmd_generate)

    from .chat_repl import CHAT_HELP

    p = sub.add_parser("chat", help="interactive multi-turn chat (the state is kept: a turn prefills only itself)",
                       description="Chat with the model; reads messages from stdin. " + CHAT_HELP + ".")
    _add_model_args(p)
    _add_chat_display_args(p)
    g = p.add_argument_group("session")
    g.add_argument("--drop-thinking", action="store_true",
                   help="render earlier replies without their reasoning, as the template does by default "
                        "(then each turn re-prefills the previous reply; by default it is kept: "
                        "preserve_thinking, so a turn prefills only its own message)")
    g.add_argument("--cache-ram", type=_float, default=4096, metavar="MiB",
                   help="memory for the session's state checkpoints, in MiB (default 4096)")
    _add_sampling_args(p)
    _add_runtime_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="show a GGUF's architecture, tensors and memory needs (no extension needed)",
                       description="Describe a GGUF file and the memory needed to run it.")
    _add_model_args(p)
    p.add_argument("-c", "--ctx", type=_int(1, "integer >= 1"), default=4096, metavar="N",
                   help="context size for the memory plan (default 4096, capped at the trained context)")
    add_cache_and_rope_args(p.add_argument_group("cache and RoPE scaling (what the plan assumes)"), kv_default="auto")
    p.add_argument("--gpu-mem", type=parse_size, metavar="SIZE",
                   help="check the plan against this much memory (e.g. 24GiB, 80G, 16000MiB; bare number = GiB) "
                        "and print the largest context that fits")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="llama-bench style pp/tg throughput",
                       description="Prefill (ppN: random tokens, fresh state) and decode (tgN: one token at a "
                                   "time, greedy, after a short prompt) throughput, mean ± std over repetitions.")
    _add_model_args(p)
    p.add_argument("-p", "--n-prompt", type=_int_list(0), default=[512], metavar="N[,N...]",
                   help="prompt tokens, one pp row per value (default 512, e.g. 512,8192; 0 = skip)")
    p.add_argument("-n", "--n-gen", type=_int(0), default=128, metavar="N",
                   help="generated tokens (default 128, 0 = skip)")
    p.add_argument("-r", "--repetitions", type=_int(1), default=3, metavar="N", help="repetitions (default 3)")
    p.add_argument("-t", "--threads", type=_int(1), default=None, metavar="T", help="threads (default: all cores)")
    p.add_argument("-b", "--batch-size", type=_int(1), default=256, metavar="N", help="prefill chunk (default 256)")
    p.add_argument("--spec", type=_spec_list, default=[], metavar="MODE[,MODE...]",
                   help="also measure greedy generation with speculative decoding (mtp, lookup, auto), each "
                        "beside the same loop without it (tgN+off), with acceptance rates")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto")
    _add_gpu_layers_arg(p)
    p.add_argument("--device", type=_int(0), default=0, metavar="N", help="CUDA device index (default 0)")
    p.add_argument("--peer-llama-cpp", action="store_true",
                   help="also measure llama.cpp (llama-cpp-python) on the same GGUF and print the ratio")
    p.add_argument("--slice-27b", action="store_true",
                   help="bench a 4-layer slice of Qwen3.6-27B at its real dimensions (random weights, Q4_K_M), "
                        "built once into ~/.cache/pyqwen")
    p.add_argument("--bandwidth", action="store_true",
                   help="also measure this machine's DRAM read bandwidth with the same threads (the decode roofline)")
    p.add_argument("-o", "--output", choices=("md", "json"), default="md", help="output format (default md)")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF (see `pyqwen convert --help`)",
                   add_help=False)
    sub.add_parser("quantize", help="requantize a F32/F16/BF16 GGUF, e.g. to q4_k_m (see `pyqwen quantize --help`)",
                   add_help=False)
    _add_serve(sub)
    ap.set_defaults(_subparsers=sub)
    return ap


def parse_args(ap: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv, llama.cpp spellings included (pyqwen.cli_compat)."""
    argv = list(argv)
    commands = ap.get_default("_subparsers").choices
    if argv and argv[0] in commands:
        from .cli_compat import rewrite

        argv = [argv[0], *rewrite(argv[1:], commands[argv[0]])]
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        return cmd_convert(argv[1:])
    if argv and argv[0] == "quantize":
        return cmd_quantize(argv[1:])
    ap = build_parser()
    args = parse_args(ap, argv)
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return 2
    from .hub import HubError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `pyqwen generate ... | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except (CLIError, HubError, ModelFormatError, ContextOverflowError, FileNotFoundError, IsADirectoryError,
            PermissionError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"pyqwen {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
