"""``bench`` and ``report``: measure a run's models and artifacts, and re-render the report from saved results."""

from __future__ import annotations

import dataclasses

from kdeploy.cli.main import command, out
from kdeploy.cli.options import (
    BatchOpt,
    CudaGraphOpt,
    DataRootOpt,
    DeviceOpt,
    GraphOpt,
    ItersOpt,
    ModelsOpt,
    OvPrecisionOpt,
    RunArg,
    RuntimesOpt,
    SecondsOpt,
    ThreadsOpt,
    WarmupOpt,
    bench_settings,
)
from kdeploy.cli.tables import print_bench


@command()
def bench(
    run_dir: RunArg = None,
    batch_sizes: BatchOpt = "1,32,256",
    threads: ThreadsOpt = None,
    runtimes: RuntimesOpt = "torch,onnxruntime,tensorrt",
    device: DeviceOpt = "cpu",
    models: ModelsOpt = None,
    warmup: WarmupOpt = 10,
    iters: ItersOpt = 50,
    seconds: SecondsOpt = 1.0,
    graph_level: GraphOpt = "all",
    cuda_graph: CudaGraphOpt = False,
    data_root: DataRootOpt = None,
    openvino_precision: OvPrecisionOpt = "auto",
) -> None:
    """Measure accuracy, params, MACs, size and latency of every model and artifact of a run."""
    from kdeploy.bench import bench as run_bench
    from kdeploy.runs import Run

    options = bench_settings(
        batch_sizes, threads, runtimes, device, models, warmup, iters, seconds, graph_level, cuda_graph, data_root
    )
    options = dataclasses.replace(options, openvino_precision=openvino_precision)
    options.check()  # a missing optional runtime is reported before the run folder is read
    run = Run.open(run_dir)
    result = run_bench(run, options)
    print_bench(result)
    out.print(f"wrote {run.bench_path}, bench.csv, bench.md, pareto.png", highlight=False)


@command()
def report(run_dir: RunArg = None) -> None:
    """Re-render report.md, bench.md/.csv and pareto.png from a run's saved results (measures nothing)."""
    from kdeploy.bench.report import read_bench, write_report
    from kdeploy.runs import Run

    run = Run.open(run_dir)
    path = write_report(run)
    if run.bench_path.is_file():
        print_bench(read_bench(run))
    out.print(f"report: {path}", highlight=False)
