"""The `kdeploy` command line: parse, call the Python API, turn a UserError into one line + exit 2."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kdeploy import progress
from kdeploy.errors import GateFailed, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="kdeploy: distill a large PyTorch model into a small one, export, quantize and benchmark it.",
)
console = Console(stderr=True)
out = Console()
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


class RichReporter:
    """Progress bars for interactive terminals."""

    def log(self, message: str) -> None:
        console.print(message, highlight=False, markup=False)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Any]:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=console, transient=True) as bar:
            task_id = bar.add_task(description, total=total, info="")

            class _Task:
                def update(self, advance: int = 1, **fields: Any) -> None:
                    info = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
                    bar.update(task_id, advance=advance, info=info)

            yield _Task()


def handle_errors(fn: F) -> F:
    """User errors: one line and exit 2. Missed gates: exit 1. Bugs: a traceback (always with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if _state["debug"]:
                traceback.print_exc()
            console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except GateFailed as exc:
            console.print(f"gate failed: {exc}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted: nothing partial was written; continue with the same command and --resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="plain log lines instead of progress bars")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for user errors too")] = False,
) -> None:
    _state["debug"] = debug
    interactive = sys.stderr.isatty() and not quiet
    progress.set_reporter(RichReporter() if interactive else progress.LogReporter(quiet=quiet))


RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file (see `kdeploy recipes`)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a recipe key: --set student.epochs=3")]
DataRootOpt = Annotated[
    str | None, typer.Option("--data-root", help="dataset folder (else recipe data.root, then $KDEPLOY_DATA)")
]


@app.command()
@handle_errors
def distill(
    recipe: RecipeArg,
    set_: SetOpt = None,
    data_root: DataRootOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<recipe name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing run folder")] = False,
) -> None:
    """Train the teacher (or load it), a CE-only baseline and the distilled student into one run folder."""
    from kdeploy.distill import distill as run_distill
    from kdeploy.recipe import load_recipe

    r = load_recipe(recipe, set_ or [], data_root)
    run = run_distill(r, out=out_dir, resume=resume, force=force)
    print_metrics(run.read_metrics())
    out.print(f"run folder: {run.root}")


def print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title=f"{metrics.get('recipe', '')}: test accuracy", title_justify="left")
    for col in ("model", "accuracy", "params", "best epoch", "train s", "samples/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for role, m in metrics.get("models", {}).items():
        table.add_row(
            role,
            f"{m['accuracy']:.4f}",
            f"{m['params']:,}",
            str(m.get("best_epoch", "")),
            f"{m['train_seconds']:.1f}",
            f"{m['samples_per_second']:,.0f}",
        )
    out.print(table)


@app.command("recipes")
@handle_errors
def list_recipes() -> None:
    """List the shipped recipes with one-line descriptions."""
    from kdeploy.recipe import shipped_recipes

    table = Table(show_header=True)
    table.add_column("recipe")
    table.add_column("description")
    for path, description in shipped_recipes():
        table.add_row(os.path.relpath(path), description)
    out.print(table)


@app.command("models")
@handle_errors
def list_models() -> None:
    """List the registered model names."""
    from kdeploy.models import list_models as names

    out.print("\n".join(names()))


@app.command("methods")
@handle_errors
def list_methods() -> None:
    """List the distillation methods and their parameters."""
    from kdeploy.distill import METHODS

    for name in METHODS.names():
        params = METHODS.get(name).Params.model_fields
        desc = ", ".join(f"{k}={v.default!r}" if not v.is_required() else k for k, v in params.items())
        out.print(f"{name}: {desc}", highlight=False)


@app.command("datasets")
@handle_errors
def list_datasets() -> None:
    """List the supported datasets."""
    from kdeploy.data import list_datasets as names

    out.print("\n".join(names()))


# ---- bench, run, report -------------------------------------------------------------------------
RunArg = Annotated[Path | None, typer.Argument(help="run folder (default: runs/latest)")]
BatchOpt = Annotated[str, typer.Option("--batch-sizes", help="comma-separated batch sizes to time")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch and ORT intra-op threads (default: all)")]
RuntimesOpt = Annotated[str, typer.Option("--runtimes", help="comma-separated: torch, onnxruntime, tensorrt")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda")]
ModelsOpt = Annotated[str | None, typer.Option("--models", help="roles to bench, e.g. teacher,student (default all)")]
WarmupOpt = Annotated[int, typer.Option("--warmup", help="untimed iterations before timing")]
ItersOpt = Annotated[int, typer.Option("--iters", help="minimum timed iterations per row")]
SecondsOpt = Annotated[float, typer.Option("--seconds", help="minimum timed seconds per row")]
GraphOpt = Annotated[str, typer.Option("--graph-level", help="ORT graph optimisation: disabled/basic/extended/all")]
CudaGraphOpt = Annotated[bool, typer.Option("--cuda-graph", help="PyTorch on CUDA: replay a captured CUDA graph")]


def _csv(value: str | None, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    if value is not None and not items:
        raise UserError(f"{what} is empty; pass a comma-separated list")
    return items


def _bench_settings(batch_sizes: str, threads: int | None, runtimes: str, device: str, models: str | None,
                    warmup: int, iters: int, seconds: float, graph_level: str, cuda_graph: bool,
                    data_root: str | None) -> Any:
    from kdeploy.bench import BenchSettings, TimingSettings

    try:
        sizes = tuple(int(b) for b in _csv(batch_sizes, "--batch-sizes"))
    except ValueError:
        raise UserError(f"--batch-sizes {batch_sizes!r}: expected integers like 1,32,256") from None
    return BenchSettings(
        batch_sizes=sizes, threads=threads, runtimes=_csv(runtimes, "--runtimes"), device=device,
        models=_csv(models, "--models") if models else None,
        timing=TimingSettings(warmup=warmup, min_iters=iters, min_seconds=seconds), graph_level=graph_level,
        cuda_graph=cuda_graph, data_root=data_root,
    )


def print_bench(result: dict[str, Any]) -> None:
    from kdeploy.bench.report import settings_line, table

    headers, cells = table(result["rows"])
    t = Table(title="bench: latency ms per batch, ratios vs teacher PyTorch fp32", title_justify="left")
    for h in headers:
        t.add_column(h, justify="left" if h in {"model", "format", "runtime", "device"} else "right")
    for row in cells:
        t.add_row(*row)
    out.print(t)
    out.print(settings_line(result), highlight=False, soft_wrap=True)
    for s in result.get("skipped", []):
        out.print(f"skipped {s['model']} {s['format']} ({s['runtime']}): {s['reason']}", highlight=False)


@app.command()
@handle_errors
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
) -> None:
    """Measure accuracy, params, MACs, size and latency of every model and artifact of a run."""
    from kdeploy.bench import bench as run_bench
    from kdeploy.runs import Run

    settings = _bench_settings(batch_sizes, threads, runtimes, device, models, warmup, iters, seconds, graph_level,
                               cuda_graph, data_root)
    run = Run.open(run_dir)
    result = run_bench(run, settings)
    print_bench(result)
    out.print(f"wrote {run.root}/bench.json, bench.csv, bench.md, pareto.png", highlight=False)


@app.command("run")
@handle_errors
def run_all(
    recipe: RecipeArg,
    set_: SetOpt = None,
    data_root: DataRootOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<recipe name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing run folder")] = False,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="ONNX Runtime INT8 quantization")] = True,
    int8_method: Annotated[str, typer.Option("--int8-method", help="static (calibrated) or dynamic")] = "static",
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="static INT8 calibration images")] = 512,
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
    from kdeploy.runs import DEFAULT_RUNS_DIR

    r = load_recipe(recipe, set_ or [], data_root)
    settings = _bench_settings(batch_sizes, threads, runtimes, device, None, warmup, iters, seconds, "all", False,
                               None)
    options = PipelineOptions(int8=int8, int8_method=int8_method, calib_samples=calib_samples, fp16=fp16,
                              tensorrt=tensorrt, bench=settings, max_accuracy_drop=max_accuracy_drop,
                              min_speedup=min_speedup)
    try:
        result = run_pipeline(r, out_dir, resume=resume, force=force, options=options)
    except GateFailed:
        root = out_dir if out_dir is not None else DEFAULT_RUNS_DIR / r.name
        if (root / "bench.json").is_file():
            print_bench(read_bench(root))
        raise
    print_metrics(result.run.read_metrics())
    print_bench(result.bench)
    if result.gate:
        out.print(("gate passed: " if result.gate["passed"] else "gate: ") + result.gate["message"], highlight=False)
    out.print(f"report: {result.report}", highlight=False)


@app.command()
@handle_errors
def report(run_dir: RunArg = None) -> None:
    """Re-render report.md, bench.md/.csv and pareto.png from a run's saved results (measures nothing)."""
    from kdeploy.bench.report import read_bench, write_report
    from kdeploy.runs import Run

    run = Run.open(run_dir)
    path = write_report(run)
    if (run.root / "bench.json").is_file():
        print_bench(read_bench(run.root))
    out.print(f"report: {path}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
