"""``export`` and ``quantize``: a run's models to parity-gated ONNX, TensorRT engines, INT8 and FP16 artifacts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kdeploy.cli.main import command, out
from kdeploy.cli.options import CalibMethodOpt, ExportModelsOpt, MaxDropOpt, PerChannelOpt, QdqTargetOpt, RunArg
from kdeploy.cli.tables import print_artifacts
from kdeploy.errors import UserError

if TYPE_CHECKING:
    from kdeploy.artifacts import Artifact


@command("export")
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
    from kdeploy.artifacts import finish_stage
    from kdeploy.export import export_onnx, export_tensorrt
    from kdeploy.export.tensorrt import preflight
    from kdeploy.runs import Run

    if not (onnx or tensorrt):
        onnx = True
    if (fp16 or int8) and not tensorrt:
        raise UserError("--fp16/--int8 pick TensorRT precisions; for ONNX use `kdeploy quantize --fp16` or `--int8`")
    precisions = [p for p, on in (("fp16", fp16), ("int8", int8)) if on] or ["fp16"]
    if tensorrt:  # fail fast, before any ONNX work: arguments, an INT8 graph TensorRT would reject, TensorRT
        preflight(
            run_dir,
            precisions,
            models,
            opt_batch=opt_batch,
            max_batch=max_batch,
            workspace_mb=workspace_mb,
            max_accuracy_drop=max_accuracy_drop,
        )
    run = Run.open(run_dir)
    artifacts: list[Artifact] = []
    if onnx:
        artifacts += export_onnx(
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
        artifacts += export_tensorrt(
            run,
            p,
            models,
            opt_batch=opt_batch,
            max_batch=max_batch,
            workspace_mb=workspace_mb,
            max_accuracy_drop=max_accuracy_drop,
            raise_on_fail=False,
        )
    print_artifacts(artifacts, f"{run.root.name}: exported artifacts ({run.manifest_path})")
    finish_stage(artifacts)


@command("quantize")
def quantize_cmd(
    run_dir: RunArg = None,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 with ONNX Runtime")] = False,
    method: Annotated[str, typer.Option("--method", help="INT8: static (QDQ, calibrated) or dynamic")] = "static",
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 ONNX (float32 inputs and outputs kept)")] = False,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="static INT8: training images")] = 512,
    calib_method: CalibMethodOpt = "minmax",
    per_channel: PerChannelOpt = None,
    reduce_range: Annotated[
        bool | None,
        typer.Option(
            "--reduce-range/--no-reduce-range",
            help="static INT8: 7-bit weights (default: on x86 CPUs without VNNI, whose ORT kernels saturate 8-bit)",
        ),
    ] = None,
    target: QdqTargetOpt = "onnxruntime",
    float_gelu: Annotated[
        bool | None,
        typer.Option(
            "--float-gelu/--int8-gelu",
            help="static INT8: run each GELU (five ONNX ops) in float between the Q/DQ of its input and output, or "
            "quantize its inner tensors too (default)",
        ),
    ] = None,
    float_module: Annotated[
        list[str] | None,
        typer.Option(
            "--float-module",
            help="static INT8: keep the layers of this module path (as in model.named_modules(), e.g. stem.0) in "
            "float; repeat it for more",
        ),
    ] = None,
    models: ExportModelsOpt = None,
    max_accuracy_drop: MaxDropOpt = 0.01,
) -> None:
    """Quantize a run's ONNX exports (run `kdeploy export --onnx` first); each artifact is gated on accuracy."""
    from kdeploy.artifacts import finish_stage
    from kdeploy.quantize import quantize
    from kdeploy.runs import Run

    if not (int8 or fp16):
        raise UserError("nothing to do: pass --int8 and/or --fp16")
    run = Run.open(run_dir)
    artifacts = quantize(
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
        target=target,
        reduce_range=reduce_range,
        float_gelu=float_gelu,
        float_modules=float_module or (),
    )
    print_artifacts(artifacts, f"{run.root.name}: quantized artifacts ({run.manifest_path})")
    for art in artifacts:
        if art.status == "skipped":
            out.print(f"skipped {art.id}: {art.reason}", highlight=False, soft_wrap=True)
    finish_stage(artifacts)


@command("qat")
def qat_cmd(run_dir: RunArg = None, target: QdqTargetOpt = "onnxruntime", max_accuracy_drop: MaxDropOpt = 0.01) -> None:
    """Quantization-aware distillation of the run's student -> export/student.qat.int8.onnx (recipe `qat:`)."""
    from kdeploy.artifacts import finish_stage
    from kdeploy.qat import qat
    from kdeploy.runs import Run

    run = Run.open(run_dir)
    art = qat(run, target=target, max_accuracy_drop=max_accuracy_drop, raise_on_fail=False)
    print_artifacts([art], f"{run.root.name}: quantization-aware distilled student ({run.manifest_path})")
    finish_stage([art])
