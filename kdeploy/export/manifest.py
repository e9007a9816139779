"""``<run>/export/manifest.json``: one entry per artifact (ONNX, INT8, FP16, TensorRT), replaced atomically.

An entry is a plain dict::

    {"id": "student:onnx-int8", "model": "student", "format": "onnx-int8", "files": ["student.int8.onnx"],
     "bytes": 163_000, "sha256": "...", "opset": 18, "exporter": "dynamo", "source": "student.onnx",
     "input": {"name", "shape": ["batch", C, H, W], "dtype", "layout", "scale", "mean", "std"},
     "output": {"name", "shape": ["batch", K], "dtype", "classes"},
     "parity": {...}, "accuracy": 0.97, "fp32_accuracy": 0.975, "accuracy_drop": 0.005,
     "passed": true, "status": "ok" | "failed" | "skipped", "reason": null, "created": "...", "settings": {...}}

A failed artifact keeps its file under a ``.failed`` name (``student.failed.onnx``) so that nothing under the
valid name looks usable, and its entry says ``passed: false, status: "failed"``. A skipped artifact (e.g. dynamic
INT8 that ONNX Runtime cannot run) has no files and a ``reason``. Consumers (bench) use :func:`usable` to pick.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from kdeploy import atomic
from kdeploy.errors import UserError
from kdeploy.runs import Run, package_versions

MANIFEST_NAME = "manifest.json"

# format -> file name suffix after the model role (``student`` + suffix)
SUFFIXES = {
    "onnx": ".onnx",
    "onnx-int8": ".int8.onnx",
    "onnx-int8-qat": ".qat.int8.onnx",  # kdeploy.qat: quantization-aware distilled student
    "onnx-int8-dynamic": ".int8-dynamic.onnx",
    "onnx-fp16": ".fp16.onnx",
    "tensorrt-fp16": ".fp16.engine",
    "tensorrt-int8": ".int8.engine",
}


def manifest_path(run: Run) -> Path:
    return run.export_dir / MANIFEST_NAME


def artifact_id(model: str, fmt: str) -> str:
    return f"{model}:{fmt}"


def file_name(model: str, fmt: str, failed: bool = False) -> str:
    """``student.int8.onnx``; a failed artifact gets ``.failed`` before its extension (``student.int8.failed.onnx``)."""
    suffix = SUFFIXES[fmt]
    if not failed:
        return model + suffix
    stem, _, ext = suffix.rpartition(".")
    return f"{model}{stem}.failed.{ext}"


def read_manifest(run: Run) -> dict[str, Any]:
    """The manifest, or ``{"artifacts": []}`` when nothing was exported yet."""
    path = manifest_path(run)
    if not path.is_file():
        return {"artifacts": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt JSON; delete it and re-run `kdeploy export --onnx`") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise UserError(f"{path}: not a kdeploy manifest; delete it and re-run `kdeploy export --onnx`")
    return data


def find(run: Run, ident: str) -> dict[str, Any] | None:
    for entry in read_manifest(run)["artifacts"]:
        if entry.get("id") == ident:
            return entry
    return None


def upsert(run: Run, entry: dict[str, Any]) -> dict[str, Any]:
    """Insert or replace the entry with the same ``id`` and rewrite the manifest atomically."""
    data = read_manifest(run)
    arts = [a for a in data["artifacts"] if a.get("id") != entry["id"]]
    arts.append(entry)
    arts.sort(
        key=lambda a: (a.get("model", ""), list(SUFFIXES).index(a["format"]) if a.get("format") in SUFFIXES else 99)
    )
    data["artifacts"] = arts
    atomic.write_json(manifest_path(run), data)
    return entry


def remove(run: Run, ident: str) -> dict[str, Any] | None:
    """Drop an entry and delete its files; returns the removed entry."""
    data = read_manifest(run)
    gone = [a for a in data["artifacts"] if a.get("id") == ident]
    if not gone:
        return None
    for name in gone[0].get("files", []):
        (run.export_dir / name).unlink(missing_ok=True)
    data["artifacts"] = [a for a in data["artifacts"] if a.get("id") != ident]
    atomic.write_json(manifest_path(run), data)
    return gone[0]


def artifact_path(run: Run, entry: dict[str, Any]) -> Path:
    """The main file of an artifact (the ``.onnx`` or ``.engine``); raises for skipped entries."""
    files = entry.get("files") or []
    if not files:
        raise UserError(f"{entry.get('id')}: no file ({entry.get('reason') or 'skipped'}); re-run the export")
    path = run.export_dir / files[0]
    if not path.is_file():
        raise UserError(f"{path}: listed in the manifest but missing; re-run `kdeploy export` / `kdeploy quantize`")
    return path


def usable(entry: dict[str, Any]) -> bool:
    """Whether a consumer may load and serve this artifact (it passed its gate)."""
    return entry.get("status") == "ok" and bool(entry.get("passed")) and bool(entry.get("files"))


def file_bytes(folder: Path, files: list[str]) -> int:
    return sum((folder / f).stat().st_size for f in files)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def drop(reference: float | None, accuracy: float | None) -> float | None:
    """Accuracy lost versus the reference (positive = worse), rounded to 1e-6 to hide float32 noise."""
    if reference is None or accuracy is None:
        return None
    return round(reference - accuracy, 6)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    return package_versions("torch", "onnx", "onnxruntime")


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
        a["id"]
        for a in read_manifest(run)["artifacts"]
        if a.get("source") == source_name and a.get("source_sha256") not in (None, source_sha256)
    ]
    for ident in stale:
        remove(run, ident)
    return stale
