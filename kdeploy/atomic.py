"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A killed process never leaves a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kdeploy.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}; choose a writable folder") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a renamed file gets what open() would give
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {exc.strerror}; free space or choose another folder") from None
    except UserError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # writers outside Python's I/O (torch.save, safetensors) report ENOSPC their own way
        full = _disk_full(tmp, exc)
        tmp.unlink(missing_ok=True)
        if full:
            hint = "free space or choose another folder"
            raise UserError(f"cannot write {target}: no space left on device; {hint}") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it, which races threads


def _disk_full(tmp: Path, exc: BaseException) -> bool:
    """Whether a failed write ran out of space: the error says so, or (torch.save's cryptic errors) the
    folder's file system has less than 1 MiB left while the partial file still occupies it."""
    text = str(exc)
    if "No space left" in text or "os error 28" in text:
        return True
    try:
        st = os.statvfs(tmp.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
