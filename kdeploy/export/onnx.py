"""PyTorch -> ONNX export with a dynamic batch, a full checker pass and the parity gate.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is tried first; if it raises, the TorchScript
exporter (``dynamo=False``) is used and the manifest says so (``exporter: "torchscript"``, ``exporter_note``).
Models up to ``EXTERNAL_DATA_BYTES`` of parameters are written as one self-contained ``.onnx``; larger ones get
external data files, all of which are listed in the manifest entry and counted in ``bytes``.

A model that fails the gate is kept as ``<role>.failed.onnx`` (never under the valid name) with
``status: "failed"`` in the manifest, and :class:`GateFailed` is raised after every model was processed.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from kdeploy import progress
from kdeploy.artifacts import (
    Artifact,
    Comparison,
    InputSpec,
    OutputSpec,
    build_artifact,
    describe,
    finish_stage,
    manifest,
)
from kdeploy.data import Dataset
from kdeploy.errors import UserError, first_line
from kdeploy.evaluate import top1_accuracy
from kdeploy.export.ort import onnx_logits, try_session
from kdeploy.export.parity import ParityResult, check_parity
from kdeploy.export.staging import publish, staging_dir
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run

EXTERNAL_DATA_BYTES = 1 << 30  # 1 GiB of weights: below, one file (protobuf's hard limit is 2 GiB)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET, MAX_OPSET = 13, 23


def _torch_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamo: bool) -> None:
    """One ``torch.onnx.export`` call, quiet: the exporters print progress and warnings; library code must not."""
    if dynamo:
        big = sum(p.numel() * p.element_size() for p in model.parameters()) >= EXTERNAL_DATA_BYTES
        extra: dict[str, Any] = {"dynamic_shapes": ({0: torch.export.Dim("batch")},), "external_data": big}
    else:
        extra = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=dynamo,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            **extra,
        )


def export_graph(model: nn.Module, in_shape: list[int], path: Path, opset: int) -> tuple[str, str | None]:
    """Write ``model`` to ``path`` with a dynamic batch dimension; returns ``(exporter, fallback_reason)``."""
    example = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    try:
        _torch_export(model, example, path, opset, dynamo=True)
        return "dynamo", None
    except Exception as exc:  # the dynamo exporter fails in many ways (graph breaks, unsupported ops, ...)
        reason = first_line(exc)
    for leftover in path.parent.iterdir():
        leftover.unlink()
    progress.log(f"  dynamo exporter failed ({reason}); falling back to the TorchScript exporter (dynamo=False)")
    try:
        _torch_export(model, example, path, opset, dynamo=False)
    except Exception as exc:
        raise UserError(
            f"cannot export {type(model).__name__} to ONNX: dynamo exporter: {reason}; TorchScript exporter: "
            f"{first_line(exc)}; try another --opset or simplify the model's forward"
        ) from None
    return "torchscript", reason


def check_model(path: Path) -> str | None:
    """``onnx.checker`` with ``full_check`` (strict shape inference too); the error text or ``None``."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        return first_line(exc)
    return None


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _dtype(value_info: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def io_spec(path: Path, data: Dataset) -> tuple[InputSpec, OutputSpec]:
    """What a consumer needs to feed the artifact and read its output, with the manifest alone."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inp, out = graph.input[0], graph.output[0]
    return (
        InputSpec(
            name=inp.name,
            shape=["batch", *_dims(inp)[1:]],
            dtype=_dtype(inp),
            layout="NCHW",
            preprocess="x = (pixel / 255 - mean[c]) / std[c] per channel, pixels uint8 in [0, 255]",
            mean=list(data.mean),
            std=list(data.std),
        ),
        OutputSpec(
            name=out.name,
            shape=["batch", *_dims(out)[1:]],
            dtype=_dtype(out),
            kind="logits (argmax = class index; softmax for probabilities)",
            classes=list(data.classes),
        ),
    )


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset}: supported opsets are {MIN_OPSET}..{MAX_OPSET}; the default 18 is safe")


def check_thresholds(atol: float, rtol: float, min_agreement: float, parity_batch: int, parity_samples: int) -> None:
    if not (atol >= 0 and rtol >= 0 and math.isfinite(atol) and math.isfinite(rtol)):
        raise UserError(f"--atol {atol} / --rtol {rtol}: must be finite and >= 0")
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"--min-agreement {min_agreement}: must be a fraction in [0, 1], e.g. 0.999")
    if parity_batch < 2:
        raise UserError(f"--parity-batch {parity_batch}: must be >= 2 (batch size 1 is always checked as well)")
    if parity_samples < 1:
        raise UserError(f"--parity-samples {parity_samples}: must be >= 1")


@dataclass
class ParitySettings:
    """The parity gate's thresholds and sample plan (``kdeploy export --atol ...``)."""

    atol: float = 1e-4
    rtol: float = 0.0
    min_agreement: float = 1.0
    parity_batch: int = 256
    parity_samples: int = 1024

    def check(self) -> None:
        check_thresholds(self.atol, self.rtol, self.min_agreement, self.parity_batch, self.parity_samples)


def gate_export(
    model: nn.Module, staged: Path, data: Dataset, gate: ParitySettings
) -> tuple[ParityResult | None, float | None, str | None]:
    """Check the staged file (checker, ORT load, parity, test accuracy): ``(parity, accuracy, failure reason)``."""
    problem = check_model(staged)
    if problem:
        return None, None, f"onnx.checker: {problem}"
    session, load_error = try_session(staged)
    if session is None:
        return None, None, f"ONNX Runtime cannot load it: {load_error}"
    parity = check_parity(
        model,
        session,
        data.test,
        data.mean,
        data.std,
        batch_size=gate.parity_batch,
        samples=gate.parity_samples,
        atol=gate.atol,
        rtol=gate.rtol,
        min_agreement=gate.min_agreement,
    )
    accuracy = top1_accuracy(onnx_logits(session, data.test, data.mean, data.std), data.test.labels.numpy())
    return parity, accuracy, None if parity.passed else f"parity gate: {parity.summary()}"


def export_one(run: Run, role: str, data: Dataset, *, opset: int, gate: ParitySettings) -> Artifact:
    """Export one model, gate it, publish its file(s) and upsert its manifest entry."""
    model, meta = run.load_model(role)
    old = manifest.find(run, manifest.artifact_id(role, "onnx"))
    t0 = time.perf_counter()
    with staging_dir(run.export_dir) as tmp:
        out_dir = tmp / "out"
        out_dir.mkdir()
        staged = out_dir / f"{role}.onnx"
        exporter, fallback = export_graph(model, list(meta.in_shape), staged, opset)
        export_s = time.perf_counter() - t0
        parity, accuracy, reason = gate_export(model, staged, data, gate)
        companions = sorted(p for p in out_dir.iterdir() if p != staged)
        inp, outp = io_spec(staged, data)
        name = manifest.file_name(role, "onnx", failed=reason is not None)
        files = publish(staged, companions, run.export_dir, name, old.files if old else [])
    fp32 = meta.accuracy
    art = build_artifact(
        run,
        role,
        "onnx",
        files,
        status="ok" if reason is None else "failed",
        reason=reason,
        accuracy=accuracy,
        fp32_accuracy=round(fp32, 6) if fp32 is not None else None,  # stored as float32
        samples=len(data.test),
        settings={"opset": opset, **asdict(gate)},
        seconds=export_s,
        opset=opset,
        exporter=exporter,
        exporter_note=f"dynamo exporter failed: {fallback}" if fallback else None,
        source=run.weights_path(role).name,
        input=inp,
        output=outp,
        parity=Comparison.from_dict(parity.to_dict()) if parity else None,
    )
    manifest.upsert(run, art)
    for stale in manifest.drop_derived(run, manifest.file_name(role, "onnx"), art.sha256 or ""):
        progress.log(f"  removed {stale}: built from the previous {role}.onnx; re-run `kdeploy quantize`")
    return art


def export_onnx(
    run: Run | str | Path | None = None,
    models: list[str] | str | None = None,
    opset: int = 18,
    atol: float = 1e-4,
    min_agreement: float = 1.0,
    parity_batch: int = 256,
    *,
    rtol: float = 0.0,
    parity_samples: int = 1024,
    raise_on_fail: bool = True,
) -> list[Artifact]:
    """Export the run's models (default: all) to ``<run>/export/<role>.onnx`` and gate each on parity.

    Returns the artifacts. With ``raise_on_fail`` a failed gate raises :class:`GateFailed` after all
    models were processed and the manifest was written.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    check_opset(opset)
    gate = ParitySettings(atol, rtol, min_agreement, parity_batch, parity_samples)
    gate.check()
    roles = manifest.select_models(run, models)
    data = load_run_data(run)
    artifacts = []
    for role in roles:
        progress.log(f"exporting {role} to ONNX (opset {opset})")
        art = export_one(run, role, data, opset=opset, gate=gate)
        progress.log("  " + describe(art) + (f"; exporter {art.exporter}" if art.exporter else ""))
        artifacts.append(art)
    return finish_stage(artifacts, raise_on_fail)
