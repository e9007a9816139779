"""Where dataset files live: the ordered base folders, the folders probed under each, and the not-found error.

Order: an explicit ``root`` (``--data-root`` / recipe ``data.root``; when given, it is the only place looked
at), then ``$KDEPLOY_DATA`` (``os.pathsep``-separated), the user cache (``$XDG_CACHE_HOME/kdeploy/data`` or
``~/.cache/kdeploy/data``, where downloads land), then system dataset folders (``/usr/share/datasets``).
Under each base, ``<base>/<alias>``, ``<base>/<alias>/raw`` and ``<base>`` itself are probed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from kdeploy.errors import UserError

ENV_VAR = "KDEPLOY_DATA"
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
FIX_HINT = "pass --data-root DIR, set KDEPLOY_DATA, or set data.download: true"

T = TypeVar("T")
Probe = Callable[[Path, list[str]], T | None]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kdeploy`` or ``~/.cache/kdeploy``."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "kdeploy"


def user_data_dir() -> Path:
    """Where downloads go and the third place searched."""
    return user_cache_dir() / "data"


def decoded_cache_dir() -> Path:
    """Where decoded image datasets (JPEG folders, tarballs) are cached as uint8 tensors."""
    return user_cache_dir() / "decoded"


def search_bases(root: str | os.PathLike[str] | None) -> list[Path]:
    """The base folders to search, in order. An explicit root is the only one."""
    if root is not None and str(root) != "":
        return [Path(root).expanduser()]
    bases = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    bases.append(user_data_dir())
    bases.extend(SYSTEM_DIRS)
    unique: list[Path] = []
    for base in bases:
        if base not in unique:
            unique.append(base)
    return unique


def candidate_folders(base: Path, aliases: Sequence[str]) -> Iterator[Path]:
    for alias in aliases:
        yield base / alias
        yield base / alias / "raw"
    yield base


def find_in_bases(bases: Sequence[Path], aliases: Sequence[str], probe: Probe[T], notes: list[str]) -> T | None:
    """The first probe hit over ``candidate_folders`` of each base; probes may add notes on near misses."""
    seen: set[Path] = set()
    for base in bases:
        for folder in candidate_folders(base, aliases):
            if folder in seen or not folder.is_dir():
                continue
            seen.add(folder)
            found = probe(folder, notes)
            if found is not None:
                return found
    return None


def not_found(name: str, bases: Sequence[Path], aliases: Sequence[str], notes: Sequence[str]) -> UserError:
    subs = ", ".join(f"{a}/" for a in aliases)
    where = ", ".join(str(b) for b in bases)
    extra = f"; {'; '.join(notes)}" if notes else ""
    return UserError(f"{name}: no data found (looked in: {where}, each also under {subs}){extra}; {FIX_HINT}")


def resolve(
    name: str,
    root: str | os.PathLike[str] | None,
    aliases: Sequence[str],
    probe: Probe[T],
    download: Callable[[Path], None] | None = None,
) -> T:
    """Find a dataset by probing the search folders; download it when allowed and nothing is found."""
    bases = search_bases(root)
    notes: list[str] = []
    found = find_in_bases(bases, aliases, probe, notes)
    if found is not None:
        return found
    if download is None:
        raise not_found(name, bases, aliases, notes)
    target = bases[0] if root is not None and str(root) != "" else user_data_dir()
    download(target)
    notes = []
    found = find_in_bases([target], aliases, probe, notes)
    if found is None:
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise UserError(f"{name}: downloaded into {target} but the files are not usable{detail}; delete it and retry")
    return found
