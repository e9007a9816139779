"""TensorRT engines built from the ONNX artifacts with the ``tensorrt`` Python API (TensorRT 10 and 11).

- FP16: TensorRT 10 builds the fp32 ``<role>.onnx`` with ``BuilderFlag.FP16`` (weak typing). TensorRT 11 removed
  the precision flags (strong typing only), so there the FP16 ONNX from ``kdeploy quantize --fp16`` is built as a
  strongly typed network instead.
- INT8: explicit quantization from the QDQ ONNX of ``kdeploy quantize --int8`` (symmetric INT8, zero point 0).
  The implicit-calibration API (``int8_calibrator``) is deprecated since 10.1 and removed in 11; it is not used.
  On TensorRT 10 the INT8 and FP16 flags are set so non-quantized layers may run in FP16.
- One optimization profile for the dynamic batch: min 1, opt ``opt_batch``, max ``max_batch``; the workspace pool
  is limited to ``workspace_mb``.
- Every engine is deserialized and run on the whole test set (CUDA tensors from torch, ``execute_async_v3``); its
  accuracy is gated against the fp32 ONNX accuracy like the ORT-quantized artifacts.

``tensorrt`` is the optional extra ``pip install 'kdeploy[tensorrt]'``; without it, or without a CUDA GPU,
:func:`require_tensorrt` raises a one-line :class:`UserError` naming what is missing.

NOT RUN ON THE DEVELOPMENT MACHINES: they have no GPU and no TensorRT, so :func:`build_engine` and
:class:`EngineRunner` were written against the documented TensorRT 10/11 Python API and never executed there.
The pure parts (argument checks, profile shapes, file names, source selection, the dependency check) are tested.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy import progress
from kdeploy.data import Split, iterate_batches
from kdeploy.errors import GateFailed, UserError
from kdeploy.export import manifest as mf
from kdeploy.export.onnx import describe, failures
from kdeploy.export.ort import top1_accuracy
from kdeploy.export.rundata import load_run_data
from kdeploy.export.staging import publish, staging_dir
from kdeploy.runs import Run

PRECISIONS = ("fp16", "int8")
INSTALL_HINT = "pip install 'kdeploy[tensorrt]'"


# ---- pure parts: arguments, shapes, names (tested without a GPU) -----------------------------------------
def check_args(precision: str, opt_batch: int, max_batch: int, workspace_mb: int, max_accuracy_drop: float) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"TensorRT precision {precision!r}: choose --fp16 or --int8")
    if opt_batch < 1 or max_batch < 1:
        raise UserError(f"--opt-batch {opt_batch} / --max-batch {max_batch}: batch sizes must be >= 1")
    if opt_batch > max_batch:
        raise UserError(f"--opt-batch {opt_batch} is larger than --max-batch {max_batch}; use opt <= max")
    if workspace_mb < 1:
        raise UserError(f"--workspace-mb {workspace_mb}: must be >= 1 (MiB of GPU scratch memory for the builder)")
    if not 0 <= max_accuracy_drop <= 1:
        raise UserError(f"--max-accuracy-drop {max_accuracy_drop}: must be a fraction in [0, 1], e.g. 0.01")


def profile_shapes(in_shape: Sequence[int], opt_batch: int, max_batch: int) -> dict[str, tuple[int, ...]]:
    """The optimization profile of the dynamic batch dimension: min 1, opt, max; other dims fixed."""
    dims = tuple(int(d) for d in in_shape)
    return {"min": (1, *dims), "opt": (opt_batch, *dims), "max": (max_batch, *dims)}


def engine_name(role: str, precision: str, failed: bool = False) -> str:
    return mf.file_name(role, f"tensorrt-{precision}", failed=failed)


def missing_requirements() -> list[str]:
    """What ``--tensorrt`` lacks on this machine, as phrases for the error line (empty when all is there)."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append(f"the tensorrt package ({INSTALL_HINT})")
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    return missing


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line :class:`UserError` saying what is missing."""
    missing = missing_requirements()
    if missing:
        raise UserError(f"--tensorrt needs {' and '.join(missing)}; export --onnx and quantize work without it")
    import tensorrt as trt

    return trt


def strongly_typed(trt: Any) -> bool:
    """TensorRT 11 removed the precision builder flags: networks are strongly typed."""
    return not hasattr(trt.BuilderFlag, "FP16")


def source_format(precision: str, strong: bool) -> str:
    """Which ONNX artifact an engine is built from."""
    if precision == "int8":
        return "onnx-int8"
    return "onnx-fp16" if strong else "onnx"


def source_entry(run: Run, role: str, fmt: str) -> dict[str, Any]:
    entry = mf.find(run, mf.artifact_id(role, fmt))
    fix = {
        "onnx": f"kdeploy export {run.root} --onnx",
        "onnx-int8": f"kdeploy quantize {run.root} --int8",
        "onnx-fp16": f"kdeploy quantize {run.root} --fp16",
    }[fmt]
    if entry is None or not mf.usable(entry):
        state = "is missing" if entry is None else f"did not pass ({entry.get('reason')})"
        raise UserError(f"{role}: the {fmt} artifact a TensorRT engine is built from {state}; run `{fix}` first")
    return entry


# ---- GPU parts (not run on the development machines: no GPU, no TensorRT) -------------------------------------
def build_engine(
    trt: Any,
    onnx_path: Path,
    input_name: str,
    shapes: dict[str, tuple[int, ...]],
    precision: str,
    workspace_mb: int,
    strong: bool,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (TensorRT 10/11 Python API)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strong and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # ignored (always on) in TensorRT 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strong:  # TensorRT 10 weak typing: allow reduced-precision kernels
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ nodes in the graph give the scales (explicit mode)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT log above); "
            "try a larger --workspace-mb or a smaller --max-batch"
        )
    return bytes(memoryview(serialized))


class EngineRunner:
    """Run a serialized engine on CUDA tensors allocated by torch (one input, one output)."""

    def __init__(self, trt: Any, engine_bytes: bytes) -> None:
        import torch

        self.torch = torch
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise UserError("TensorRT cannot deserialize the engine (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"engine has inputs {inputs} and outputs {outputs}; kdeploy runs one-in one-out models")
        self.input, self.output = inputs[0], outputs[0]
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])

    def _dtype(self, name: str) -> Any:
        return self.torch.from_numpy(np.empty(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def __call__(self, x: Any) -> Any:
        """Logits (float32, on the GPU) for a float32 batch (CPU or GPU), split to at most ``max_batch`` rows."""
        torch = self.torch
        outs = []
        stream = torch.cuda.current_stream()
        for chunk in x.split(self.max_batch):
            inp = chunk.to("cuda", dtype=self._dtype(self.input)).contiguous()
            self.context.set_input_shape(self.input, tuple(inp.shape))
            out = torch.empty(
                tuple(self.context.get_tensor_shape(self.output)), dtype=self._dtype(self.output), device="cuda"
            )
            self.context.set_tensor_address(self.input, inp.data_ptr())
            self.context.set_tensor_address(self.output, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            outs.append(out.float())
        stream.synchronize()
        return torch.cat(outs)


def engine_accuracy(runner: EngineRunner, split: Split, mean: Sequence[float], std: Sequence[float]) -> float:
    logits = [
        runner(x).cpu().numpy()
        for x, _, _ in iterate_batches(split, runner.max_batch, shuffle=False, mean=mean, std=std)
    ]
    return top1_accuracy(np.concatenate(logits), split.labels.numpy())


# ---- the stage -----------------------------------------------------------------------------------------------
def export_tensorrt(
    run: Run | str | Path | None = None,
    precision: str = "fp16",
    models: list[str] | str | None = None,
    *,
    opt_batch: int = 64,
    max_batch: int = 256,
    workspace_mb: int = 1024,
    max_accuracy_drop: float = 0.01,
    raise_on_fail: bool = True,
) -> list[dict[str, Any]]:
    """Build ``<run>/export/<role>.<precision>.engine`` for each model and gate it on test accuracy."""
    check_args(precision, opt_batch, max_batch, workspace_mb, max_accuracy_drop)
    run = run if isinstance(run, Run) else Run.open(run)
    roles = mf.select_models(run, models)
    trt = require_tensorrt()
    import torch

    strong = strongly_typed(trt)
    fmt_src = source_format(precision, strong)
    pairs = [(role, source_entry(run, role, fmt_src), source_entry(run, role, "onnx")) for role in roles]
    data = load_run_data(run)
    entries = []
    for role, source, fp32 in pairs:
        fmt = f"tensorrt-{precision}"
        ident = mf.artifact_id(role, fmt)
        old = mf.find(run, ident)
        shapes = profile_shapes(source["input"]["shape"][1:], opt_batch, max_batch)
        progress.log(
            f"building TensorRT {precision} engine for {role} from {source['files'][0]} "
            f"({'strongly' if strong else 'weakly'} typed, batch {shapes['min'][0]}..{max_batch})"
        )
        t0 = time.perf_counter()
        engine = build_engine(
            trt, mf.artifact_path(run, source), source["input"]["name"], shapes, precision, workspace_mb, strong
        )
        build_s = time.perf_counter() - t0
        accuracy = engine_accuracy(EngineRunner(trt, engine), data.test, data.mean, data.std)
        drop = round(fp32["accuracy"] - accuracy, 6)
        passed = drop <= max_accuracy_drop
        reason = (
            None
            if passed
            else (
                f"accuracy gate: {accuracy:.4f} vs fp32 {fp32['accuracy']:.4f}, drop {drop * 100:.2f} pt > "
                f"{max_accuracy_drop * 100:.2f} pt"
            )
        )
        with staging_dir(run.export_dir) as tmp:
            staged = tmp / engine_name(role, precision)
            staged.write_bytes(engine)
            files = publish(
                staged,
                [],
                run.export_dir,
                engine_name(role, precision, failed=not passed),
                old.get("files", []) if old else [],
            )
        entry = {
            "id": ident,
            "model": role,
            "format": fmt,
            "files": files,
            "bytes": mf.file_bytes(run.export_dir, files),
            "sha256": mf.sha256(run.export_dir / files[0]),
            "opset": source.get("opset"),
            "exporter": source.get("exporter"),
            "source": source["files"][0],
            "source_sha256": source.get("sha256"),
            "input": source["input"],
            "output": source["output"],
            "parity": None,
            "accuracy": accuracy,
            "fp32_accuracy": fp32["accuracy"],
            "accuracy_drop": mf.drop(fp32["accuracy"], accuracy),
            "accuracy_samples": len(data.test),
            "passed": passed,
            "status": "ok" if passed else "failed",
            "reason": reason,
            "created": mf.now(),
            "build_seconds": round(build_s, 3),
            "settings": {
                "precision": precision,
                "typing": "strong" if strong else "weak",
                "profile": {k: list(v) for k, v in shapes.items()},
                "workspace_mb": workspace_mb,
                "max_accuracy_drop": max_accuracy_drop,
                "tensorrt": trt.__version__,
                "device": torch.cuda.get_device_name(0),
            },
            "versions": mf.versions(),
        }
        mf.upsert(run, entry)
        progress.log("  " + describe(entry))
        entries.append(entry)
    if raise_on_fail and any(e["status"] == "failed" for e in entries):
        raise GateFailed(failures(entries))
    return entries
