"""ONNX Runtime quantization of exported models: static INT8 (QDQ), dynamic INT8, FP16.

Input is the fp32 ``<role>.onnx`` that passed the parity gate (``kdeploy export --onnx``); a run without one is
a :class:`UserError` telling the user to export first (nothing is exported implicitly, so the parity gate is
always an explicit, visible step). Outputs, next to it in ``<run>/export/``:

- ``<role>.int8.onnx``: static INT8 in QDQ format. ``quant_pre_process`` (shape inference + graph optimisation),
  then ``quantize_static`` calibrated on ``calib_samples`` images of the recipe's *training* split (a seeded random
  subset), MinMax / Entropy / Percentile calibration, optional per-channel weights. Activations and weights are
  signed INT8 with zero point 0 (symmetric), the form TensorRT's explicit quantization accepts.
- ``<role>.int8-dynamic.onnx``: ``quantize_dynamic`` (weights INT8, activations quantized at run time). ORT's
  dynamic quantizer ignores ``Gemm`` (what ``nn.Linear`` exports as), so plain ``Gemm`` nodes are first rewritten
  as the equivalent ``MatMul`` + ``Add``. Convolutions become ``ConvInteger``, which the CPU provider may not
  implement for INT8 weights: the result is loaded and run, and if that fails, or nothing was quantized, no file
  is written and a ``skipped`` manifest entry records the reason.
- ``<role>.fp16.onnx``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs/outputs.

Quantized artifacts are judged by accuracy, not by atol: the full test set is run with ONNX Runtime and the drop
from the fp32 ONNX accuracy must be at most ``max_accuracy_drop`` (default 0.01 = one point). A failed artifact
is kept as ``<role>.<kind>.failed.onnx`` with ``status: "failed"`` and :class:`GateFailed` is raised at the end.
A converter that raises on a graph gives a ``failed`` entry without files (the reason names the exception).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from kdeploy import progress
from kdeploy.data import Dataset, Split, iterate_batches
from kdeploy.errors import GateFailed, UserError
from kdeploy.export import manifest as mf
from kdeploy.export.onnx import check_model, describe, failures
from kdeploy.export.ort import onnx_logits, run_batch, top1_accuracy, try_session
from kdeploy.export.parity import compare_logits
from kdeploy.export.rundata import run_recipe
from kdeploy.export.staging import publish, staging_dir
from kdeploy.recipe import load_data
from kdeploy.runs import Run

METHODS = ("static", "dynamic")
CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIB_BATCH = 64
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs and prints advice; keep library output to ``progress``."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# ---- calibration ------------------------------------------------------------------------------
def calibration_split(train: Split, samples: int, seed: int) -> Split:
    """A seeded random subset of the training split (never the test set)."""
    if len(train) == 0:
        raise UserError("the run's training split is empty; INT8 calibration needs training images")
    n = min(samples, len(train))
    order = np.random.default_rng(seed).permutation(len(train))[:n]
    return train.subset(torch.as_tensor(np.sort(order), dtype=torch.int64))


def make_reader(split: Split, mean: Any, std: Any, name: str, batch_size: int = CALIB_BATCH) -> Any:
    """A ``CalibrationDataReader`` yielding normalised float32 batches of ``split``."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [
                x.numpy() for x, _, _ in iterate_batches(split, batch_size, shuffle=False, mean=mean, std=std)
            ]
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(self.batches):
                return None
            self.pos += 1
            return {name: self.batches[self.pos - 1]}

        def rewind(self) -> None:
            self.pos = 0

    return _Reader()


# ---- graph rewrites and inspection ------------------------------------------------------------------
def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, W, b)`` with a constant ``W`` (alpha = beta = 1, no transA) as ``MatMul(A, W') + b``.

    Numerically the same function; it lets ORT's dynamic quantizer, which covers MatMul but not Gemm, quantize
    ``nn.Linear`` layers. Returns how many nodes were rewritten (in place).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(i for n in graph.node for i in n.input)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        ok = (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and _attr(node, "alpha", 1.0) == 1.0
            and _attr(node, "beta", 1.0) == 1.0
            and int(_attr(node, "transA", 0)) == 0
        )
        if not ok:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if int(_attr(node, "transB", 0)):
            weight = np.ascontiguousarray(weight.T)
        w_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(weight, w_name))
        uses[node.input[1]] -= 1
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_matmul"))
        if has_bias:
            new_nodes.append(
                onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_add")
            )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        unused = [t for t in graph.initializer if uses.get(t.name, 0) <= 0 and t.name in inits]
        for t in unused:
            graph.initializer.remove(t)
    return count


def op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


# ---- the three conversions --------------------------------------------------------------------------
def convert_static(
    src: Path, dst: Path, tmp: Path, reader: Any, *, per_channel: bool, calib_method: str
) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "preprocessed.onnx"
    note = None
    try:
        with _quiet():
            quant_pre_process(str(src), str(pre))
    except Exception as exc:  # symbolic shape inference gives up on some graphs; quantize the export as is
        note = f"quant_pre_process failed ({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc!r})"
        progress.log(f"  {note}; quantizing without pre-processing")
        pre = src
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[calib_method]
    with _quiet():
        quantize_static(
            str(pre),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    ops = op_counts(dst)
    return {
        "method": "static",
        "quant_format": "QDQ",
        "activation_type": "int8",
        "weight_type": "int8",
        "symmetric": True,
        "per_channel": per_channel,
        "calib_method": calib_method,
        "preprocessed": note is None,
        "preprocess_note": note,
        "quantize_linear_nodes": ops["QuantizeLinear"],
        "tensorrt_compatible": True,
    }


def convert_dynamic(src: Path, dst: Path, tmp: Path, *, per_channel: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    rewritten = gemm_to_matmul(model)
    prepared = tmp / "matmul.onnx"
    onnx.save(model, str(prepared))
    with _quiet():
        quantize_dynamic(str(prepared), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    ops = op_counts(dst)
    return {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": per_channel,
        "gemm_rewritten_as_matmul": rewritten,
        "integer_ops": {k: ops[k] for k in INTEGER_OPS if ops[k]},
    }


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with _quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        wrapped = OnnxModel(model)
        wrapped.topological_sort()  # the converter appends the input Casts last; the checker requires order
    onnx.save(wrapped.model, str(dst))
    return {"keep_io_types": True, "converter": "onnxruntime.transformers.float16"}


# ---- one artifact -----------------------------------------------------------------------------------------
def _dynamic_problem(path: Path, settings: dict[str, Any], sample: np.ndarray) -> str | None:
    """Why a dynamic-INT8 graph must not be published (nothing quantized, or ORT cannot run it), or None."""
    if not settings["integer_ops"]:
        return (
            "nothing was quantized: ORT dynamic quantization covers MatMul/Conv and found none to convert; "
            "use --method static"
        )
    session, error = try_session(path)
    if session is None:
        ops = ", ".join(settings["integer_ops"])
        return f"ONNX Runtime CPU cannot load the dynamic INT8 graph ({ops}): {error}; use --method static"
    try:
        run_batch(session, sample)
    except Exception as exc:  # runtime kernel errors
        return f"ONNX Runtime CPU cannot run the dynamic INT8 graph: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else repr(exc))[:300]


def convert(
    fmt: str,
    src: Path,
    dst: Path,
    tmp: Path,
    data: Dataset,
    calib: Split | None,
    *,
    per_channel: bool,
    calib_method: str,
) -> dict[str, Any]:
    """Write the ``fmt`` version of ``src`` to ``dst``; returns the settings recorded in the manifest."""
    if fmt in ("onnx-int8", "onnx-int8-qat"):  # QAT: the fine-tuned float model, quantized the same way
        if calib is None:
            raise ValueError("static INT8 needs calibration images")
        reader = make_reader(
            calib, data.mean, data.std, onnx.load(str(src), load_external_data=False).graph.input[0].name
        )
        return convert_static(src, dst, tmp, reader, per_channel=per_channel, calib_method=calib_method)
    if fmt == "onnx-int8-dynamic":
        return convert_dynamic(src, dst, tmp, per_channel=per_channel)
    if fmt == "onnx-fp16":
        return convert_fp16(src, dst)
    raise ValueError(f"unknown quantized format {fmt!r}")


def quantize_one(
    run: Run,
    role: str,
    fmt: str,
    source: dict[str, Any],
    data: Dataset,
    fp32_logits: np.ndarray,
    *,
    calib: Split | None,
    calib_seed: int,
    calib_method: str,
    per_channel: bool,
    max_accuracy_drop: float,
) -> dict[str, Any]:
    src = mf.artifact_path(run, source)
    ident = mf.artifact_id(role, fmt)
    old = mf.find(run, ident)
    t0 = time.perf_counter()
    reason: str | None = None
    status = "ok"
    accuracy = None
    vs_fp32 = None
    settings: dict[str, Any] = {}
    with staging_dir(run.export_dir) as tmp:
        staged = tmp / mf.file_name(role, fmt)
        try:
            settings = convert(fmt, src, staged, tmp, data, calib, per_channel=per_channel, calib_method=calib_method)
        except Exception as exc:  # the ORT converters raise on graphs they do not handle
            status, reason = "failed", f"{fmt} conversion raised {type(exc).__name__}: {_first_line(exc)}"
        if fmt in ("onnx-int8", "onnx-int8-qat") and calib is not None:
            settings.update(calib_samples=len(calib), calib_split="train", calib_seed=calib_seed)
        settings["max_accuracy_drop"] = max_accuracy_drop
        convert_s = time.perf_counter() - t0
        if status == "ok" and fmt == "onnx-int8-dynamic":
            sample = next(iterate_batches(data.test.head(8), 8, shuffle=False, mean=data.mean, std=data.std))[0]
            reason = _dynamic_problem(staged, settings, sample.numpy())
            status = "skipped" if reason else "ok"
        if status == "ok":
            problem = check_model(staged)
            session, load_error = (None, "") if problem else try_session(staged)
            if problem or session is None:
                status, reason = "failed", (f"onnx.checker: {problem}" if problem else f"ORT: {load_error}")
            else:
                logits = onnx_logits(session, data.test, data.mean, data.std)
                accuracy = top1_accuracy(logits, data.test.labels.numpy())
                vs_fp32 = {"reference": source["files"][0], **compare_logits(fp32_logits, logits)}
                drop = round(source["accuracy"] - accuracy, 6)
                if not drop <= max_accuracy_drop:
                    status = "failed"
                    reason = (
                        f"accuracy gate: {accuracy:.4f} vs fp32 {source['accuracy']:.4f}, drop "
                        f"{drop * 100:.2f} pt > {max_accuracy_drop * 100:.2f} pt"
                    )
        old_files = old.get("files", []) if old else []
        if staged.is_file() and status != "skipped":
            files = publish(staged, [], run.export_dir, mf.file_name(role, fmt, failed=status == "failed"), old_files)
        else:  # skipped, or the converter crashed before writing: nothing to keep, old files go
            for name in old_files:
                (run.export_dir / name).unlink(missing_ok=True)
            files = []
    entry: dict[str, Any] = {
        "id": ident,
        "model": role,
        "format": fmt,
        "files": files,
        "bytes": mf.file_bytes(run.export_dir, files) if files else 0,
        "sha256": mf.sha256(run.export_dir / files[0]) if files else None,
        "opset": source.get("opset"),
        "exporter": source.get("exporter"),
        "source": source["files"][0],
        "source_sha256": source.get("sha256"),
        "input": source["input"],
        "output": source["output"],
        "parity": None,
        "vs_fp32": vs_fp32,
        "accuracy": accuracy,
        "fp32_accuracy": source["accuracy"],
        "accuracy_drop": mf.drop(source["accuracy"], accuracy),
        "accuracy_samples": len(data.test),
        "passed": status == "ok",
        "status": status,
        "reason": reason,
        "created": mf.now(),
        "convert_seconds": round(convert_s, 3),
        "settings": settings,
        "versions": mf.versions(),
    }
    return mf.upsert(run, entry)


# ---- the stage -------------------------------------------------------------------------------------------
def source_entry(run: Run, role: str) -> dict[str, Any]:
    """The fp32 ONNX export of ``role`` that passed the parity gate, checked against the file on disk."""
    entry = mf.find(run, mf.artifact_id(role, "onnx"))
    if entry is None:
        raise UserError(f"{run.root.name}: no ONNX export of {role}; run `kdeploy export {run.root} --onnx` first")
    if not mf.usable(entry):
        raise UserError(
            f"{role}.onnx failed the parity gate ({entry.get('reason')}); fix it and re-run `kdeploy export --onnx`"
        )
    path = mf.artifact_path(run, entry)
    if entry.get("sha256") and mf.sha256(path) != entry["sha256"]:
        raise UserError(f"{path}: changed since it was exported and gated; re-run `kdeploy export --onnx`")
    return entry


def check_args(method: str, calib_samples: int, calib_method: str, max_accuracy_drop: float) -> None:
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method {calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
    if calib_samples < 1:
        raise UserError(f"--calib-samples {calib_samples}: must be >= 1 (default 512)")
    if not (math.isfinite(max_accuracy_drop) and 0 <= max_accuracy_drop <= 1):
        raise UserError(f"--max-accuracy-drop {max_accuracy_drop}: must be a fraction in [0, 1], e.g. 0.01")


def quantize(
    run: Run | str | Path | None = None,
    int8: bool = True,
    method: str = "static",
    fp16: bool = False,
    calib_samples: int = 512,
    calib_method: str = "minmax",
    per_channel: bool = False,
    models: list[str] | str | None = None,
    *,
    max_accuracy_drop: float = 0.01,
    raise_on_fail: bool = True,
) -> list[dict[str, Any]]:
    """Quantize the run's exported ONNX models; returns the new manifest entries (see the module docstring)."""
    run = run if isinstance(run, Run) else Run.open(run)
    check_args(method, calib_samples, calib_method, max_accuracy_drop)
    if not (int8 or fp16):
        raise UserError("nothing to do: pass --int8 and/or --fp16")
    roles = mf.select_models(run, models)
    sources = {role: source_entry(run, role) for role in roles}
    recipe = run_recipe(run)
    data = load_data(recipe)
    calib = calibration_split(data.train, calib_samples, recipe.seed) if int8 and method == "static" else None
    formats = ([f"onnx-int8{'-dynamic' if method == 'dynamic' else ''}"] if int8 else []) + (["onnx-fp16"] * fp16)
    entries = []
    for role in roles:
        source = sources[role]
        fp32_session = try_session(mf.artifact_path(run, source))[0]
        if fp32_session is None:
            raise UserError(f"{source['files'][0]}: ONNX Runtime cannot load it; re-run `kdeploy export --onnx`")
        fp32_logits = onnx_logits(fp32_session, data.test, data.mean, data.std)
        for fmt in formats:
            what = {
                "onnx-int8": f"static INT8 ({calib_method}, {len(calib or [])} calibration samples)",
                "onnx-int8-dynamic": "dynamic INT8",
                "onnx-fp16": "FP16",
            }[fmt]
            progress.log(f"quantizing {role}: {what}")
            entry = quantize_one(
                run,
                role,
                fmt,
                source,
                data,
                fp32_logits,
                calib=calib,
                calib_seed=recipe.seed,
                calib_method=calib_method,
                per_channel=per_channel,
                max_accuracy_drop=max_accuracy_drop,
            )
            progress.log("  " + describe(entry))
            entries.append(entry)
    if raise_on_fail and any(e["status"] == "failed" for e in entries):
        raise GateFailed(failures(entries))
    return entries
