"""Training and held-out text for the demo model: text that exists on every machine with Python.

Code: the running interpreter's standard library sources (`sysconfig.get_paths()["stdlib"]`), sorted,
without test suites, site-packages and generated data tables. Prose: the reference-manual topics in
`pydoc_data/topics.py`. The held-out split is by a hash of the file's path relative to the stdlib
(code) or of the topic name (prose), so it does not depend on which other files a Python version has.
Used by tools/train_demo_model.py, benchmarks/demo_quality.py and tests/test_demo_model.py.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

HELDOUT_CODE_MOD = 25  # 1 file in 25 is held out
HELDOUT_PROSE_MOD = 8  # 1 topic in 8
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "pydoc_data"}
_MAX_FILE_BYTES = 300_000  # larger files are generated tables (unicode data, opcode maps, ...)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    return sys.version.split()[0]


def _bucket(key: str, mod: int) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % mod == 0


def code_files(heldout: bool) -> list[Path]:
    """Sorted stdlib .py files of the training (heldout=False) or held-out split."""
    root = stdlib_dir()
    out = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.parts[0].startswith("test"):
            continue
        if f.stat().st_size > _MAX_FILE_BYTES:
            continue
        if _bucket(rel.as_posix(), HELDOUT_CODE_MOD) == heldout:
            out.append(f)
    return out


def code_texts(heldout: bool) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in code_files(heldout)]


def prose_texts(heldout: bool) -> list[str]:
    """The pydoc topics (reference-manual prose), sorted by name, of one split."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics) if _bucket(k, HELDOUT_PROSE_MOD) == heldout]
