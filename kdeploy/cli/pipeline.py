"""``run``: distill -> export ONNX -> quantize -> bench -> report.md in one command, with an optional gate."""

from __future__ import annotations

from typing import Annotated

import typer

from kdeploy.cli.main import command, out
from kdeploy.cli.options import (
    BatchOpt,
    CalibMethodOpt,
    DataRootOpt,
    DeviceOpt,
    ForceOpt,
    ItersOpt,
    OutOpt,
    PerChannelOpt,
    RecipeArg,
    ResumeOpt,
    RuntimesOpt,
    SecondsOpt,
    SetOpt,
    ThreadsOpt,
    WarmupOpt,
    bench_settings,
)
from kdeploy.cli.tables import print_bench, print_metrics
from kdeploy.errors import GateFailed


@command("run")
def run_all(
    recipe: RecipeArg,
    set_: SetOpt = None,
    data_root: DataRootOpt = None,
    out_dir: OutOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="ONNX Runtime INT8 quantization")] = True,
    int8_method: Annotated[str, typer.Option("--int8-method", help="static (calibrated) or dynamic")] = "static",
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="static INT8 calibration images")] = 512,
    calib_method: CalibMethodOpt = "minmax",
    per_channel: PerChannelOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="FP16 ONNX artifacts")] = True,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="build TensorRT fp16 engines (GPU)")] = False,
    batch_sizes: BatchOpt = "1,32,256",
    threads: ThreadsOpt = None,
    runtimes: RuntimesOpt = "torch,onnxruntime,tensorrt",
    device: DeviceOpt = "cpu",
    warmup: WarmupOpt = 10,
    iters: ItersOpt = 50,
    seconds: SecondsOpt = 1.0,
    max_accuracy_drop: Annotated[
        float | None, typer.Option("--max-accuracy-drop", help="gate: student may lose at most this accuracy")
    ] = None,
    min_speedup: Annotated[
        float | None, typer.Option("--min-speedup", help="gate: student p50 speed-up at batch 1 vs teacher")
    ] = None,
) -> None:
    """distill -> export ONNX -> quantize -> bench -> report.md, one command; exit 1 when a gate is missed."""
    from kdeploy.bench.report import read_bench
    from kdeploy.pipeline import PipelineOptions, run_pipeline
    from kdeploy.recipe import load_recipe
    from kdeploy.runs import Run, default_run_dir

    config = load_recipe(recipe, set_ or [], data_root)
    timing = bench_settings(batch_sizes, threads, runtimes, device, None, warmup, iters, seconds, "all", False, None)
    options = PipelineOptions(
        int8=int8,
        int8_method=int8_method,
        calib_samples=calib_samples,
        calib_method=calib_method,
        per_channel=per_channel,
        fp16=fp16,
        tensorrt=tensorrt,
        bench=timing,
        max_accuracy_drop=max_accuracy_drop,
        min_speedup=min_speedup,
    )
    try:
        result = run_pipeline(config, out_dir, resume=resume, force=force, options=options)
    except GateFailed:
        failed_run = Run(default_run_dir(config.name, out_dir))
        if failed_run.bench_path.is_file():
            print_bench(read_bench(failed_run))
        raise
    print_metrics(result.run.read_metrics())
    print_bench(result.bench)
    if result.gate:
        verdict = "gate passed: " if result.gate.gated else ""
        out.print(verdict + result.gate.message, highlight=False, soft_wrap=True)
    out.print(f"time: {result.stages.summary()}", highlight=False, soft_wrap=True)
    out.print(f"report: {result.report}", highlight=False)
