"""TensorRT engines built from the ONNX artifacts with the ``tensorrt`` Python API (TensorRT 10 and 11).

- INT8: explicit quantization from the QDQ ONNX of ``kdeploy quantize --int8 --target tensorrt``, built as a
  *strongly typed* network: the Q/DQ nodes give the INT8 scales, every other layer runs in the type the graph
  states (float32). TensorRT 10.12 deprecated the precision builder flags for explicit quantization and 11 removed
  them; the implicit-calibration API (``int8_calibrator``) is not used. Before anything is built the QDQ graph is
  checked with :func:`~kdeploy.export.qdq_check.check_tensorrt_qdq`; a graph TensorRT would reject (ONNX
  Runtime's default INT32 biases, Q/DQ on the logits, ...) is refused in one line.
- FP16: TensorRT >= 10.12 (where ``BuilderFlag.FP16`` is deprecated) and 11 build the FP16 ONNX of ``kdeploy
  quantize --fp16`` strongly typed; older TensorRT 10 builds the fp32 ``<role>.onnx`` with ``BuilderFlag.FP16``.
- Optimization profiles: one per batch size in :data:`PROFILE_BATCHES` (bench's default 1, 32, 256) plus
  ``--opt-batch`` and ``--max-batch``, up to ``--max-batch``. Profile k covers batches (b_{k-1}, b_k] and is tuned
  at b_k, so every bench batch size runs tactics chosen for exactly that size; the runner picks the profile whose
  range holds the batch.
- Execution: one ``trt.Logger`` per process, a dedicated CUDA stream per engine (not torch's legacy default
  stream), and every status return (``create_execution_context``, ``set_optimization_profile_async``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) checked.
- Every engine is deserialized and run on the whole test set; its accuracy is gated against the fp32 ONNX accuracy
  like the ORT-quantized artifacts.

``tensorrt`` is the optional extra ``pip install 'kdeploy[tensorrt]'``; without it, or without a CUDA GPU,
:func:`require_tensorrt` raises a one-line :class:`UserError` naming what is missing.

NOT RUN YET: no machine with TensorRT has run :func:`build_engine`, :class:`EngineRunner` or
:func:`build_and_gate`; they follow the documented TensorRT 10/11 Python API. The pure parts (arguments, profiles,
typing choice, source selection and the Q/DQ check, the dependency check, the settings an engine records) are tested.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy import progress
from kdeploy.artifacts import Artifact, accuracy_gate, build_artifact, describe, finish_stage, manifest, source_artifact
from kdeploy.data import Dataset, Split
from kdeploy.errors import UserError, first_line
from kdeploy.evaluate import split_accuracy
from kdeploy.export.qdq_check import check_tensorrt_qdq
from kdeploy.export.staging import publish, staging_dir
from kdeploy.rundata import load_run_data
from kdeploy.runs import Run

PRECISIONS = ("fp16", "int8")
INSTALL_HINT = "pip install 'kdeploy[tensorrt]'"
PROFILE_BATCHES = (1, 32, 256)  # kdeploy bench's default --batch-sizes: each gets a profile tuned for it
_LOGGER: Any = None


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


@dataclass(frozen=True)
class Profile:
    """One optimization profile of the dynamic batch dimension: batches ``lo..hi``, tuned at ``hi``."""

    lo: int
    hi: int

    def shapes(self, in_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        dims = tuple(int(d) for d in in_shape)
        return {"min": (self.lo, *dims), "opt": (self.hi, *dims), "max": (self.hi, *dims)}


def profiles(opt_batch: int, max_batch: int, batches: Sequence[int] = PROFILE_BATCHES) -> list[Profile]:
    """Contiguous profiles covering 1..max_batch, one ending at each of ``batches``, ``opt_batch``, ``max_batch``."""
    tops = sorted({b for b in (*batches, opt_batch, max_batch) if 1 <= b <= max_batch})
    return [Profile(prev + 1, top) for prev, top in zip([0, *tops[:-1]], tops, strict=True)]


def profile_for(batch: int, plist: Sequence[Profile]) -> int:
    """Index of the profile whose range holds ``batch`` (the smallest, i.e. the one tuned closest to it)."""
    for i, p in enumerate(plist):
        if p.lo <= batch <= p.hi:
            return i
    raise ValueError(f"batch {batch} is outside every optimization profile (max {plist[-1].hi})")


def profile_shapes(in_shape: Sequence[int], opt_batch: int, max_batch: int) -> dict[str, tuple[int, ...]]:
    """The single-profile shapes min 1, opt, max (kept for callers that want one profile)."""
    dims = tuple(int(d) for d in in_shape)
    return {"min": (1, *dims), "opt": (opt_batch, *dims), "max": (max_batch, *dims)}


def engine_format(precision: str) -> str:
    """The artifact format of a TensorRT engine of ``precision`` (``tensorrt-fp16``, ``tensorrt-int8``)."""
    return f"tensorrt-{precision}"


def engine_name(role: str, precision: str, failed: bool = False) -> str:
    return manifest.file_name(role, engine_format(precision), failed=failed)


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


def logger(trt: Any) -> Any:
    """The process's one ``trt.Logger`` (TensorRT expects the same logger for builder, parser and runtime)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _version(text: str) -> tuple[int, int]:
    parts = [*text.split("."), "0"][:2]
    return (int(parts[0]), int(parts[1])) if all(p.isdigit() for p in parts) else (0, 0)


def strongly_typed(trt: Any, precision: str = "fp16") -> bool:
    """Build ``precision`` as a strongly typed network? INT8 (explicit quantization) whenever TensorRT has strong
    typing; FP16 from TensorRT 10.12 (precision flags deprecated) and 11 (flags removed)."""
    if not hasattr(trt.BuilderFlag, "FP16"):
        return True
    has_strong = hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED")
    if precision == "int8":
        return has_strong
    return has_strong and _version(getattr(trt, "__version__", "0.0")) >= (10, 12)


def source_format(precision: str, strong: bool) -> str:
    """Which ONNX artifact an engine is built from."""
    if precision == "int8":
        return "onnx-int8"
    return "onnx-fp16" if strong else "onnx"


def check_int8_sources(run: Run | str | Path | None, models: list[str] | str | None = None) -> None:
    """Refuse, in one line, an INT8 QDQ ONNX that TensorRT's explicit quantization would reject (no GPU needed)."""
    run = run if isinstance(run, Run) else Run.open(run)
    for role in manifest.select_models(run, models):
        source = source_artifact(run, role, "onnx-int8", "a TensorRT int8 engine")
        check_tensorrt_qdq(manifest.artifact_path(run, source)).raise_if_invalid()


def preflight(
    run: Run | str | Path | None,
    precisions: Sequence[str],
    models: list[str] | str | None,
    *,
    opt_batch: int,
    max_batch: int,
    workspace_mb: int,
    max_accuracy_drop: float,
) -> None:
    """Everything ``export --tensorrt`` can refuse before a GPU is touched: arguments, INT8 sources, TensorRT."""
    for p in precisions:
        check_args(p, opt_batch, max_batch, workspace_mb, max_accuracy_drop)
    if "int8" in precisions:
        check_int8_sources(run, models)
    require_tensorrt()


# ---- GPU parts (not run yet: no machine with TensorRT) -------------------------------------------------------
def build_engine(
    trt: Any,
    onnx_path: Path,
    input_name: str,
    plist: Sequence[Profile],
    in_shape: Sequence[int],
    precision: str,
    workspace_mb: int,
    strong: bool,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile per entry of ``plist``."""
    log = logger(trt)
    builder = trt.Builder(log)
    flags = 0
    if strong and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # the only mode in TensorRT 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strong:  # TensorRT < 10.12, FP16 only: weak typing lets layers pick FP16 kernels
        config.set_flag(trt.BuilderFlag.FP16)
    for p in plist:
        profile = builder.create_optimization_profile()
        shapes = p.shapes(in_shape)
        profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
        if config.add_optimization_profile(profile) < 0:
            raise UserError(f"TensorRT rejected the optimization profile for batches {p.lo}..{p.hi}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT log above); "
            "try a larger --workspace-mb or a smaller --max-batch"
        )
    return bytes(memoryview(serialized))


@dataclass
class Bound:
    """Device buffers bound to the execution context for one batch size (input filled by the caller)."""

    input: Any
    output: Any
    profile: int


class EngineRunner:
    """Run a serialized engine on its own CUDA stream with torch-allocated buffers (one input, one output)."""

    def __init__(self, trt: Any, engine_bytes: bytes) -> None:
        import torch

        self.torch = torch
        self.trt = trt
        self.runtime = trt.Runtime(logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise UserError("TensorRT cannot deserialize the engine (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"engine has inputs {inputs} and outputs {outputs}; kdeploy runs one-in one-out models")
        self.input, self.output = inputs[0], outputs[0]
        n_profiles = self.engine.num_optimization_profiles
        shapes = [self.engine.get_tensor_profile_shape(self.input, k) for k in range(n_profiles)]
        self.profiles = [Profile(int(lo[0]), int(hi[0])) for lo, _, hi in shapes]
        self.max_batch = max(p.hi for p in self.profiles)
        self.stream = torch.cuda.Stream()  # dedicated: never torch's legacy default stream
        self._profile = -1

    def dtype(self, name: str) -> Any:
        """The torch dtype of an engine tensor."""
        return self.torch.from_numpy(np.empty(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def bind(self, shape: Sequence[int]) -> Bound:
        """Select the profile for ``shape[0]``, set the input shape, allocate and bind input and output buffers."""
        torch = self.torch
        k = profile_for(int(shape[0]), self.profiles)
        if k != self._profile:
            if not self.context.set_optimization_profile_async(k, self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT set_optimization_profile_async({k}) failed")
            self._profile = k
        if not self.context.set_input_shape(self.input, tuple(int(d) for d in shape)):
            raise RuntimeError(f"TensorRT set_input_shape{tuple(shape)} failed (outside profile {self.profiles[k]})")
        with torch.cuda.stream(self.stream):
            inp = torch.empty(tuple(shape), dtype=self.dtype(self.input), device="cuda")
            out = torch.empty(
                tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtype(self.output), device="cuda"
            )
        for name, buf in ((self.input, inp), (self.output, out)):
            if not self.context.set_tensor_address(name, buf.data_ptr()):
                raise RuntimeError(f"TensorRT set_tensor_address({name!r}) failed")
        return Bound(inp, out, k)

    def launch(self) -> None:
        """Enqueue one inference of the bound buffers on :attr:`stream` (asynchronous)."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def __call__(self, x: Any) -> Any:
        """Logits (float32, on the GPU) for a float32 batch (CPU or GPU), split to at most ``max_batch`` rows."""
        outs = []
        for chunk in x.split(self.max_batch):
            bound = self.bind(chunk.shape)
            with self.torch.cuda.stream(self.stream):
                bound.input.copy_(chunk, non_blocking=False)
                self.launch()
                outs.append(bound.output.float())
            self.stream.synchronize()  # the buffers are rebound for the next chunk
        return self.torch.cat(outs)


def engine_accuracy(runner: EngineRunner, split: Split, mean: Sequence[float], std: Sequence[float]) -> float:
    return split_accuracy(lambda x: runner(x), split, mean, std, runner.max_batch)


# ---- the stage -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSpec:
    """How every engine of one ``export --tensorrt`` call is built and gated."""

    precision: str
    strong: bool
    profiles: tuple[Profile, ...]
    workspace_mb: int
    max_accuracy_drop: float

    @property
    def format(self) -> str:
        return engine_format(self.precision)

    def settings(self, in_shape: Sequence[int], trt_version: str, device: str) -> dict[str, Any]:
        """The build settings an engine artifact records (what another machine needs to rebuild it the same way)."""
        return {
            "precision": self.precision,
            "typing": "strong" if self.strong else "weak",
            "profiles": [{k: list(v) for k, v in p.shapes(in_shape).items()} for p in self.profiles],
            "workspace_mb": self.workspace_mb,
            "max_accuracy_drop": self.max_accuracy_drop,
            "tensorrt": trt_version,
            "device": device,
        }


@dataclass
class EngineBuild:
    """What building and gating one engine gave: the published files, or why it failed."""

    seconds: float
    accuracy: float | None = None
    files: list[str] = field(default_factory=list)
    reason: str | None = None


def build_and_gate(
    trt: Any, run: Run, role: str, data: Dataset, sources: tuple[Artifact, Artifact], spec: EngineSpec
) -> EngineBuild:
    """Build the engine, measure it on the test split, gate it and publish its file (``.failed`` when gated)."""
    source, fp32 = sources
    old = manifest.find(run, manifest.artifact_id(role, spec.format))
    onnx_path = manifest.artifact_path(run, source)
    t0 = time.perf_counter()
    engine = build_engine(
        trt,
        onnx_path,
        source.input.name,
        spec.profiles,
        source.input.shape[1:],
        spec.precision,
        spec.workspace_mb,
        spec.strong,
    )
    out = EngineBuild(seconds=time.perf_counter() - t0)
    out.accuracy = engine_accuracy(EngineRunner(trt, engine), data.test, data.mean, data.std)
    out.reason = accuracy_gate(out.accuracy, fp32.accuracy, spec.max_accuracy_drop)
    with staging_dir(run.export_dir) as tmp:
        staged = tmp / engine_name(role, spec.precision)
        staged.write_bytes(engine)
        name = engine_name(role, spec.precision, failed=out.reason is not None)
        out.files = publish(staged, [], run.export_dir, name, old.files if old else [])
    return out


def build_one(
    trt: Any, run: Run, role: str, data: Dataset, sources: tuple[Artifact, Artifact], spec: EngineSpec
) -> Artifact:
    """Build, gate, publish and record one engine; a build or run that raises is recorded as failed (no file)."""
    import torch

    t0 = time.perf_counter()
    try:
        built = build_and_gate(trt, run, role, data, sources, spec)
    except (UserError, RuntimeError) as exc:  # parser/builder refusals and runtime errors: recorded, not fatal
        reason = f"{spec.format} build raised {type(exc).__name__}: {first_line(exc)}"
        built = EngineBuild(seconds=time.perf_counter() - t0, reason=reason)
    source, fp32 = sources
    art = build_artifact(
        run,
        role,
        spec.format,
        built.files,
        status="ok" if built.reason is None else "failed",
        reason=built.reason,
        accuracy=built.accuracy,
        fp32_accuracy=fp32.accuracy,
        samples=len(data.test),
        seconds=built.seconds,
        built_from=source,
        settings=spec.settings(source.input.shape[1:], trt.__version__, torch.cuda.get_device_name(0)),
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
    strong = strongly_typed(trt, precision)
    fmt_src = source_format(precision, strong)
    purpose = f"a TensorRT {precision} engine"
    pairs = {
        role: (source_artifact(run, role, fmt_src, purpose), source_artifact(run, role, "onnx", purpose))
        for role in roles
    }
    if precision == "int8":
        check_int8_sources(run, roles)
    spec = EngineSpec(precision, strong, tuple(profiles(opt_batch, max_batch)), workspace_mb, max_accuracy_drop)
    ranges = ", ".join(f"{p.lo}..{p.hi}" for p in spec.profiles)
    data = load_run_data(run)
    artifacts = []
    for role, sources in pairs.items():
        progress.log(
            f"building TensorRT {precision} engine for {role} from {sources[0].files[0]} "
            f"({'strongly' if strong else 'weakly'} typed, profiles {ranges})"
        )
        art = build_one(trt, run, role, data, sources, spec)
        progress.log("  " + describe(art))
        artifacts.append(art)
    return finish_stage(artifacts, raise_on_fail)
