"""The quantize stage: per model and format, convert the gated fp32 ONNX, gate the result on accuracy, record it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kdeploy import cpu, progress
from kdeploy.artifacts import (
    Artifact,
    Comparison,
    accuracy_gate,
    build_artifact,
    describe,
    finish_stage,
    manifest,
    source_artifact,
)
from kdeploy.artifacts.record import Status
from kdeploy.data import Dataset, iterate_batches
from kdeploy.errors import UserError, first_line
from kdeploy.evaluate import top1_accuracy
from kdeploy.export.onnx import check_model
from kdeploy.export.ort import onnx_logits, try_session
from kdeploy.export.parity import compare_logits
from kdeploy.export.qdq_target import DEFAULT_TARGET, check_target
from kdeploy.export.staging import publish, staging_dir
from kdeploy.quantize.calibration import Calibration, calibration_split
from kdeploy.quantize.convert import (
    CALIB_METHODS,
    FLOAT_GELU,
    STATIC_INT8,
    QuantOptions,
    convert,
    dynamic_problem,
)
from kdeploy.quantize.graph import module_nodes
from kdeploy.recipe import load_data
from kdeploy.rundata import run_recipe
from kdeploy.runs import Run

METHODS = ("static", "dynamic")
WHAT = {"onnx-int8": "static INT8", "onnx-int8-dynamic": "dynamic INT8", "onnx-fp16": "FP16"}


# on fast_cnn students per-tensor static INT8 lost 1-7 points where per-channel weights lost at most 1.2
# (benchmarks/README.md, "Static INT8 calibration choices" and "fast_cnn in static INT8: the whitening stem in float")
PER_CHANNEL_ADVICE = "per-channel weights often recover it: add --per-channel"


@dataclass
class Outcome:
    """What converting and gating one artifact gave (before it is published and recorded)."""

    status: Status = "ok"
    reason: str | None = None
    accuracy: float | None = None
    vs_fp32: Comparison | None = None


def gate_converted(
    staged: Path,
    source: Artifact,
    data: Dataset,
    fp32_logits: np.ndarray,
    max_accuracy_drop: float,
    graph_level: str = "all",
) -> Outcome:
    """Checker, ORT load, test accuracy and the accuracy gate of a converted file (``graph_level="disabled"``:
    the Q/DQ arithmetic itself, without ORT's fused integer kernels)."""
    problem = check_model(staged)
    session, load_error = (None, "") if problem else try_session(staged, graph_level=graph_level)
    if problem or session is None:
        return Outcome("failed", f"onnx.checker: {problem}" if problem else f"ORT: {load_error}")
    logits = onnx_logits(session, data.test, data.mean, data.std)
    accuracy = top1_accuracy(logits, data.test.labels.numpy())
    vs_fp32 = Comparison(reference=source.files[0], **compare_logits(fp32_logits, logits))
    reason = accuracy_gate(accuracy, source.accuracy, max_accuracy_drop)
    return Outcome("failed" if reason else "ok", reason, accuracy, vs_fp32)


def fp32_test_logits(run: Run, source: Artifact, data: Dataset) -> np.ndarray:
    """The gated fp32 ONNX file's test-set logits through ONNX Runtime: what every quantized file is compared with."""
    session, error = try_session(manifest.artifact_path(run, source))
    if session is None:
        raise UserError(f"{source.files[0]}: ONNX Runtime cannot load it ({error}); re-run `kdeploy export --onnx`")
    return onnx_logits(session, data.test, data.mean, data.std)


def _convert(
    fmt: str, src: Path, staged: Path, data: Dataset, calib: Calibration | None, options: QuantOptions
) -> tuple[Outcome, dict[str, Any], float]:
    """Write ``staged``; a converter that raises (ORT's do on graphs they do not handle) gives a failed outcome."""
    t0 = time.perf_counter()
    outcome, settings = Outcome(), {}
    try:
        settings = convert(fmt, src, staged, staged.parent, data, calib.split if calib else None, options)
    except Exception as exc:
        outcome = Outcome("failed", f"{fmt} conversion raised {type(exc).__name__}: {first_line(exc)}")
    if fmt in STATIC_INT8 and calib is not None:
        settings.update(calib.settings())
    return outcome, settings, time.perf_counter() - t0


def _check(
    fmt: str, staged: Path, source: Artifact, data: Dataset, fp32_logits: np.ndarray, settings: dict[str, Any],
    options: QuantOptions, max_accuracy_drop: float,
) -> Outcome:  # fmt: skip
    """A dynamic INT8 graph that quantized nothing or cannot run is skipped; every other file is gated on accuracy."""
    if fmt == "onnx-int8-dynamic":
        sample = next(iterate_batches(data.test.head(8), 8, shuffle=False, mean=data.mean, std=data.std))[0]
        skip = dynamic_problem(staged, settings, sample.numpy())
        if skip:
            return Outcome("skipped", skip)
    # a TensorRT file is judged by its Q/DQ arithmetic: ORT's CPU integer kernels are not what TensorRT runs
    # (on x86 CPUs without VNNI they saturate on the full-range weights TensorRT wants)
    level = "disabled" if options.target == "tensorrt" else "all"
    settings["accuracy_arithmetic"] = "q/dq reference" if level == "disabled" else "onnxruntime kernels"
    outcome = gate_converted(staged, source, data, fp32_logits, max_accuracy_drop, level)
    # per tensor by the user's choice (--per-tensor), as converted: TensorRT's form is per channel anyway
    chosen_per_tensor = options.per_channel is False and not settings["per_channel"]
    if outcome.status == "failed" and fmt == "onnx-int8" and chosen_per_tensor:
        return replace(outcome, reason=f"{outcome.reason}; {PER_CHANNEL_ADVICE}")
    return outcome


def _attempt(
    fmt: str, src: Path, staged: Path, source: Artifact, data: Dataset, fp32_logits: np.ndarray,
    calib: Calibration | None, options: QuantOptions, max_accuracy_drop: float,
) -> tuple[Outcome, dict[str, Any], float]:  # fmt: skip
    """Convert ``src`` into ``staged`` and, when that worked, check and gate the file."""
    outcome, settings, seconds = _convert(fmt, src, staged, data, calib, options)
    settings["max_accuracy_drop"] = max_accuracy_drop
    if outcome.status == "ok":
        outcome = _check(fmt, staged, source, data, fp32_logits, settings, options, max_accuracy_drop)
    return outcome, settings, seconds


def _per_channel_next(fmt: str, options: QuantOptions, outcome: Outcome, settings: dict[str, Any]) -> bool:
    """Weights left to kdeploy (``per_channel=None``): a static INT8 file whose per-tensor weights ran but missed
    the accuracy gate is made again with per-channel weights (one BatchNorm-folded channel far wider than the rest
    collapses a per-tensor file: benchmarks/README.md, ``fashion_mnist_dwcnn_qat``)."""
    missed_gate = outcome.status == "failed" and outcome.accuracy is not None
    return options.per_channel is None and fmt == "onnx-int8" and missed_gate and not settings["per_channel"]


Attempt = Callable[[QuantOptions], tuple[Outcome, dict[str, Any], float]]


def _make(fmt: str, attempt: Attempt, options: QuantOptions) -> tuple[Outcome, dict[str, Any], float]:
    """``attempt(options)`` (:func:`_attempt` with everything but the options bound), then once more with
    per-channel weights where :func:`_per_channel_next` says so; the settings keep the per-tensor file's accuracy."""
    outcome, settings, seconds = attempt(options)
    if not _per_channel_next(fmt, options, outcome, settings):
        return outcome, settings, seconds
    progress.log(f"  per-tensor weights: {outcome.accuracy:.2%}, {outcome.reason}; trying per-channel weights")
    per_tensor = outcome.accuracy
    outcome, settings, more = attempt(replace(options, per_channel=True))
    settings["per_tensor_accuracy"] = per_tensor
    if outcome.status == "failed" and outcome.reason:
        outcome = replace(outcome, reason=f"{outcome.reason} with per-channel weights (per tensor: {per_tensor:.2%})")
    return outcome, settings, seconds + more


def _publish(run: Run, role: str, fmt: str, staged: Path, outcome: Outcome, old_files: list[str]) -> list[str]:
    """Move the staged file into ``export/`` (``.failed`` when it missed its gate); skipped or never written:
    nothing is kept and the previous files go."""
    if staged.is_file() and outcome.status != "skipped":
        name = manifest.file_name(role, fmt, failed=outcome.status == "failed")
        return publish(staged, [], run.export_dir, name, old_files)
    for old_name in old_files:
        (run.export_dir / old_name).unlink(missing_ok=True)
    return []


def quantize_one(
    run: Run,
    role: str,
    fmt: str,
    source: Artifact,
    data: Dataset,
    fp32_logits: np.ndarray,
    options: QuantOptions,
    calib: Calibration | None,
    max_accuracy_drop: float,
) -> Artifact:
    """Convert ``source`` to ``fmt``, gate it, publish the file (``.failed`` when it missed) and record it."""
    old = manifest.find(run, manifest.artifact_id(role, fmt))
    with staging_dir(run.export_dir) as tmp:
        staged = tmp / manifest.file_name(role, fmt)
        src = manifest.artifact_path(run, source)
        attempt = partial(
            _attempt, fmt, src, staged, source, data, fp32_logits, calib, max_accuracy_drop=max_accuracy_drop
        )
        outcome, settings, seconds = _make(fmt, attempt, options)
        files = _publish(run, role, fmt, staged, outcome, old.files if old else [])
    art = build_artifact(
        run,
        role,
        fmt,
        files,
        status=outcome.status,
        reason=outcome.reason,
        accuracy=outcome.accuracy,
        fp32_accuracy=source.accuracy,
        samples=len(data.test),
        settings=settings,
        seconds=seconds,
        built_from=source,
        vs_fp32=outcome.vs_fp32,
    )
    return manifest.upsert(run, art)


# ---- the stage -------------------------------------------------------------------------------------------
def check_args(method: str, calib_samples: int, calib_method: str, max_accuracy_drop: float) -> None:
    check_int8_options(method, calib_samples, calib_method)
    if not (math.isfinite(max_accuracy_drop) and 0 <= max_accuracy_drop <= 1):
        raise UserError(f"--max-accuracy-drop {max_accuracy_drop}: must be a fraction in [0, 1], e.g. 0.01")


def check_int8_options(method: str, calib_samples: int, calib_method: str, method_flag: str = "--method") -> None:
    """The INT8 settings ``quantize`` takes; ``kdeploy run`` checks them before it trains, naming its own
    ``method_flag`` (``--int8-method``)."""
    if method not in METHODS:
        raise UserError(f"{method_flag} {method!r}: choose one of {', '.join(METHODS)}")
    if calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method {calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
    if calib_samples < 1:
        raise UserError(f"--calib-samples {calib_samples}: must be >= 1 (default 512)")


def check_float_modules(src: Path, paths: Sequence[str]) -> None:
    """One line naming the requested module paths that no node of ``src`` was exported from."""
    if not paths:
        return
    found = module_nodes(onnx.load(str(src), load_external_data=False), paths)
    missing = [path for path, names in found.items() if not names]
    if missing:
        raise UserError(
            f"--float-module {', '.join(missing)}: no layer of {src.name} comes from that module path; name a "
            "module of the model (model.named_modules(); a Conv the export fused with its BatchNorm: the BatchNorm "
            "or their parent)"
        )


def saturates(target: str = DEFAULT_TARGET) -> bool:
    """ONNX Runtime's INT8 kernels here may saturate on 8-bit weights: an x86 CPU without VNNI (:mod:`kdeploy.cpu`);
    never for TensorRT files."""
    return target == DEFAULT_TARGET and cpu.x86_without_vnni()


def auto_reduce_range(requested: bool | None, target: str = DEFAULT_TARGET) -> bool:
    """``requested`` when given, else 7-bit weights exactly where ORT's kernels saturate on 8-bit ones
    (:func:`saturates`; ONNX Runtime's own advice for CPUs without VNNI), said in one line."""
    if requested is not None:
        return requested
    if not saturates(target):
        return False
    progress.log(
        "static INT8: this x86 CPU has no VNNI, so weights use 7 bits (reduce_range) to keep ONNX Runtime's integer "
        "kernels from saturating; --no-reduce-range keeps 8 bits"
    )
    return True


def quantize(
    run: Run | str | Path | None = None,
    int8: bool = True,
    method: str = "static",
    fp16: bool = False,
    calib_samples: int = 512,
    calib_method: str = "minmax",
    per_channel: bool | None = None,
    models: list[str] | str | None = None,
    *,
    max_accuracy_drop: float = 0.01,
    raise_on_fail: bool = True,
    target: str = DEFAULT_TARGET,
    reduce_range: bool | None = None,
    float_gelu: bool | None = None,
    float_modules: Sequence[str] = (),
) -> list[Artifact]:
    """Quantize the run's exported ONNX models; returns the new artifacts (see :mod:`kdeploy.quantize`).

    ``per_channel``: INT8 weight scales per output channel (True) or per tensor (False); None: per tensor, then
    per channel for a static INT8 file whose per-tensor weights miss the accuracy gate (``settings`` keeps the
    per-tensor accuracy as ``per_tensor_accuracy``).
    ``reduce_range``: static INT8 weights on 7 bits (see :class:`QuantOptions`); None: :func:`auto_reduce_range`.
    ``float_gelu``: static INT8 leaves GELU's inner ops in float (:class:`QuantOptions`); None: ``FLOAT_GELU``.
    ``float_modules``: module paths whose layers static INT8 keeps in float (:class:`QuantOptions`)."""
    run = run if isinstance(run, Run) else Run.open(run)
    check_args(method, calib_samples, calib_method, max_accuracy_drop)
    check_target(target)
    if not (int8 or fp16):
        raise UserError("nothing to do: pass --int8 and/or --fp16")
    roles = manifest.select_models(run, models)
    sources = {role: source_artifact(run, role, "onnx", "quantization") for role in roles}
    if int8 and method == "static":
        for source in sources.values():
            check_float_modules(manifest.artifact_path(run, source), float_modules)
        reduce_range = auto_reduce_range(reduce_range, target)  # after every check: a refused call prints one line
    options = QuantOptions(
        calib_method,
        per_channel,
        target,
        bool(reduce_range),
        FLOAT_GELU if float_gelu is None else float_gelu,
        tuple(float_modules),
    )
    recipe = run_recipe(run)
    data = load_data(recipe)
    calib = calibration_split(data.train, calib_samples, recipe.seed) if int8 and method == "static" else None
    formats = ([f"onnx-int8{'-dynamic' if method == 'dynamic' else ''}"] if int8 else []) + (["onnx-fp16"] * fp16)
    artifacts = []
    for role in roles:
        fp32_logits = fp32_test_logits(run, sources[role], data)
        for fmt in formats:
            detail = (
                f" ({calib_method}, {len(calib.split)} calibration samples)" if calib and fmt == "onnx-int8" else ""
            )
            progress.log(f"quantizing {role}: {WHAT[fmt]}{detail}")
            art = quantize_one(run, role, fmt, sources[role], data, fp32_logits, options, calib, max_accuracy_drop)
            progress.log("  " + describe(art))
            artifacts.append(art)
    return finish_stage(artifacts, raise_on_fail)
