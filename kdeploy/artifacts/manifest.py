"""``<run>/export/manifest.json``: one entry per artifact (ONNX, INT8, FP16, TensorRT), replaced atomically.

An entry is an :class:`~kdeploy.artifacts.record.Artifact` written as JSON::

    {"id": "student:onnx-int8", "model": "student", "format": "onnx-int8", "files": ["student.int8.onnx"],
     "bytes": 163_000, "sha256": "...", "opset": 18, "exporter": "dynamo", "source": "student.onnx",
     "input": {"name", "shape": ["batch", C, H, W], "dtype", "layout", "scale", "mean", "std"},
     "output": {"name", "shape": ["batch", K], "dtype", "classes"},
     "parity": {...}, "accuracy": 0.97, "fp32_accuracy": 0.975, "accuracy_drop": 0.005,
     "passed": true, "status": "ok" | "failed" | "skipped", "reason": null, "created": "...", "settings": {...}}

A failed artifact keeps its file under a ``.failed`` name (``student.failed.onnx``) so that nothing under the
valid name looks usable, and its entry says ``passed: false, status: "failed"``. A skipped artifact (e.g. dynamic
INT8 that ONNX Runtime cannot run) has no files and a ``reason``. Consumers (bench) check ``Artifact.usable``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from kdeploy import atomic
from kdeploy.artifacts.record import Artifact
from kdeploy.errors import UserError
from kdeploy.runs import Run

# format -> file name suffix after the model role (``student`` + suffix); also the manifest's sort order
SUFFIXES = {
    "onnx": ".onnx",
    "onnx-int8": ".int8.onnx",
    "onnx-int8-qat": ".qat.int8.onnx",  # kdeploy.qat: quantization-aware distilled student
    "onnx-int8-dynamic": ".int8-dynamic.onnx",
    "onnx-fp16": ".fp16.onnx",
    "tensorrt-fp16": ".fp16.engine",
    "tensorrt-int8": ".int8.engine",
}


def artifact_id(model: str, fmt: str) -> str:
    return f"{model}:{fmt}"


def file_name(model: str, fmt: str, failed: bool = False) -> str:
    """``student.int8.onnx``; a failed artifact gets ``.failed`` before its extension (``student.int8.failed.onnx``)."""
    suffix = SUFFIXES[fmt]
    if not failed:
        return model + suffix
    stem, _, ext = suffix.rpartition(".")
    return f"{model}{stem}.failed.{ext}"


@dataclass
class Manifest:
    """Every artifact of a run, in model then format order."""

    artifacts: list[Artifact] = field(default_factory=list)

    def find(self, ident: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.id == ident), None)

    def to_dict(self) -> dict[str, object]:
        return {"artifacts": [a.to_dict() for a in self.artifacts]}


def read_manifest(run: Run) -> Manifest:
    """The manifest, or an empty one when nothing was exported yet."""
    path = run.manifest_path
    if not path.is_file():
        return Manifest()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt JSON; delete it and re-run `kdeploy export --onnx`") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise UserError(f"{path}: not a kdeploy manifest; delete it and re-run `kdeploy export --onnx`")
    return Manifest([Artifact.from_dict(a) for a in data["artifacts"] if isinstance(a, dict)])


def write_manifest(run: Run, manifest: Manifest) -> None:
    order = list(SUFFIXES)
    manifest.artifacts.sort(key=lambda a: (a.model, order.index(a.format) if a.format in order else 99))
    atomic.write_json(run.manifest_path, manifest.to_dict())


def find(run: Run, ident: str) -> Artifact | None:
    return read_manifest(run).find(ident)


def upsert(run: Run, artifact: Artifact) -> Artifact:
    """Insert or replace the entry with the same ``id`` and rewrite the manifest atomically."""
    manifest = read_manifest(run)
    manifest.artifacts = [a for a in manifest.artifacts if a.id != artifact.id] + [artifact]
    write_manifest(run, manifest)
    return artifact


def remove(run: Run, ident: str) -> Artifact | None:
    """Drop an entry and delete its files; returns the removed entry."""
    manifest = read_manifest(run)
    gone = manifest.find(ident)
    if gone is None:
        return None
    for path in gone.paths(run.export_dir):
        path.unlink(missing_ok=True)
    manifest.artifacts = [a for a in manifest.artifacts if a.id != ident]
    write_manifest(run, manifest)
    return gone


def artifact_path(run: Run, artifact: Artifact) -> Path:
    """The main file of an artifact (the ``.onnx`` or ``.engine``); raises for skipped entries."""
    if not artifact.files:
        raise UserError(f"{artifact.id}: no file ({artifact.reason or 'skipped'}); re-run the export")
    path = run.export_dir / artifact.files[0]
    if not path.is_file():
        raise UserError(f"{path}: listed in the manifest but missing; re-run `kdeploy export` / `kdeploy quantize`")
    return path


def file_bytes(folder: Path, files: list[str]) -> int:
    return sum((folder / f).stat().st_size for f in files)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_models(run: Run, models: list[str] | str | None) -> list[str]:
    """Roles to work on: ``None`` = every trained model of the run (student first); names are checked."""
    have = run.roles()
    if not have:
        raise UserError(f"{run.root}: no trained models (*.safetensors); run `kdeploy distill` first")
    if models is None:
        return [r for r in ("student", "baseline", "teacher") if r in have]
    wanted = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not wanted:
        raise UserError("--models is empty; pass e.g. --models student,teacher")
    missing = [m for m in wanted if m not in have]
    if missing:
        raise UserError(f"--models {','.join(missing)}: not in this run; models in {run.root.name}: {', '.join(have)}")
    return list(dict.fromkeys(wanted))


def drop_derived(run: Run, source_name: str, source_sha256: str) -> list[str]:
    """Remove artifacts built from an older version of ``source_name`` (their source was replaced)."""
    stale = [
        a.id
        for a in read_manifest(run).artifacts
        if a.source == source_name and a.source_sha256 not in (None, source_sha256)
    ]
    for ident in stale:
        remove(run, ident)
    return stale
