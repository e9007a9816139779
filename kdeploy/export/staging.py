"""Atomic publication of multi-file artifacts: build in a hidden folder inside ``<run>/export``, then rename.

Every file is fsynced and moved with ``os.replace`` (atomic on one filesystem); the main file (the one the
others hang off, e.g. ``.onnx`` with its external ``.data``) is moved last, so a reader never sees a main file
whose companions are missing. Files of the replaced artifact that the new one does not have are deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kdeploy.errors import UserError


@contextlib.contextmanager
def staging_dir(export_dir: Path) -> Iterator[Path]:
    """A fresh hidden folder inside ``export_dir`` (same filesystem, so renames are atomic); always removed."""
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=export_dir))
    except OSError as exc:
        raise UserError(f"cannot write {export_dir}: {exc.strerror}; choose a writable run folder") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def publish(main: Path, companions: list[Path], export_dir: Path, main_name: str, old_files: list[str]) -> list[str]:
    """Move ``companions`` (names kept) and then ``main`` (renamed ``main_name``) into ``export_dir``.

    Returns the published file names, main first. Files in ``old_files`` not published again are removed.
    """
    names = [main_name] + [c.name for c in companions]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate artifact file names: {names}")
    try:
        for src in [*companions, main]:
            _fsync(src)
        for src in companions:
            os.replace(src, export_dir / src.name)
        os.replace(main, export_dir / main_name)
    except OSError as exc:
        raise UserError(f"cannot write {export_dir}: {exc.strerror}; free space or choose another folder") from None
    for name in old_files:
        if name not in names:
            (export_dir / name).unlink(missing_ok=True)
    return names
