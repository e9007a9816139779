"""The `kdeploy` command line: parse, call the Python API, turn a UserError into one line + exit 2."""

from __future__ import annotations

import dataclasses
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
from kdeploy.errors import GateFailed, UserError, os_error_message

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


RESUMABLE = {"distill", "run_all"}  # commands with --resume


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
            how = "the same command with --resume" if fn.__name__ in RESUMABLE else "the same command again"
            message = f"interrupted: nothing partial was written; continue with {how}"
            console.print(message, highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # disk full, read-only or missing folder: the user's to fix; anything else is a bug
            message = os_error_message(exc)
            if message is None or _state["debug"]:
                raise
            console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

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
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="override a recipe key: --set student.epochs=3 (repeatable)"),
]
DataRootOpt = Annotated[
    str | None,
    typer.Option("--data-root", metavar="DIR", help="dataset folder (else recipe data.root, then $KDEPLOY_DATA)"),
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
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="one run per seed into <out>/seed<N>, then mean +- std: 0,1,2")
    ] = None,
    nproc: Annotated[
        int | None, typer.Option("--nproc", help="train with N processes (DDP): starts torchrun for you")
    ] = None,
) -> None:
    """Train the teacher (or load it), a CE-only baseline and the distilled student into one run folder."""
    from kdeploy.distill import distill as run_distill
    from kdeploy.distill.distributed import launch, world_from_env
    from kdeploy.recipe import load_recipe

    r = load_recipe(recipe, set_ or [], data_root)
    if nproc is not None and nproc != 1:
        from kdeploy.distill.run import prepare, run_folder
        from kdeploy.distill.trainer import check_precision
        from kdeploy.seeds import parse_seeds, prepare_parent, seeds_root

        check_precision(r.train, world_from_env().device)  # user errors: once here, not once per process
        if seeds is None:
            prepare(run_folder(r, out_dir), r, resume, force)
        else:
            parse_seeds(seeds)
            prepare_parent(seeds_root(r, out_dir), resume, force)
        args = ["distill", str(recipe), *(a for s in set_ or [] for a in ("--set", s))]
        args += ["--data-root", data_root] if data_root else []
        args += ["--out", str(out_dir)] if out_dir is not None else []
        args += ["--resume"] * resume + ["--force"] * force + (["--seeds", seeds] if seeds else [])
        flags = ["--debug"] * _state["debug"] + ["--quiet"] * bool(getattr(progress.get_reporter(), "quiet", False))
        raise typer.Exit(launch(nproc, [*flags, *args]))
    world = world_from_env()
    if seeds is not None:
        from kdeploy.seeds import distill_seeds, parse_seeds

        result = distill_seeds(r, parse_seeds(seeds), out=out_dir, resume=resume, force=force, world=world)
        if world.main:
            print_seeds(result.summary)
            first = result.runs[result.summary["seeds"][0]].root
            out.print(f"multi-seed folder: {result.root} (seeds.json, seeds.md); latest -> {first}", highlight=False)
        return
    run = run_distill(r, out=out_dir, resume=resume, force=force, world=world)
    if world.main:
        print_metrics(run.read_metrics())
        out.print(f"run folder: {run.root}")


def print_seeds(result: dict[str, Any]) -> None:
    from kdeploy.seeds import fmt

    seeds = ", ".join(str(s) for s in result["seeds"])
    table = Table(title=f"{result['recipe']}: test accuracy % over seeds {seeds} (mean ± std)", title_justify="left")
    for col in ("model", "best epoch", "last epoch", "n"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for role, stats in result["summary"].items():
        table.add_row(role, fmt(stats["accuracy"]), fmt(stats["last_accuracy"]), str(stats["accuracy"]["n"]))
    out.print(table)


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
def list_models(
    name: Annotated[str | None, typer.Argument(help="a model family (timm, torchvision): list its archs")] = None,
    pattern: Annotated[str, typer.Argument(help="shell pattern for the archs, e.g. 'resnet*'")] = "*",
) -> None:
    """List the registered model names, or with NAME the archs that family accepts."""
    from kdeploy.models import list_archs
    from kdeploy.models import list_models as names

    out.print("\n".join(list_archs(name, pattern) if name else names()), highlight=False)


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
RuntimesOpt = Annotated[
    str, typer.Option("--runtimes", help="comma-separated: torch, onnxruntime, tensorrt, openvino (kdeploy[openvino])")
]
OvPrecisionOpt = Annotated[
    str, typer.Option("--openvino-precision", help="OpenVINO inference precision: auto (plugin default), f32, bf16")
]
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


def _bench_settings(
    batch_sizes: str,
    threads: int | None,
    runtimes: str,
    device: str,
    models: str | None,
    warmup: int,
    iters: int,
    seconds: float,
    graph_level: str,
    cuda_graph: bool,
    data_root: str | None,
) -> Any:
    from kdeploy.bench import BenchSettings, TimingSettings

    try:
        sizes = tuple(int(b) for b in _csv(batch_sizes, "--batch-sizes"))
    except ValueError:
        raise UserError(f"--batch-sizes {batch_sizes!r}: expected integers like 1,32,256") from None
    return BenchSettings(
        batch_sizes=sizes,
        threads=threads,
        runtimes=_csv(runtimes, "--runtimes"),
        device=device,
        models=_csv(models, "--models") if models else None,
        timing=TimingSettings(warmup=warmup, min_iters=iters, min_seconds=seconds),
        graph_level=graph_level,
        cuda_graph=cuda_graph,
        data_root=data_root,
    )


def print_bench(result: dict[str, Any]) -> None:
    from kdeploy.bench.report import COMPACT, settings_line, table

    headers, cells = table(result["rows"], COMPACT)
    device = ", ".join(sorted({r["device"] for r in result["rows"]}))
    title = f"bench on {device}: latency ms per batch, ratios vs teacher PyTorch fp32 (all columns: bench.md)"
    t = Table(title=title, title_justify="left")
    for h in headers:
        t.add_column(h, justify="left" if h in {"model", "format", "runtime"} else "right")
    for row in cells:
        t.add_row(*row)
    (out if out.is_terminal else Console(width=200)).print(t)  # pipes and files: no 80-column squeeze
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
    openvino_precision: OvPrecisionOpt = "auto",
) -> None:
    """Measure accuracy, params, MACs, size and latency of every model and artifact of a run."""
    from kdeploy.bench import bench as run_bench
    from kdeploy.runs import Run

    settings = _bench_settings(
        batch_sizes, threads, runtimes, device, models, warmup, iters, seconds, graph_level, cuda_graph, data_root
    )
    settings = dataclasses.replace(settings, openvino_precision=openvino_precision)
    settings.check()  # a missing optional runtime is reported before the run folder is read
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
    settings = _bench_settings(batch_sizes, threads, runtimes, device, None, warmup, iters, seconds, "all", False, None)
    options = PipelineOptions(
        int8=int8,
        int8_method=int8_method,
        calib_samples=calib_samples,
        fp16=fp16,
        tensorrt=tensorrt,
        bench=settings,
        max_accuracy_drop=max_accuracy_drop,
        min_speedup=min_speedup,
    )
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
        verdict = "gate passed: " if result.gate["gated"] else ""
        out.print(verdict + result.gate["message"], highlight=False, soft_wrap=True)
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


# ---- export, quantize -----------------------------------------------------------------------------------
ExportModelsOpt = Annotated[
    str | None, typer.Option("--models", help="comma-separated roles, e.g. student,teacher (default: all)")
]
MaxDropOpt = Annotated[
    float, typer.Option("--max-accuracy-drop", help="gate for INT8/FP16/TensorRT: max test-accuracy loss vs fp32 ONNX")
]


def print_artifacts(entries: list[dict[str, Any]], title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("artifact", "file", "MB", "max |Δ logit|", "top-1 agree", "accuracy", "Δ acc (pt)", "status"):
        t.add_column(col, justify="left" if col in {"artifact", "file", "status"} else "right")
    for e in entries:
        p = e.get("parity") or e.get("vs_fp32") or {}  # fp32 ONNX: vs PyTorch; quantized: vs the fp32 ONNX
        acc, drop = e.get("accuracy"), e.get("accuracy_drop")
        status = e["status"] if e["status"] == "ok" else f"{e['status']}: {e.get('reason') or ''}"
        t.add_row(
            e["id"],
            e["files"][0] if e.get("files") else "-",
            f"{e['bytes'] / 1e6:.3f}" if e.get("files") else "-",
            f"{p['max_abs_diff']:.2e}" if p else "-",
            f"{p['top1_agreement']:.2%}" if p else "-",
            f"{acc:.4f}" if acc is not None else "-",
            f"{(0.0 - drop) * 100:+.2f}" if drop is not None and e["format"] != "onnx" else "-",
            status,
        )
    (out if out.is_terminal else Console(width=200)).print(t)
    out.print(
        "max |Δ logit| and top-1 agree: ONNX vs PyTorch (parity gate), quantized vs the fp32 ONNX; "
        "Δ acc: test accuracy change vs fp32",
        highlight=False,
        soft_wrap=True,
    )


@app.command("export")
@handle_errors
def export_cmd(
    run_dir: RunArg = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="export ONNX with the parity gate (the default)")] = False,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="build TensorRT engines (CUDA GPU + tensorrt)")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="TensorRT FP16 engine (the default precision)")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="TensorRT INT8 engine from the QDQ ONNX")] = False,
    models: ExportModelsOpt = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset")] = 18,
    atol: Annotated[float, typer.Option("--atol", help="parity gate: max |onnx - torch| per logit")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="parity gate: extra tolerance rtol * |torch|")] = 0.0,
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="parity gate: top-1 agreement")] = 1.0,
    parity_batch: Annotated[int, typer.Option("--parity-batch", help="larger parity batch (1 is always run)")] = 256,
    parity_samples: Annotated[int, typer.Option("--parity-samples", help="test images compared")] = 1024,
    opt_batch: Annotated[int, typer.Option("--opt-batch", help="TensorRT profile: optimal batch")] = 64,
    max_batch: Annotated[int, typer.Option("--max-batch", help="TensorRT profile: largest batch")] = 256,
    workspace_mb: Annotated[int, typer.Option("--workspace-mb", help="TensorRT builder workspace (MiB)")] = 1024,
    max_accuracy_drop: MaxDropOpt = 0.01,
) -> None:
    """Export a run's models to ONNX (gated on PyTorch parity) and/or TensorRT engines, into <run>/export/."""
    from kdeploy.export import export_onnx, export_tensorrt
    from kdeploy.export.onnx import failures
    from kdeploy.export.tensorrt import check_args, require_tensorrt
    from kdeploy.runs import Run

    if not (onnx or tensorrt):
        onnx = True
    if (fp16 or int8) and not tensorrt:
        raise UserError("--fp16/--int8 pick TensorRT precisions; for ONNX use `kdeploy quantize --fp16` or `--int8`")
    precisions = [p for p, on in (("fp16", fp16), ("int8", int8)) if on] or ["fp16"]
    if tensorrt:  # fail fast, before any ONNX work
        for p in precisions:
            check_args(p, opt_batch, max_batch, workspace_mb, max_accuracy_drop)
        require_tensorrt()
    run = Run.open(run_dir)
    entries: list[dict[str, Any]] = []
    if onnx:
        entries += export_onnx(
            run,
            models,
            opset,
            atol,
            min_agreement,
            parity_batch,
            rtol=rtol,
            parity_samples=parity_samples,
            raise_on_fail=False,
        )
    for p in precisions if tensorrt else []:
        entries += export_tensorrt(
            run,
            p,
            models,
            opt_batch=opt_batch,
            max_batch=max_batch,
            workspace_mb=workspace_mb,
            max_accuracy_drop=max_accuracy_drop,
            raise_on_fail=False,
        )
    print_artifacts(entries, f"{run.root.name}: exported artifacts ({run.export_dir}/manifest.json)")
    if any(e["status"] == "failed" for e in entries):
        raise GateFailed(failures(entries))


@app.command("quantize")
@handle_errors
def quantize_cmd(
    run_dir: RunArg = None,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 with ONNX Runtime")] = False,
    method: Annotated[str, typer.Option("--method", help="INT8: static (QDQ, calibrated) or dynamic")] = "static",
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 ONNX (float32 inputs and outputs kept)")] = False,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="static INT8: training images")] = 512,
    calib_method: Annotated[str, typer.Option("--calib-method", help="minmax, entropy or percentile")] = "minmax",
    per_channel: Annotated[bool, typer.Option("--per-channel", help="per-channel weight scales")] = False,
    models: ExportModelsOpt = None,
    max_accuracy_drop: MaxDropOpt = 0.01,
) -> None:
    """Quantize a run's ONNX exports (run `kdeploy export --onnx` first); each artifact is gated on accuracy."""
    from kdeploy.export.onnx import failures
    from kdeploy.quantize import quantize
    from kdeploy.runs import Run

    if not (int8 or fp16):
        raise UserError("nothing to do: pass --int8 and/or --fp16")
    run = Run.open(run_dir)
    entries = quantize(
        run,
        int8=int8,
        method=method,
        fp16=fp16,
        calib_samples=calib_samples,
        calib_method=calib_method,
        per_channel=per_channel,
        models=models,
        max_accuracy_drop=max_accuracy_drop,
        raise_on_fail=False,
    )
    print_artifacts(entries, f"{run.root.name}: quantized artifacts ({run.export_dir}/manifest.json)")
    for e in entries:
        if e["status"] == "skipped":
            out.print(f"skipped {e['id']}: {e['reason']}", highlight=False, soft_wrap=True)
    if any(e["status"] == "failed" for e in entries):
        raise GateFailed(failures(entries))


@app.command("qat")
@handle_errors
def qat_cmd(run_dir: RunArg = None, max_accuracy_drop: MaxDropOpt = 0.01) -> None:
    """Quantization-aware distillation of the run's student -> export/student.qat.int8.onnx (recipe `qat:`)."""
    from kdeploy.qat import qat
    from kdeploy.runs import Run

    run = Run.open(run_dir)
    entry = qat(run, max_accuracy_drop=max_accuracy_drop, raise_on_fail=False)
    print_artifacts([entry], f"{run.root.name}: quantization-aware distilled student ({run.export_dir}/manifest.json)")
    if entry["status"] == "failed":
        raise GateFailed(f"{entry['id']}: {entry['reason']}")


if __name__ == "__main__":  # pragma: no cover
    app()
