"""llama.cpp's command-line spellings, rewritten to pyqwen's before argparse sees them.

Users type llama.cpp flags from habit (`-ngl 99`, `-sys TEXT`, `-fa`, `-hf REPO`, `--ctx-size`). argparse
would read `-ngl` as `-n gl` ("-n: expected an integer, got 'gl'") and `-hf` as `-h` (help, exit 0), so
each llama.cpp spelling that means the same thing as a pyqwen option is mapped to it here, flags that
change nothing in pyqwen are dropped, and any other single-dash word that is not one of the command's
options is rejected by its own name instead of being split into short options.
"""

from __future__ import annotations

import argparse
import re
from typing import Sequence

# llama.cpp spelling -> pyqwen option (same meaning, same value).
ALIASES = {
    "-sys": "--system", "--system-prompt": "--system",
    "-hf": "--hf", "-hfr": "--hf", "--hf-repo": "--hf",
    "--ctx-size": "--ctx",
    "--temperature": "--temp",
    "--predict": "--n-predict",
    "-ngl": "--n-gpu-layers", "--gpu-layers": "--n-gpu-layers",
    "-ctk": "--kv-type", "--cache-type-k": "--kv-type", "-ctv": "--kv-type-v", "--cache-type-v": "--kv-type-v",
}

# llama.cpp flags that pyqwen does anyway (flash attention, mmap, Jinja chat templates) or that do not
# apply; accepted and ignored. The value is the set of optional values the flag may take.
NO_EFFECT = {
    "-fa": {"on", "off", "auto", "1", "0", "true", "false"},
    "--flash-attn": {"on", "off", "auto", "1", "0", "true", "false"},
    "--jinja": set(), "--mlock": set(), "--no-mmap": set(), "-cnv": set(), "--conversation": set(),
}

_NUMBER = re.compile(r"-?\d+(\.\d*)?([eE][-+]?\d+)?")


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def rewrite(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """argv with llama.cpp spellings mapped for `parser` (one subcommand's parser); an unknown
    single-dash word goes to parser.error() (one line, exit 2, like every other argument error)."""
    known = parser._option_string_actions
    out: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            out.extend(argv[i - 1:])
            break
        if not tok.startswith("-") or tok == "-" or _NUMBER.fullmatch(tok):
            out.append(tok)
            continue
        name, eq, value = tok.partition("=")
        if name in NO_EFFECT and name not in known:
            if not eq and i < len(argv) and argv[i].lower() in NO_EFFECT[name]:
                i += 1
            continue
        if name in ALIASES and ALIASES[name] in known and name not in known:
            name = ALIASES[name]
            tok = name + eq + value
        if name in known:
            if not eq and _takes_value(known[name]) and i < len(argv):
                value = argv[i]
                i += 1
                if value.startswith("-") and not _NUMBER.fullmatch(value):
                    # A value that looks like an option (`-sys "-be terse"`): argparse would read it as
                    # one, so it is attached as --option=value.
                    long = next((o for o in known[name].option_strings if o.startswith("--")), None)
                    if long is not None:
                        out.append(f"{long}={value}")
                        continue
                out += [tok, value]
                continue
            out.append(tok)
            continue
        # A single-dash word that is not an option: argparse would split it into short options
        # (`-ngl` -> `-n gl`); a short option with its value attached (`-n128`, `-c4096`) is fine.
        if not tok.startswith("--") and len(name) > 2 and not (name[:2] in known and _NUMBER.fullmatch(tok[2:])):
            parser.error(f"unknown option {name}: pyqwen has no such option")
        out.append(tok)
    return out


def gpu_layers_backend(n_gpu_layers: int | None, backend: str, warn) -> str:
    """The backend for llama.cpp's `-ngl N`: pyqwen runs all layers on the GPU or none, so 0 means the CPU
    and any other value the GPU when one is visible (`--backend auto`)."""
    if n_gpu_layers is None:
        return backend
    if n_gpu_layers == 0:
        if backend == "cuda":
            raise ValueError("-ngl 0 (no GPU layers) contradicts --backend cuda")
        return "cpu"
    if 0 < n_gpu_layers < 99:
        warn(f"note: -ngl {n_gpu_layers}: pyqwen runs every layer on the GPU or none (no partial offload); "
             "using the GPU when one is visible")
    return backend


def backend_arg(args) -> str:
    """The backend of parsed arguments, `-ngl` taken into account (a note on stderr where it matters)."""
    import sys

    return gpu_layers_backend(getattr(args, "n_gpu_layers", None), args.backend,
                              lambda s: print(f"pyqwen: {s}", file=sys.stderr))
