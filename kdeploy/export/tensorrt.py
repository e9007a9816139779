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
from kdeploy.artifacts import Artifact, accuracy_gate, build_artifact, describe, finish_stage, manifest, source_artifact
from kdeploy.data import Dataset, Split
from kdeploy.errors import UserError, first_line
from kdeploy.evaluate import split_accuracy
from kdeploy.export.staging import publish, staging_dir
from kdeploy.rundata import load_run_data
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
    return manifest.file_name(role, f"tensorrt-{precision}", failed=failed)


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
    return split_accuracy(lambda x: runner(x), split, mean, std, runner.max_batch)


# ---- the stage -----------------------------------------------------------------------------------------------
def build_one(
    trt: Any,
    run: Run,
    role: str,
    precision: str,
    data: Dataset,
    sources: tuple[Artifact, Artifact],
    shapes: dict[str, tuple[int, ...]],
    *,
    workspace_mb: int,
    max_accuracy_drop: float,
    strong: bool,
) -> Artifact:
    """Build, gate, publish and record one engine; a build or run that raises is recorded as failed (no file)."""
    import torch

    source, fp32 = sources
    fmt = f"tensorrt-{precision}"
    old = manifest.find(run, manifest.artifact_id(role, fmt))
    t0 = time.perf_counter()
    accuracy, files = None, []
    try:
        onnx_path = manifest.artifact_path(run, source)
        engine = build_engine(trt, onnx_path, source.input.name, shapes, precision, workspace_mb, strong)
        build_s = time.perf_counter() - t0
        accuracy = engine_accuracy(EngineRunner(trt, engine), data.test, data.mean, data.std)
        reason = accuracy_gate(accuracy, fp32.accuracy, max_accuracy_drop)
        with staging_dir(run.export_dir) as tmp:
            staged = tmp / engine_name(role, precision)
            staged.write_bytes(engine)
            name = engine_name(role, precision, failed=reason is not None)
            files = publish(staged, [], run.export_dir, name, old.files if old else [])
    except (UserError, RuntimeError) as exc:  # parser/builder refusals and runtime errors: recorded, not fatal
        build_s, reason = time.perf_counter() - t0, f"{fmt} build raised {type(exc).__name__}: {first_line(exc)}"
    art = build_artifact(
        run,
        role,
        fmt,
        files,
        status="ok" if reason is None else "failed",
        reason=reason,
        accuracy=accuracy,
        fp32_accuracy=fp32.accuracy,
        samples=len(data.test),
        seconds=build_s,
        built_from=source,
        settings={
            "precision": precision,
            "typing": "strong" if strong else "weak",
            "profile": {k: list(v) for k, v in shapes.items()},
            "workspace_mb": workspace_mb,
            "max_accuracy_drop": max_accuracy_drop,
            "tensorrt": trt.__version__,
            "device": torch.cuda.get_device_name(0),
        },
    )
    return manifest.upsert(run, art)


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
) -> list[Artifact]:
    """Build ``<run>/export/<role>.<precision>.engine`` for each model and gate it on test accuracy."""
    check_args(precision, opt_batch, max_batch, workspace_mb, max_accuracy_drop)
    run = run if isinstance(run, Run) else Run.open(run)
    roles = manifest.select_models(run, models)
    trt = require_tensorrt()
    strong = strongly_typed(trt)
    fmt_src = source_format(precision, strong)
    purpose = f"a TensorRT {precision} engine"
    pairs = {
        role: (source_artifact(run, role, fmt_src, purpose), source_artifact(run, role, "onnx", purpose))
        for role in roles
    }
    data = load_run_data(run)
    artifacts = []
    for role, sources in pairs.items():
        shapes = profile_shapes(sources[0].input.shape[1:], opt_batch, max_batch)
        progress.log(
            f"building TensorRT {precision} engine for {role} from {sources[0].files[0]} "
            f"({'strongly' if strong else 'weakly'} typed, batch {shapes['min'][0]}..{max_batch})"
        )
        art = build_one(
            trt,
            run,
            role,
            precision,
            data,
            sources,
            shapes,
            workspace_mb=workspace_mb,
            max_accuracy_drop=max_accuracy_drop,
            strong=strong,
        )
        progress.log("  " + describe(art))
        artifacts.append(art)
    return finish_stage(artifacts, raise_on_fail)
