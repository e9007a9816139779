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
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from kdeploy import progress
from kdeploy.data import Dataset
from kdeploy.errors import GateFailed, UserError
from kdeploy.export import manifest as mf
from kdeploy.export.ort import onnx_logits, top1_accuracy, try_session
from kdeploy.export.parity import check_parity
from kdeploy.export.rundata import load_run_data
from kdeploy.export.staging import publish, staging_dir
from kdeploy.runs import Run

EXTERNAL_DATA_BYTES = 1 << 30  # 1 GiB of weights: below, one file (protobuf's hard limit is 2 GiB)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET, MAX_OPSET = 13, 23


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def export_graph(model: nn.Module, in_shape: list[int], path: Path, opset: int) -> tuple[str, str | None]:
    """Write ``model`` to ``path`` with a dynamic batch dimension; returns ``(exporter, fallback_reason)``."""
    example = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    big = sum(p.numel() * p.element_size() for p in model.parameters()) >= EXTERNAL_DATA_BYTES
    sink = io.StringIO()  # the exporters print progress and warnings; library code must not
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=big,
            )
        return "dynamo", None
    except Exception as exc:  # the dynamo exporter fails in many ways (graph breaks, unsupported ops, ...)
        reason = _first_line(exc)
    for leftover in path.parent.iterdir():
        leftover.unlink()
    progress.log(f"  dynamo exporter failed ({reason}); falling back to the TorchScript exporter (dynamo=False)")
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:
        raise UserError(
            f"cannot export {type(model).__name__} to ONNX: dynamo exporter: {reason}; TorchScript exporter: "
            f"{_first_line(exc)}; try another --opset or simplify the model's forward"
        ) from None
    return "torchscript", reason


def check_model(path: Path) -> str | None:
    """``onnx.checker`` with ``full_check`` (strict shape inference too); the error text or ``None``."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        return _first_line(exc)
    return None


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _dtype(value_info: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def io_spec(path: Path, data: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a consumer needs to feed the artifact and read its output, with the manifest alone."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inp, out = graph.input[0], graph.output[0]
    in_dims, out_dims = _dims(inp), _dims(out)
    return (
        {
            "name": inp.name,
            "shape": ["batch", *in_dims[1:]],
            "dtype": _dtype(inp),
            "layout": "NCHW",
            "preprocess": "x = (pixel / 255 - mean[c]) / std[c] per channel, pixels uint8 in [0, 255]",
            "mean": list(data.mean),
            "std": list(data.std),
        },
        {
            "name": out.name,
            "shape": ["batch", *out_dims[1:]],
            "dtype": _dtype(out),
            "kind": "logits (argmax = class index; softmax for probabilities)",
            "classes": list(data.classes),
        },
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


def export_one(
    run: Run,
    role: str,
    data: Dataset,
    *,
    opset: int,
    atol: float,
    rtol: float,
    min_agreement: float,
    parity_batch: int,
    parity_samples: int,
) -> dict[str, Any]:
    """Export one model, gate it, publish its file(s) and upsert its manifest entry."""
    model, meta = run.load_model(role)
    in_shape = list(meta["model"]["in_shape"])
    ident = mf.artifact_id(role, "onnx")
    old = mf.find(run, ident)
    t0 = time.perf_counter()
    with staging_dir(run.export_dir) as tmp:
        out_dir = tmp / "out"
        out_dir.mkdir()
        staged = out_dir / f"{role}.onnx"
        exporter, fallback = export_graph(model, in_shape, staged, opset)
        export_s = time.perf_counter() - t0
        problem = check_model(staged)
        session, load_error = (None, "") if problem else try_session(staged)
        parity = accuracy = None
        if problem:
            reason = f"onnx.checker: {problem}"
        elif session is None:
            reason = f"ONNX Runtime cannot load it: {load_error}"
        else:
            parity = check_parity(
                model,
                session,
                data.test,
                data.mean,
                data.std,
                batch_size=parity_batch,
                samples=parity_samples,
                atol=atol,
                rtol=rtol,
                min_agreement=min_agreement,
            )
            accuracy = top1_accuracy(onnx_logits(session, data.test, data.mean, data.std), data.test.labels.numpy())
            reason = None if parity.passed else f"parity gate: {parity.summary()}"
        passed = reason is None
        companions = sorted(p for p in out_dir.iterdir() if p != staged)
        inp, outp = io_spec(staged, data)
        files = publish(
            staged,
            companions,
            run.export_dir,
            mf.file_name(role, "onnx", failed=not passed),
            old.get("files", []) if old else [],
        )
    main = run.export_dir / files[0]
    digest = mf.sha256(main)
    fp32 = round(meta["accuracy"], 6) if meta.get("accuracy") is not None else None  # stored as float32
    entry: dict[str, Any] = {
        "id": ident,
        "model": role,
        "format": "onnx",
        "files": files,
        "bytes": mf.file_bytes(run.export_dir, files),
        "sha256": digest,
        "opset": opset,
        "exporter": exporter,
        "exporter_note": f"dynamo exporter failed: {fallback}" if fallback else None,
        "source": run.weights_path(role).name,
        "input": inp,
        "output": outp,
        "parity": parity.to_dict() if parity else None,
        "accuracy": accuracy,
        "fp32_accuracy": fp32,
        "accuracy_drop": mf.drop(fp32, accuracy),
        "accuracy_samples": len(data.test),
        "passed": passed,
        "status": "ok" if passed else "failed",
        "reason": reason,
        "created": mf.now(),
        "export_seconds": round(export_s, 3),
        "settings": {
            "opset": opset,
            "atol": atol,
            "rtol": rtol,
            "min_agreement": min_agreement,
            "parity_batch": parity_batch,
            "parity_samples": parity_samples,
        },
        "versions": mf.versions(),
    }
    mf.upsert(run, entry)
    for stale in mf.drop_derived(run, mf.file_name(role, "onnx"), digest):
        progress.log(f"  removed {stale}: built from the previous {role}.onnx; re-run `kdeploy quantize`")
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One log line for an exported or quantized artifact."""
    parts = [f"{entry['id']}: {entry['status']}"]
    if entry.get("files"):
        parts.append(f"{entry['files'][0]} {entry['bytes'] / 1e6:.2f} MB")
    if entry.get("parity"):
        p = entry["parity"]
        parts.append(f"max abs diff {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2%}")
    if entry.get("accuracy") is not None:
        acc = f"accuracy {entry['accuracy']:.4f}"
        if entry.get("fp32_accuracy") is not None:
            acc += f" (fp32 {entry['fp32_accuracy']:.4f}, drop {entry['accuracy_drop'] * 100:+.2f} pt)"
        parts.append(acc)
    if entry.get("reason"):
        parts.append(entry["reason"])
    return "; ".join(parts)


def failures(entries: list[dict[str, Any]]) -> str:
    return " | ".join(describe(e) for e in entries if e["status"] == "failed")


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
) -> list[dict[str, Any]]:
    """Export the run's models (default: all) to ``<run>/export/<role>.onnx`` and gate each on parity.

    Returns the manifest entries. With ``raise_on_fail`` a failed gate raises :class:`GateFailed` after all
    models were processed and the manifest was written.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    check_opset(opset)
    check_thresholds(atol, rtol, min_agreement, parity_batch, parity_samples)
    roles = mf.select_models(run, models)
    data = load_run_data(run)
    entries = []
    for role in roles:
        progress.log(f"exporting {role} to ONNX (opset {opset})")
        entry = export_one(
            run,
            role,
            data,
            opset=opset,
            atol=atol,
            rtol=rtol,
            min_agreement=min_agreement,
            parity_batch=parity_batch,
            parity_samples=parity_samples,
        )
        progress.log("  " + describe(entry) + (f"; exporter {entry['exporter']}" if entry["exporter"] else ""))
        entries.append(entry)
    if raise_on_fail and any(e["status"] == "failed" for e in entries):
        raise GateFailed(failures(entries))
    return entries
