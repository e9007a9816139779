"""A finished run copied to a temporary folder for a benchmark to export and quantize in, so the run is left as it
was."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from kdeploy.export import export_onnx
from kdeploy.runs import Run


@contextlib.contextmanager
def scratch_run(source: Path, roles: Sequence[str]) -> Iterator[tuple[Run, Path]]:
    """The copy of ``source`` (without training state or TensorBoard logs) with every role of ``roles`` exported to
    ONNX where it was not yet, and a temporary folder beside it; both are removed on exit."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shutil.copytree(source, tmp / "run", ignore=shutil.ignore_patterns("state", "tensorboard"))
        run = Run.open(tmp / "run")
        missing = [role for role in roles if not (run.export_dir / f"{role}.onnx").is_file()]
        if missing:
            export_onnx(run, models=missing)
        yield run, tmp
