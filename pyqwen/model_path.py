"""Where the model file is: `-m FILE`, `--hf REPO[:QUANT]` (pyqwen.hub) or, with neither, the demo model.

One place for both command lines (`pyqwen ...` in pyqwen.cli and `pyqwen serve` in pyqwen.server.cli),
so neither imports the other for it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import CLIError

DEMO_NOTE = ("pyqwen: no model given: using the built-in demo model (12M parameters briefly trained on Python's "
             "standard library source: it writes Python-flavoured text, not working code)")


def resolve_model_path(model: str | None, hf: str | None, *, quiet: bool = False) -> Path:
    """-m FILE, --hf REPO[:QUANT] or (neither) the demo model, as a local path."""
    if model and hf:
        raise CLIError("give either a model file or --hf, not both")
    if hf:
        from .hub import resolve_hf

        return resolve_hf(hf)
    if model:
        p = Path(model).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"no such model file: {p}")
        if p.is_dir():
            raise CLIError(f"{p} is a directory; give a .gguf file (convert a checkpoint with `pyqwen convert`)")
        return p
    if not quiet:
        print(DEMO_NOTE, file=sys.stderr, flush=True)
    from .demo import demo_model_path

    return Path(demo_model_path())


def model_arg(args) -> str | None:
    """The model given as -m or positionally (an error when both name different files)."""
    pos, opt = getattr(args, "model_file", None), args.model
    if pos is not None and opt is not None and pos != opt:
        raise CLIError(f"two models given: {pos} and -m {opt}")
    return opt if opt is not None else pos
