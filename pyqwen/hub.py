"""Resolve `--hf OWNER/REPO[:QUANT]` to a local GGUF path through the Hugging Face cache.

    path = resolve_hf("unsloth/Qwen3.6-27B-GGUF:Q4_K_M")

The repository's files are listed (from the Hub, or from the local cache when offline), the `.gguf`
whose name carries the quant tag is picked (case-insensitive; a whole `-00001-of-0000N` split set is
downloaded and its first part returned; `mmproj` projector files are never picked), and the file(s) are
fetched with `hf_hub_download` into the standard cache (`HF_HOME` / `HF_HUB_CACHE`) with its progress bar.
With `HF_HUB_OFFLINE=1` (or when the Hub cannot be reached) everything comes from the cache.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUANT = "Q4_K_M"   # what llama.cpp's `-hf` picks when no tag is given
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class HubError(ValueError):
    """A `--hf` spec that cannot be resolved (bad spec, no matching file, not cached while offline)."""


@dataclass
class HFSpec:
    repo_id: str
    quant: str | None = None
    revision: str | None = None


def parse_spec(spec: str) -> HFSpec:
    """'owner/name[:QUANT][@revision]' -> HFSpec."""
    s = spec.strip()
    if s.startswith("hf://"):
        s = s[5:]
    revision = None
    if "@" in s:
        s, revision = s.rsplit("@", 1)
        if not revision:
            raise HubError(f"--hf {spec!r}: empty revision after '@'")
    quant = None
    if ":" in s:
        s, quant = s.split(":", 1)
        if not quant:
            raise HubError(f"--hf {spec!r}: empty quant tag after ':'")
    parts = s.split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts):
        raise HubError(f"--hf {spec!r}: expected OWNER/REPO[:QUANT], e.g. unsloth/Qwen3.6-27B-GGUF:Q4_K_M")
    return HFSpec(s, quant, revision)


def is_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    # huggingface_hub reads its environment at import; read it again so a changed HF_HOME is honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_repo_files(repo_id: str, revision: str | None = None, cache_dir=None) -> list[str]:
    """Files of repo_id present in the local cache (snapshot of `revision`, default branch `main`)."""
    repo_dir = _cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        raise HubError(f"{repo_id} is not in the Hugging Face cache ({repo_dir.parent}) and the Hub is offline")
    rev = revision or "main"
    ref = repo_dir / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snap = repo_dir / "snapshots" / commit
    if not snap.is_dir():
        raise HubError(f"{repo_id}: revision {rev!r} is not in the Hugging Face cache ({repo_dir})")
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file() or p.is_symlink())


def _list_files(spec: HFSpec, cache_dir) -> tuple[list[str], bool]:
    """(files, offline): the Hub listing, or the cached snapshot when offline or unreachable."""
    if is_offline():
        return cached_repo_files(spec.repo_id, spec.revision, cache_dir), True
    from huggingface_hub import list_repo_files
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return list_repo_files(spec.repo_id, revision=spec.revision), False
    except RepositoryNotFoundError:
        raise HubError(f"repository {spec.repo_id!r} not found on the Hugging Face Hub "
                       "(or it is private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise HubError(f"{spec.repo_id}: revision {spec.revision!r} not found") from None
    except GatedRepoError:
        raise HubError(f"{spec.repo_id} is gated: accept its terms on huggingface.co and log in") from None
    except Exception as e:  # network down, proxy, ...: fall back to what the cache holds
        try:
            files = cached_repo_files(spec.repo_id, spec.revision, cache_dir)
        except HubError:
            raise HubError(f"cannot reach the Hugging Face Hub ({type(e).__name__}: {e}) and "
                           f"{spec.repo_id} is not cached") from None
        print(f"pyqwen: Hub unreachable ({type(e).__name__}); using the cached copy of {spec.repo_id}",
              file=sys.stderr)
        return files, True


def _tag_match(name: str, tag: str, strict: bool) -> bool:
    base = name.lower().rsplit("/", 1)[-1]
    t = tag.lower()
    if not strict:
        return t in name.lower()
    # The tag as a whole component: bounded by start/end or one of - . / (so Q4_K does not match Q4_K_M).
    return re.search(r"(^|[-./])" + re.escape(t) + r"($|[-./])", base) is not None or \
        re.search(r"(^|/)" + re.escape(t) + r"/", name.lower()) is not None


def _group(files: list[str]) -> dict[str, list[str]]:
    """Split sets collapsed to one key (NAME-*-of-0000N.gguf); values are the sorted parts."""
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(_SPLIT.sub(lambda m: f"-*-of-{m.group(2)}.gguf", f), []).append(f)
    return {k: sorted(v) for k, v in groups.items()}


def select_gguf(files: list[str], quant: str | None, repo_id: str = "") -> list[str]:
    """The file(s) to download for quant: one path, or every part of a split set (first part first)."""
    ggufs = [f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower().rsplit("/", 1)[-1]]
    if not ggufs:
        raise HubError(f"{repo_id or 'repository'} has no .gguf model files")
    where = f"{repo_id}: " if repo_id else ""
    groups = _group(ggufs)
    if quant is None:
        if len(groups) == 1:
            chosen = list(groups)
        else:
            chosen = [k for k in groups if _tag_match(k, DEFAULT_QUANT, True)]
            if not chosen:
                raise HubError(f"{where}several GGUF files and no quant tag given; pick one with "
                               f"REPO:QUANT from: {', '.join(sorted(groups))}")
    else:
        chosen = [k for k in groups if _tag_match(k, quant, True)] or \
                 [k for k in groups if _tag_match(k, quant, False)]
        if not chosen:
            raise HubError(f"{where}no GGUF file matches quant {quant!r}; available: {', '.join(sorted(groups))}")
    if len(chosen) > 1:
        singles = [k for k in chosen if len(groups[k]) == 1 and not _SPLIT.search(groups[k][0])]
        if len(singles) == 1:  # prefer a single file over a split set of the same quant
            chosen = singles
        else:
            raise HubError(f"{where}quant {quant or DEFAULT_QUANT!r} is ambiguous: {', '.join(sorted(chosen))}")
    parts = groups[chosen[0]]
    m = _SPLIT.search(parts[0])
    if m:
        n = int(m.group(2))
        have = {int(_SPLIT.search(p).group(1)) for p in parts if _SPLIT.search(p)}
        if have != set(range(1, n + 1)):
            missing = sorted(set(range(1, n + 1)) - have)
            raise HubError(f"{where}split GGUF {chosen[0]} is incomplete (parts {missing} of {n} missing)")
    return parts


def resolve_hf(spec: str | HFSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or find in the cache) the GGUF named by spec; returns the local path of its first part."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    sp = parse_spec(spec) if isinstance(spec, str) else spec
    files, offline = _list_files(sp, cache_dir)
    parts = select_gguf(files, sp.quant, sp.repo_id)
    paths = []
    for name in parts:
        try:
            p = hf_hub_download(sp.repo_id, name, revision=sp.revision,
                                cache_dir=str(_cache_dir(cache_dir)), local_files_only=offline)
        except LocalEntryNotFoundError:
            raise HubError(f"{sp.repo_id}/{name} is not in the Hugging Face cache and the Hub is offline") from None
        paths.append(Path(p))
    return paths[0]
