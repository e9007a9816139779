"""What to measure: every trained model in PyTorch and every usable manifest artifact, as :class:`Target`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kdeploy import progress
from kdeploy.artifacts import Artifact, read_manifest
from kdeploy.artifacts.manifest import sha256
from kdeploy.bench.measure import count_macs, count_params, disk_bytes, memory_bytes
from kdeploy.bench.openvino_runner import OpenVINORunner
from kdeploy.bench.records import Skipped
from kdeploy.bench.runners import OrtRunner, Runner, TensorRTRunner, TorchRunner
from kdeploy.bench.settings import BenchSettings
from kdeploy.data import Split, iterate_batches
from kdeploy.errors import UserError, first_line
from kdeploy.recipe import load_data
from kdeploy.rundata import run_recipe
from kdeploy.runs import Run


@dataclass
class Target:
    """One thing to measure: a model role in PyTorch, or one exported artifact."""

    model: str
    format: str
    runtime: str
    make: Callable[[], Runner]
    params: int | None
    macs: int | None
    size_bytes: int
    memory_bytes: int | None
    mean: Sequence[float]
    std: Sequence[float]
    artifact: str | None = None  # manifest id
    files: list[str] = field(default_factory=list)


def load_test_split(run: Run, data_root: str | None = None) -> Split:
    """The run's test split, loaded with the same dataset arguments as training."""
    recipe = run_recipe(run)
    if data_root:
        recipe.data.root = data_root
    data = load_data(recipe)
    if len(data.test) == 0:
        raise UserError(f"{recipe.data.name}: the test split is empty; bench needs test samples (check data.limit)")
    return data.test


def timing_input(split: Split, batch_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The first ``batch_size`` test images, normalised (repeated when the split is smaller)."""
    x, _, _ = next(iterate_batches(split, min(batch_size, len(split)), shuffle=False, mean=mean, std=std))
    if x.shape[0] < batch_size:
        x = x.repeat((batch_size + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch_size]
    return np.ascontiguousarray(x.numpy())


# ---- targets --------------------------------------------------------------------------------------
def torch_targets(run: Run, opts: BenchSettings) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for role in run.roles():
        if opts.models and role not in opts.models:
            continue
        model, meta = run.load_model(role)
        macs = count_macs(model, meta.in_shape, role).macs
        out[role] = Target(
            model=role,
            format="pytorch",
            runtime="torch",
            make=lambda m=model: TorchRunner(m, opts.device, opts.resolved_threads(), opts.cuda_graph),
            params=count_params(model),
            macs=macs,
            size_bytes=run.weights_path(role).stat().st_size,
            memory_bytes=memory_bytes(model),
            mean=meta.mean,
            std=meta.std,
            files=[run.weights_path(role).name],
        )
    return out


def artifact_target(
    run: Run, art: Artifact, base: Target | None, opts: BenchSettings, runtime: str | None = None
) -> Target | str:
    """A target for one manifest entry on ``runtime`` (default the artifact's own; ``openvino`` for ONNX files too),
    or the reason it is skipped."""
    runtime = runtime or art.runtime
    if not art.usable:
        reason = first_line(art.reason or "")
        return f"export status {art.status}" + (f": {reason}" if reason else "")
    files = art.paths(run.export_dir)
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        return f"artifact files missing ({', '.join(missing) or 'none listed'}); re-run `kdeploy export`"
    if art.sha256 and sha256(files[0]) != art.sha256:  # replaced or damaged after it passed its gate
        raise UserError(
            f"{files[0]}: changed since it was exported (sha256 differs from export/manifest.json); "
            "re-run `kdeploy export` (and `kdeploy quantize`)"
        )
    mean = art.input.mean or (base.mean if base else None)
    std = art.input.std or (base.std if base else None)
    if mean is None or std is None:
        return "no input mean/std in the manifest"
    if art.runtime == "tensorrt":
        engine = next((f for f in files if f.suffix in {".engine", ".plan", ".trt"}), files[0])
        make: Callable[[], Runner] = lambda: TensorRTRunner(engine)  # noqa: E731
    else:
        onnx_file = next((f for f in files if f.suffix == ".onnx"), files[0])
        make = lambda: OrtRunner(onnx_file, opts.device, opts.resolved_threads(), opts.graph_level)  # noqa: E731
        if runtime == "openvino":
            if opts.device != "cpu":
                return "OpenVINO is benched on the CPU only (--device cpu)"
            make = lambda: OpenVINORunner(onnx_file, opts.resolved_threads(), opts.openvino_precision)  # noqa: E731
    return Target(
        model=art.model,
        format=art.format,
        runtime=runtime,
        make=make,
        params=base.params if base else None,
        macs=base.macs if base else None,
        size_bytes=disk_bytes(files),
        memory_bytes=None,
        mean=mean,
        std=std,
        artifact=art.id,
        files=[f.name for f in files],
    )


def collect_targets(run: Run, opts: BenchSettings) -> tuple[list[Target], list[Skipped]]:
    skipped: list[Skipped] = []
    bases = torch_targets(run, opts)
    targets = [t for t in bases.values() if "torch" in opts.runtimes]
    artifacts = read_manifest(run).artifacts
    if not artifacts and ({"onnxruntime", "openvino", "tensorrt"} & set(opts.runtimes)):
        progress.log(f"{run.root}: no export/manifest.json, so PyTorch rows only; run `kdeploy export` first")
    for art in artifacts:
        if opts.models and art.model not in opts.models:
            continue
        for runtime in ("tensorrt",) if art.runtime == "tensorrt" else ("onnxruntime", "openvino"):
            if runtime not in opts.runtimes:
                continue
            got = artifact_target(run, art, bases.get(art.model), opts, runtime)
            if isinstance(got, str):
                skipped.append(Skipped(art.model, art.format, runtime, got))
            else:
                targets.append(got)
    if not targets:
        fixes = {
            "onnxruntime": "`kdeploy export --onnx`",
            "openvino": "`kdeploy export --onnx`",
            "tensorrt": "`kdeploy export --tensorrt` (on a GPU)",
        }
        build = " or ".join(dict.fromkeys(fixes[r] for r in opts.runtimes if r in fixes)) or "`kdeploy export`"
        models = ",".join(opts.models) if opts.models else "all"
        raise UserError(
            f"{run.root}: nothing to bench for --models {models} --runtimes {','.join(opts.runtimes)}; "
            f"add torch to --runtimes, or build the artifacts with {build}"
        )
    return targets, skipped
