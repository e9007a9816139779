"""How every artifact stage (export, quantize, TensorRT, QAT) builds, gates, describes and finishes its artifacts.

- :func:`build_artifact`: the one builder; sizes, digest, accuracy drop, time stamp and versions are filled here.
- :func:`accuracy_gate`: the one accuracy gate (drop from the fp32 ONNX accuracy within a budget) and its message.
- :func:`finish_stage`: a stage processes every model, then raises one :class:`GateFailed` naming every failure.
- :func:`source_artifact`: the gated artifact a stage builds from (fp32 ONNX, INT8 or FP16 ONNX), checked on disk.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from kdeploy.artifacts.manifest import artifact_id, artifact_path, file_bytes, find, sha256
from kdeploy.artifacts.record import Artifact, Comparison, InputSpec, OutputSpec, Status
from kdeploy.errors import GateFailed, UserError
from kdeploy.runs import Run, package_versions

# the command that makes each source format, for "run X first" hints
MAKES = {
    "onnx": "kdeploy export {root} --onnx",
    "onnx-int8": "kdeploy quantize {root} --int8",
    "onnx-fp16": "kdeploy quantize {root} --fp16",
}


def accuracy_drop(reference: float | None, accuracy: float | None) -> float | None:
    """Accuracy lost versus the reference (positive = worse), rounded to 1e-6 to hide float32 noise."""
    if reference is None or accuracy is None:
        return None
    return round(reference - accuracy, 6)


def accuracy_gate(accuracy: float, reference: float | None, max_drop: float) -> str | None:
    """``None`` when ``accuracy`` lost at most ``max_drop`` against the fp32 ``reference``, else the reason."""
    if reference is None:
        return "accuracy gate: the fp32 ONNX artifact records no accuracy; re-run `kdeploy export --onnx`"
    drop = round(reference - accuracy, 6)
    if drop <= max_drop:  # False for NaN: a broken model fails
        return None
    return f"accuracy gate: {accuracy:.4f} vs fp32 {reference:.4f}, drop {drop * 100:.2f} pt > {max_drop * 100:.2f} pt"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_artifact(
    run: Run,
    role: str,
    fmt: str,
    files: list[str],
    *,
    status: Status,
    reason: str | None,
    accuracy: float | None,
    fp32_accuracy: float | None,
    samples: int,
    settings: dict[str, Any],
    seconds: float | None,
    built_from: Artifact | None = None,
    **known: Any,
) -> Artifact:
    """The manifest record of a file a stage just published into ``<run>/export``.

    A conversion passes the artifact it read as ``built_from``: opset, exporter, input and output are inherited and
    ``source``/``source_sha256`` point at it. ``known`` sets any other :class:`Artifact` field (``input``,
    ``parity``, ``vs_fp32``, ``exporter``, ...)."""
    inherited: dict[str, Any] = {}
    if built_from is not None:
        inherited = {
            "opset": built_from.opset,
            "exporter": built_from.exporter,
            "source": built_from.files[0] if built_from.files else None,
            "source_sha256": built_from.sha256,
            "input": built_from.input,
            "output": built_from.output,
        }
    return Artifact(
        id=artifact_id(role, fmt),
        model=role,
        format=fmt,
        files=files,
        bytes=file_bytes(run.export_dir, files) if files else 0,
        sha256=sha256(run.export_dir / files[0]) if files else None,
        accuracy=accuracy,
        fp32_accuracy=fp32_accuracy,
        accuracy_drop=accuracy_drop(fp32_accuracy, accuracy),
        accuracy_samples=samples,
        passed=status == "ok",
        status=status,
        reason=reason,
        created=now(),
        seconds=None if seconds is None else round(seconds, 3),
        settings=settings,
        versions=package_versions("torch", "onnx", "onnxruntime"),
        **{**inherited, **known},
    )


def source_artifact(run: Run, role: str, fmt: str, purpose: str) -> Artifact:
    """The ``fmt`` artifact of ``role`` that passed its gate and is unchanged on disk; ``purpose`` names the user.

    Raises a one-line :class:`UserError` with the command that makes it when it is missing, failed or changed."""
    art = find(run, artifact_id(role, fmt))
    fix = MAKES[fmt].format(root=run.root)
    if art is None:
        raise UserError(f"{run.root.name}: no {fmt} artifact of {role}, which {purpose} needs; run `{fix}` first")
    if not art.usable:
        raise UserError(
            f"{art.id} did not pass its gate ({art.reason}), so {purpose} cannot use it; fix it and run `{fix}`"
        )
    path = artifact_path(run, art)
    if art.sha256 and sha256(path) != art.sha256:
        raise UserError(f"{path}: changed since it was made and gated; run `{fix}` again")
    return art


def describe(art: Artifact) -> str:
    """One log line for an exported or converted artifact."""
    parts = [f"{art.id}: {art.status}"]
    if art.files:
        parts.append(f"{art.files[0]} {art.bytes / 1e6:.2f} MB")
    if art.parity:
        parts.append(f"max abs diff {art.parity.max_abs_diff:.2e}, top-1 agreement {art.parity.top1_agreement:.2%}")
    if art.accuracy is not None:
        acc = f"accuracy {art.accuracy:.4f}"
        if art.fp32_accuracy is not None and art.accuracy_drop is not None:
            acc += f" (fp32 {art.fp32_accuracy:.4f}, drop {art.accuracy_drop * 100:+.2f} pt)"
        parts.append(acc)
    if art.reason:
        parts.append(art.reason)
    return "; ".join(parts)


def failures(artifacts: Sequence[Artifact]) -> str:
    """Every failed artifact's line, joined; empty when none failed."""
    return " | ".join(describe(a) for a in artifacts if a.failed)


def finish_stage(artifacts: list[Artifact], raise_on_fail: bool = True) -> list[Artifact]:
    """The end of every stage: with ``raise_on_fail``, one :class:`GateFailed` naming every failed artifact."""
    problems = failures(artifacts)
    if raise_on_fail and problems:
        raise GateFailed(problems)
    return artifacts


__all__ = [
    "Artifact",
    "Comparison",
    "InputSpec",
    "OutputSpec",
    "accuracy_gate",
    "build_artifact",
    "describe",
    "failures",
    "finish_stage",
    "source_artifact",
]
