"""The typed records of ``<run>/export/manifest.json``: one :class:`Artifact` per ONNX, INT8, FP16 or TensorRT file.

On disk an artifact is the JSON object kdeploy has always written (see :mod:`kdeploy.artifacts.manifest`);
:meth:`Artifact.from_dict` reads it, tolerating missing keys (old run folders) and keeping unknown ones in
``extra`` so that a rewrite loses nothing; :meth:`Artifact.to_dict` writes the same keys back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdeploy.jsonrecord import split_known

Status = Literal["ok", "failed", "skipped"]


@dataclass
class InputSpec:
    """What a consumer needs to feed the artifact, from the manifest alone."""

    name: str = "input"
    shape: list[int | str] = field(default_factory=list)  # ["batch", C, H, W]
    dtype: str = "float32"
    layout: str = "NCHW"
    preprocess: str = ""
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass
class OutputSpec:
    """What the artifact returns: logits over ``classes``."""

    name: str = "logits"
    shape: list[int | str] = field(default_factory=list)  # ["batch", K]
    dtype: str = "float32"
    kind: str = ""
    classes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """An artifact's logits against a reference's: PyTorch for the fp32 ONNX (the parity gate, every field set) or
    the fp32 ONNX for a quantized artifact (``reference`` names it; informational, no thresholds)."""

    max_abs_diff: float
    top1_agreement: float
    samples: int | dict[str, int] | None = None  # whole test set, or per parity batch size
    reference: str | None = None
    max_rel_diff: float | None = None
    violations: int | None = None
    batch_sizes: list[int] | None = None
    atol: float | None = None
    rtol: float | None = None
    min_agreement: float | None = None
    passed: bool | None = None
    per_batch: dict[str, dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Comparison | None:
        if not data:
            return None
        known, extra = split_known(cls, data)
        known.setdefault("max_abs_diff", float("nan"))
        known.setdefault("top1_agreement", float("nan"))
        return cls(**known, extra=extra)


def _spec(kind: type, data: dict[str, Any] | None) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in (data or {}).items() if k in names})


@dataclass
class Artifact:
    """One exported or converted model file and everything known about it (one manifest entry)."""

    id: str
    model: str
    format: str
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    sha256: str | None = None
    opset: int | None = None
    exporter: str | None = None
    exporter_note: str | None = None
    source: str | None = None  # the file it was built from (weights, or the ONNX a conversion read)
    source_sha256: str | None = None
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    parity: Comparison | None = None  # fp32 ONNX vs PyTorch (the parity gate)
    vs_fp32: Comparison | None = None  # a quantized artifact vs its fp32 ONNX (informational)
    accuracy: float | None = None
    fp32_accuracy: float | None = None
    accuracy_drop: float | None = None
    accuracy_samples: int | None = None
    passed: bool = False
    status: Status = "failed"
    reason: str | None = None
    created: str | None = None
    seconds: float | None = None  # time the stage spent: export_seconds / convert_seconds / build_seconds on disk
    settings: dict[str, Any] = field(default_factory=dict)  # the stage's options, free-form by stage
    versions: dict[str, str | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept on rewrite

    # ---- state --------------------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether a consumer may load and serve this artifact (it passed its gate and has a file)."""
        return self.status == "ok" and self.passed and bool(self.files)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def runtime(self) -> str:
        """The runtime that serves it: ``tensorrt`` for engines, ``onnxruntime`` for every ONNX file."""
        return "tensorrt" if self.format.startswith("tensorrt") else "onnxruntime"

    def paths(self, folder: Path) -> list[Path]:
        return [folder / name for name in self.files]

    # ---- JSON ----------------------------------------------------------------------------------------------
    @property
    def _seconds_key(self) -> str:
        if self.format == "onnx":
            return "export_seconds"
        return "build_seconds" if self.runtime == "tensorrt" else "convert_seconds"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "seconds", "vs_fp32") or (f.name == "exporter_note" and self.format != "onnx"):
                continue
            value = getattr(self, f.name)
            if f.name in ("input", "output"):
                value = dataclasses.asdict(value)
            elif f.name == "parity":
                value = value.to_dict() if value else None
            out[f.name] = value
            if f.name == "parity" and self.format != "onnx":
                out["vs_fp32"] = self.vs_fp32.to_dict() if self.vs_fp32 else None
        if self.seconds is not None:
            out[self._seconds_key] = self.seconds
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        names = {f.name for f in dataclasses.fields(cls)}
        seconds_keys = {"export_seconds", "convert_seconds", "build_seconds"}
        simple = {
            k: v for k, v in data.items() if k in names and k not in ("input", "output", "parity", "vs_fp32", "extra")
        }
        art = cls(
            **{"id": "?", "model": "?", "format": "?", **simple},
            input=_spec(InputSpec, data.get("input")),
            output=_spec(OutputSpec, data.get("output")),
            parity=Comparison.from_dict(data.get("parity")),
            vs_fp32=Comparison.from_dict(data.get("vs_fp32")),
        )
        art.files = list(art.files or [])
        art.seconds = next((data[k] for k in seconds_keys if data.get(k) is not None), None)
        art.extra = {k: v for k, v in data.items() if k not in names and k not in seconds_keys}
        return art
