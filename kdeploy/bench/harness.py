"""`kdeploy bench`: every model role and every exported artifact of a run, on every runtime asked for.

Per target: test-set accuracy through that runtime, params, MACs/FLOPs, size on disk (and in memory for
PyTorch), then latency per batch size. Ratios are taken against the teacher's PyTorch fp32 row at the
same batch size and device. Writes ``bench.json`` (plus CSV, Markdown and the Pareto plot) in the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdeploy import atomic, progress
from kdeploy.bench.gate import REFERENCE
from kdeploy.bench.latency import TimingSettings
from kdeploy.bench.measure import MB, count_macs, count_params, disk_bytes, memory_bytes
from kdeploy.bench.openvino_runner import OpenVINORunner, check_openvino
from kdeploy.bench.runners import GRAPH_LEVELS, OrtRunner, Runner, TensorRTRunner, TorchRunner, Unavailable
from kdeploy.data import Split, iterate_batches
from kdeploy.errors import UserError
from kdeploy.export.manifest import read_manifest, sha256, usable
from kdeploy.export.rundata import run_recipe
from kdeploy.recipe import load_data
from kdeploy.runs import ROLES, Run, environment, package_versions

RUNTIMES = ("torch", "onnxruntime", "tensorrt")
OPTIONAL_RUNTIMES = ("openvino",)  # not in the default list: an optional extra
DEVICES = ("cpu", "cuda")
PRECISION = {
    "pytorch": "fp32",
    "onnx": "fp32",
    "onnx-int8": "int8",
    "onnx-int8-qat": "int8",
    "onnx-int8-dynamic": "int8-dynamic",
    "onnx-fp16": "fp16",
    "tensorrt-fp16": "fp16",
    "tensorrt-int8": "int8",
}


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1, 32, 256)
    threads: int | None = None  # None: every core this process may use
    runtimes: tuple[str, ...] = RUNTIMES
    device: str = "cpu"
    models: tuple[str, ...] | None = None  # roles (and their artifacts); None: all
    timing: TimingSettings = field(default_factory=TimingSettings)
    graph_level: str = "all"  # ONNX Runtime graph optimisation level
    cuda_graph: bool = False  # replay PyTorch CUDA graphs (small models: removes launch overhead)
    eval_batch_size: int = 1000
    data_root: str | None = None  # override the recipe's data.root
    openvino_precision: str = "auto"  # OpenVINO INFERENCE_PRECISION_HINT; auto: the CPU plugin's default

    def resolved_threads(self) -> int:
        return self.threads or available_cores()

    def check(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UserError(f"--batch-sizes {list(self.batch_sizes)}: give positive integers, e.g. 1,32,256")
        bad = [r for r in self.runtimes if r not in RUNTIMES + OPTIONAL_RUNTIMES]
        if bad or not self.runtimes:
            known = ", ".join(RUNTIMES + OPTIONAL_RUNTIMES)
            raise UserError(f"--runtimes: unknown {', '.join(bad) or '(none)'}; choose from {known}")
        check_openvino(self.runtimes, self.openvino_precision)
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: choose cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be >= 1")
        if self.graph_level not in GRAPH_LEVELS:
            raise UserError(f"--graph-level {self.graph_level!r}: choose from {', '.join(GRAPH_LEVELS)}")
        unknown = [m for m in self.models or () if m not in ROLES]
        if unknown:
            raise UserError(f"--models {','.join(unknown)}: unknown role; choose from {', '.join(ROLES)}")
        if self.eval_batch_size < 1:
            raise UserError(f"eval batch size {self.eval_batch_size}: must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["threads"] = self.resolved_threads()
        out["timing"] = self.timing.to_dict()
        out["batch_sizes"] = list(self.batch_sizes)
        out["runtimes"] = list(self.runtimes)
        out["models"] = list(self.models) if self.models else None
        out["reference"] = {"model": REFERENCE[0], "format": REFERENCE[1], "runtime": "torch"}
        return out


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


# ---- inputs ---------------------------------------------------------------------------------------
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


def runner_accuracy(runner: Runner, split: Split, mean: Sequence[float], std: Sequence[float], batch: int) -> float:
    """Top-1 accuracy of ``runner`` on the whole split."""
    limit = runner.max_batch()
    batch = min(batch, limit) if limit else batch
    correct = 0
    for x, y, _ in iterate_batches(split, batch, shuffle=False, mean=mean, std=std):
        logits = runner.predict(np.ascontiguousarray(x.numpy()))
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return correct / len(split)


# ---- targets --------------------------------------------------------------------------------------
def torch_targets(run: Run, s: BenchSettings) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for role in run.roles():
        if s.models and role not in s.models:
            continue
        model, meta = run.load_model(role)
        ds = meta["dataset"]
        macs = count_macs(model, ds["in_shape"], role).macs
        out[role] = Target(
            model=role,
            format="pytorch",
            runtime="torch",
            make=lambda m=model: TorchRunner(m, s.device, s.resolved_threads(), s.cuda_graph),
            params=count_params(model),
            macs=macs,
            size_bytes=run.weights_path(role).stat().st_size,
            memory_bytes=memory_bytes(model),
            mean=ds["mean"],
            std=ds["std"],
            files=[run.weights_path(role).name],
        )
    return out


def artifact_target(
    run: Run, art: dict[str, Any], base: Target | None, s: BenchSettings, runtime: str = "onnxruntime"
) -> Target | str:
    """A target for one manifest entry on ``runtime`` (onnxruntime or openvino for ONNX files), or why it is skipped."""
    fmt = str(art.get("format", ""))
    if not usable(art):
        reason = str(art.get("reason") or "").strip().splitlines()
        return f"export status {art.get('status')}" + (f": {reason[0]}" if reason else "")
    files = [run.export_dir / f for f in art.get("files", [])]
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        return f"artifact files missing ({', '.join(missing) or 'none listed'}); re-run `kdeploy export`"
    if art.get("sha256") and sha256(files[0]) != art["sha256"]:  # replaced or damaged after it passed its gate
        raise UserError(
            f"{files[0]}: changed since it was exported (sha256 differs from export/manifest.json); "
            "re-run `kdeploy export` (and `kdeploy quantize`)"
        )
    inp = art.get("input", {})
    mean = inp.get("mean") or (base.mean if base else None)
    std = inp.get("std") or (base.std if base else None)
    if mean is None or std is None:
        return "no input mean/std in the manifest"
    if fmt.startswith("tensorrt"):
        engine = next((f for f in files if f.suffix in {".engine", ".plan", ".trt"}), files[0])
        make: Callable[[], Runner] = lambda: TensorRTRunner(engine)  # noqa: E731
        runtime = "tensorrt"
    else:
        onnx_file = next((f for f in files if f.suffix == ".onnx"), files[0])
        make = lambda: OrtRunner(onnx_file, s.device, s.resolved_threads(), s.graph_level)  # noqa: E731
        if runtime == "openvino":
            if s.device != "cpu":
                return "OpenVINO is benched on the CPU only (--device cpu)"
            make = lambda: OpenVINORunner(onnx_file, s.resolved_threads(), s.openvino_precision)  # noqa: E731
    return Target(
        model=str(art.get("model")),
        format=fmt,
        runtime=runtime,
        make=make,
        params=base.params if base else None,
        macs=base.macs if base else None,
        size_bytes=disk_bytes(files),
        memory_bytes=None,
        mean=mean,
        std=std,
        artifact=art.get("id"),
        files=[f.name for f in files],
    )


def collect_targets(run: Run, s: BenchSettings) -> tuple[list[Target], list[dict[str, Any]]]:
    skipped: list[dict[str, Any]] = []
    bases = torch_targets(run, s)
    targets = [t for t in bases.values() if "torch" in s.runtimes]
    artifacts = read_manifest(run)["artifacts"]
    if not artifacts and ({"onnxruntime", "openvino", "tensorrt"} & set(s.runtimes)):
        progress.log(f"{run.root}: no export/manifest.json, so PyTorch rows only; run `kdeploy export` first")
    for art in artifacts:
        model = str(art.get("model"))
        if s.models and model not in s.models:
            continue
        onnx = ("onnxruntime", "openvino")
        for runtime in ("tensorrt",) if str(art.get("format", "")).startswith("tensorrt") else onnx:
            if runtime not in s.runtimes:
                continue
            got = artifact_target(run, art, bases.get(model), s, runtime)
            if isinstance(got, str):
                skipped.append({"model": model, "format": art.get("format"), "runtime": runtime, "reason": got})
            else:
                targets.append(got)
    if not targets:
        fixes = {
            "onnxruntime": "`kdeploy export --onnx`",
            "openvino": "`kdeploy export --onnx`",
            "tensorrt": "`kdeploy export --tensorrt` (on a GPU)",
        }
        build = " or ".join(dict.fromkeys(fixes[r] for r in s.runtimes if r in fixes)) or "`kdeploy export`"
        models = ",".join(s.models) if s.models else "all"
        raise UserError(
            f"{run.root}: nothing to bench for --models {models} --runtimes {','.join(s.runtimes)}; "
            f"add torch to --runtimes, or build the artifacts with {build}"
        )
    return targets, skipped


# ---- measuring ------------------------------------------------------------------------------------
def machine_info(s: BenchSettings) -> dict[str, Any]:
    import onnxruntime as ort

    info = environment()
    info["cores_available"] = available_cores()
    info["threads"] = s.resolved_threads()
    info["onnxruntime_providers"] = ort.get_available_providers()
    info["load_average_before"] = load_average()
    info["versions"].update(package_versions("fvcore", "tensorrt"))
    return info


def load_average() -> float | None:
    """1-minute load average (other processes competing for the cores make latencies noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat (Linux); None elsewhere."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def busy_cores(window: float = 0.5) -> float | None:
    """How many of this process's cores other processes kept busy over the next ``window`` seconds.

    Sampled from /proc/stat on the cores this process may use, minus this process's own CPU time; unlike the load
    average it does not remember the training that just finished in this process. None where /proc is missing."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    before, own, start = _cpu_jiffies(cpus), time.process_time(), time.perf_counter()
    time.sleep(window)
    after = _cpu_jiffies(cpus)
    own, elapsed = time.process_time() - own, time.perf_counter() - start
    if before is None or after is None or after[1] <= before[1]:
        return None
    used = (after[0] - before[0]) / (after[1] - before[1]) * len(cpus)
    return round(max(0.0, used - own / elapsed), 2)


def warn_if_busy(threads: int) -> float | None:
    """Warn when other processes compete for the cores the timing will use; returns the busy-core estimate."""
    busy = busy_cores()
    spare = max(0.5, available_cores() - threads + 0.5)
    if busy is not None:
        if busy > spare:
            progress.log(
                f"warning: other processes kept {busy:.1f} of {available_cores()} cores busy just before timing; "
                "latencies will be noisy (bench on a quiet machine)"
            )
        return busy
    load = load_average()
    if load is not None and load > spare:
        progress.log(
            f"warning: load average {load:.1f} on {available_cores()} cores before timing; other "
            "processes compete for the cores, so latencies will be noisy (bench on a quiet machine)"
        )
    return None


def measure_target(t: Target, split: Split, s: BenchSettings, tick: Callable[[], None]) -> list[dict[str, Any]]:
    runner = t.make()
    try:
        acc = runner_accuracy(runner, split, t.mean, t.std, s.eval_batch_size)
        info = runner.info()
        rows = []
        limit = runner.max_batch()
        for b in s.batch_sizes:
            if limit and b > limit:
                progress.log(f"{t.model} {t.format}: batch {b} > engine maximum {limit}, skipped")
                tick()
                continue
            lat = runner.time(timing_input(split, b, t.mean, t.std), s.timing)
            rows.append(
                {
                    "model": t.model,
                    "format": t.format,
                    "precision": PRECISION.get(t.format, "?"),
                    "runtime": t.runtime,
                    "device": runner.device,
                    "batch_size": b,
                    "accuracy": acc,
                    "params": t.params,
                    "macs": t.macs,
                    "flops": 2 * t.macs if t.macs is not None else None,
                    "size_mb": t.size_bytes / MB,
                    "memory_mb": t.memory_bytes / MB if t.memory_bytes is not None else None,
                    "latency_ms": lat.ms(),
                    "iters": lat.iters,
                    "throughput": lat.throughput(b),
                    "artifact": t.artifact,
                    "files": t.files,
                    **{k: v for k, v in info.items() if k != "providers"},
                }
            )
            tick()
        return rows
    finally:
        runner.close()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-up (reference p50 / row p50), size reduction and accuracy delta against the teacher row."""
    refs = {(r["batch_size"], r["device"]): r for r in rows if (r["model"], r["format"]) == REFERENCE}
    for r in rows:
        ref = refs.get((r["batch_size"], r["device"]))
        if ref is None:
            r.update(speedup=None, size_reduction=None, accuracy_delta=None)
            continue
        r["speedup"] = ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["size_reduction"] = ref["size_mb"] / r["size_mb"] if r["size_mb"] else None
        r["accuracy_delta"] = r["accuracy"] - ref["accuracy"]


def bench(run: Run, settings: BenchSettings | None = None) -> dict[str, Any]:
    """Measure everything in ``run``; write bench.json/.csv/.md and pareto.png; return the results."""
    from kdeploy.bench.report import write_bench_outputs

    s = settings or BenchSettings()
    s.check()
    busy = warn_if_busy(s.resolved_threads())
    machine = machine_info(s)
    machine["busy_cores_before"] = busy  # cores other processes used just before timing (Linux), else None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.resolved_threads())
    try:
        split = load_test_split(run, s.data_root)
        targets, skipped = collect_targets(run, s)
        rows: list[dict[str, Any]] = []
        progress.log(
            f"bench: {len(targets)} targets x {len(s.batch_sizes)} batch sizes on {s.device}, "
            f"{s.resolved_threads()} threads, accuracy on {len(split)} test samples"
        )
        with progress.task("bench", total=len(targets) * len(s.batch_sizes)) as bar:
            for t in targets:
                try:
                    rows += measure_target(t, split, s, lambda: bar.update(1))
                except Unavailable as exc:
                    skipped.append({"model": t.model, "format": t.format, "runtime": t.runtime, "reason": str(exc)})
                    progress.log(f"{t.model} {t.format} on {t.runtime}: skipped ({exc})")
                    bar.update(len(s.batch_sizes))
    finally:
        torch.set_num_threads(threads_before)
    add_ratios(rows)
    machine["load_average_after"] = load_average()
    result = {
        "run": str(run.root),
        "machine": machine,
        "settings": s.to_dict(),
        "rows": rows,
        "skipped": skipped,
    }
    atomic.write_json(run.root / "bench.json", result)
    write_bench_outputs(run.root, result)
    return result
