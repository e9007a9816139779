"""Option types and parsers that several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kdeploy.errors import UserError

if TYPE_CHECKING:
    from kdeploy.bench import BenchSettings

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file (see `kdeploy recipes`)")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="override a recipe key: --set student.epochs=3 (repeatable)"),
]
DataRootOpt = Annotated[
    str | None,
    typer.Option("--data-root", metavar="DIR", help="dataset folder (else recipe data.root, then $KDEPLOY_DATA)"),
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<recipe name>)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue an interrupted run")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing run folder")]

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

ExportModelsOpt = Annotated[
    str | None, typer.Option("--models", help="comma-separated roles, e.g. student,teacher (default: all)")
]
QdqTargetOpt = Annotated[
    str, typer.Option("--target", help="static INT8 form: onnxruntime, or tensorrt (float bias, no output Q/DQ)")
]
CalibMethodOpt = Annotated[str, typer.Option("--calib-method", help="INT8 ranges: minmax, entropy or percentile")]
PerChannelOpt = Annotated[
    bool | None,
    typer.Option(
        "--per-channel/--per-tensor",
        help="INT8 weight scales: one per output channel, or one per tensor (default: per tensor, then per channel "
        "when that static INT8 file misses its accuracy gate)",
    ),
]
MaxDropOpt = Annotated[
    float, typer.Option("--max-accuracy-drop", help="gate for INT8/FP16/TensorRT: max test-accuracy loss vs fp32 ONNX")
]


def set_args(overrides: list[str] | None) -> list[str]:
    """``--set`` values back as command-line arguments (for a relaunch under torchrun)."""
    return [arg for item in overrides or [] for arg in ("--set", item)]


def csv(value: str | None, what: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple; an option given but empty is the user's error."""
    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    if value is not None and not items:
        raise UserError(f"{what} is empty; pass a comma-separated list")
    return items


def bench_settings(
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
) -> BenchSettings:
    """The bench options of ``bench`` and ``run`` as one typed record."""
    from kdeploy.bench import BenchSettings, TimingSettings

    try:
        sizes = tuple(int(b) for b in csv(batch_sizes, "--batch-sizes"))
    except ValueError:
        raise UserError(f"--batch-sizes {batch_sizes!r}: expected integers like 1,32,256") from None
    return BenchSettings(
        batch_sizes=sizes,
        threads=threads,
        runtimes=csv(runtimes, "--runtimes"),
        device=device,
        models=csv(models, "--models") if models else None,
        timing=TimingSettings(warmup=warmup, min_iters=iters, min_seconds=seconds),
        graph_level=graph_level,
        cuda_graph=cuda_graph,
        data_root=data_root,
    )
