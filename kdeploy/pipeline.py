"""`kdeploy run`: distill -> export ONNX -> quantize -> (TensorRT) -> bench -> report.md, then the gate.

Stage gates and the deployment gate:

- an ONNX export that misses its parity gate is a correctness failure: the pipeline still benches what is
  usable and writes the report, then raises :class:`GateFailed` (exit 1);
- a quantized artifact or TensorRT engine that misses its accuracy budget (or an engine TensorRT cannot build)
  is marked failed in the manifest, left out of the bench and listed in the report; it does not fail the run;
- with ``tensorrt``, FP16 engines are built for every exported model and INT8 engines for every model whose
  static INT8 ONNX passed its gate;
- the deployment gate (``max_accuracy_drop``, ``min_speedup``) compares the best student row against the
  teacher's PyTorch fp32 row at batch 1 (see :mod:`kdeploy.bench.gate`) and raises :class:`GateFailed` when
  missed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kdeploy import atomic, progress
from kdeploy.artifacts import Artifact, describe
from kdeploy.bench import BenchSettings, bench
from kdeploy.bench.gate import GateVerdict, evaluate_gate
from kdeploy.bench.records import BenchResult
from kdeploy.bench.report import write_report
from kdeploy.errors import GateFailed, UserError
from kdeploy.recipe import Recipe
from kdeploy.runs import Run, StageTimes


@dataclass
class PipelineOptions:
    int8: bool = True
    int8_method: str = "static"  # or "dynamic"
    calib_samples: int = 512
    calib_method: str = "minmax"  # static INT8 activation ranges: minmax, entropy or percentile
    per_channel: bool | None = None  # INT8 weight scales per output channel; None: per tensor, per channel on a miss
    fp16: bool = True
    tensorrt: bool = False  # build TensorRT engines (needs a GPU and the tensorrt package)
    opset: int = 18
    bench: BenchSettings = field(default_factory=BenchSettings)
    max_accuracy_drop: float | None = None
    min_speedup: float | None = None
    gate_batch: int = 1

    @property
    def gated(self) -> bool:
        return self.max_accuracy_drop is not None or self.min_speedup is not None

    def check(self) -> None:
        from kdeploy.quantize import check_int8_options

        check_int8_options(self.int8_method, self.calib_samples, self.calib_method, method_flag="--int8-method")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 1:
            raise UserError(f"--max-accuracy-drop {self.max_accuracy_drop}: a fraction in [0, 1], e.g. 0.01")
        if self.min_speedup is not None and self.min_speedup <= 0:
            raise UserError(f"--min-speedup {self.min_speedup}: must be > 0, e.g. 5")
        if self.gated and self.gate_batch not in self.bench.batch_sizes:
            raise UserError(f"the gate is taken at batch {self.gate_batch}; add it to --batch-sizes")
        if self.gated and "torch" not in self.bench.runtimes:
            raise UserError("the gate compares against the teacher's PyTorch row; keep torch in --runtimes")
        if self.tensorrt:
            from kdeploy.export.tensorrt import missing_requirements

            missing = missing_requirements()
            if missing:
                raise UserError(f"--tensorrt needs {' and '.join(missing)}; drop --tensorrt on this machine")
        self.bench.check()


@dataclass
class PipelineResult:
    run: Run
    bench: BenchResult
    gate: GateVerdict | None
    stage_failures: list[str]
    report: Path
    stages: StageTimes


@contextmanager
def _timed(times: StageTimes, stage: str) -> Iterator[None]:
    """Add the wall seconds of the block to ``times`` under ``stage`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times.seconds[stage] = round(times.seconds.get(stage, 0.0) + time.perf_counter() - start, 1)


def _quantize(run: Run, opts: PipelineOptions, roles: list[str]) -> list[Artifact]:
    from kdeploy.quantize import quantize

    return quantize(
        run,
        int8=opts.int8,
        method=opts.int8_method,
        fp16=opts.fp16,
        calib_samples=opts.calib_samples,
        calib_method=opts.calib_method,
        per_channel=opts.per_channel,
        models=roles,
        raise_on_fail=False,
        target="tensorrt" if opts.tensorrt else "onnxruntime",
    )  # fmt: skip; engines need TRT's form


def _engines(run: Run, roles: list[str], made: list[Artifact]) -> list[Artifact]:
    """TensorRT FP16 engines for ``roles``, INT8 engines for those whose static INT8 ONNX passed its gate."""
    from kdeploy.export import export_tensorrt

    engines = export_tensorrt(run, "fp16", roles, raise_on_fail=False)
    int8_roles = [a.model for a in made if a.format == "onnx-int8" and a.usable]
    return engines + (export_tensorrt(run, "int8", int8_roles, raise_on_fail=False) if int8_roles else [])


def _export_stages(run: Run, opts: PipelineOptions, times: StageTimes) -> list[str]:
    """Export, quantize and (optionally) build engines for every model; returns the failures that fail the run.

    Every stage runs with ``raise_on_fail=False``: its failed artifacts are recorded in the manifest, left out
    of the bench and listed in the report. Only a missed ONNX parity gate fails the run (a correctness error).
    Each stage's wall time goes into ``times``."""
    from kdeploy.export import export_onnx
    from kdeploy.rundata import run_recipe

    with _timed(times, "export"):
        exported = export_onnx(run, opset=opts.opset, raise_on_fail=False)
    fatal = [describe(a) for a in exported if a.failed]
    ok_roles = [a.model for a in exported if a.usable]
    made: list[Artifact] = []
    if ok_roles and (opts.int8 or opts.fp16):
        with _timed(times, "quantize"):
            made += _quantize(run, opts, ok_roles)
    if "student" in ok_roles and run_recipe(run).qat is not None:  # the recipe asks for quantization-aware KD
        from kdeploy.qat import qat

        with _timed(times, "qat"):
            made.append(qat(run, raise_on_fail=False))
    if ok_roles and opts.tensorrt:
        with _timed(times, "tensorrt"):
            made += _engines(run, ok_roles, made)
    for art in made:
        if art.failed:
            progress.log(f"note: {art.id} missed its gate ({art.reason}); not benched")
    return fatal


def _gate(run: Run, result: BenchResult, opts: PipelineOptions) -> GateVerdict | None:
    """The deployment gate's verdict, written to ``gate.json`` (None, and no file, without a teacher row to
    compare against)."""
    if not (opts.gated or (opts.gate_batch in opts.bench.batch_sizes and "torch" in opts.bench.runtimes)):
        run.gate_path.unlink(missing_ok=True)  # a gate from an earlier session would be stale
        return None
    gate = evaluate_gate(result.rows, opts.max_accuracy_drop, opts.min_speedup, opts.gate_batch)
    atomic.write_json(run.gate_path, gate.to_dict())
    verdict = ("gate passed: " if gate.passed else "gate missed: ") if gate.gated else ""
    progress.log(verdict + gate.message)
    return gate


def run_pipeline(
    recipe: Recipe,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    options: PipelineOptions | None = None,
) -> PipelineResult:
    """Everything from a recipe to ``report.md``; raises GateFailed (after writing the report) when a gate misses.
    Each stage's wall time goes into ``stages.json`` and the report."""
    from kdeploy.distill import distill

    opts = options or PipelineOptions()
    opts.check()
    times = StageTimes()
    with _timed(times, "distill"):
        run = distill(recipe, out=out, resume=resume, force=force)
    fatal = _export_stages(run, opts, times)
    with _timed(times, "bench"):
        result = bench(run, opts.bench)
    gate = _gate(run, result, opts)
    times.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run.write_stage_times(times)
    report = write_report(run, render_bench=False)  # bench() has just written bench.md, bench.csv and the plots
    problems = ([f"deployment gate: {gate.message}"] if gate and not gate.passed else []) + fatal
    if problems:
        raise GateFailed("; ".join(problems) + f" (report: {report})")
    return PipelineResult(run, result, gate, fatal, report, times)
