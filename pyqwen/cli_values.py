"""argparse value types shared by every command line (pyqwen's and pyqwen serve's): one error wording."""

from __future__ import annotations

import argparse
import math


def int_arg(lo: int | None = None, what: str = "integer"):
    """An integer (0x... accepted) >= lo."""
    def parse(s: str) -> int:
        try:
            v = int(s, 0) if s.strip().lower().startswith("0x") else int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an {what}, got {s!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def number(s: str, what: str = "a number") -> float:
    """float(s), or argparse's error saying what was expected (inf and nan pass: the caller decides)."""
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None


def float_arg(s: str) -> float:
    """A finite number."""
    v = number(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def positive_float_arg(s: str) -> float:
    v = float_arg(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v
