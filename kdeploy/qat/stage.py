"""`kdeploy qat [RUN]`: quantization-aware distillation of the run's float student into an INT8 QDQ ONNX file.

1. The float student and the teacher are rebuilt from the run's weights (model registry, never the trainer).
2. BatchNorm is folded, INT8 fake quantization inserted (``fakequant``: symmetric int8, weights per channel by
   default, activations per tensor) and calibrated with min-max on ``qat.calib_samples`` training images.
3. The student is fine-tuned against the frozen teacher with the recipe's own loss where it is ``dist`` or
   ``mse`` (``QAD_METHODS``; ``qat.temperature`` in place of its temperature), else logits KD (``kd``; temperature
   and alpha from ``qat:`` or else ``distill:``): Adam, cosine schedule, ``qat.epochs`` epochs.
4. The fine-tuned float model is exported to ONNX and quantized by the same ORT static QDQ path as PTQ INT8,
   with the simulated settings (per-channel weights, ``reduce_range``, min-max calibration on the same images), so
   the file has PTQ INT8's graph and kernels; it is written as ``export/student.qat.int8.onnx`` (format
   ``onnx-int8-qat``), its full test-set accuracy measured through ONNX Runtime and gated against the float
   student's ONNX accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from kdeploy import progress
from kdeploy.artifacts import Artifact, describe, finish_stage, manifest, source_artifact
from kdeploy.data import iterate_batches
from kdeploy.distill.methods import Outputs, create_method
from kdeploy.errors import UserError
from kdeploy.export.onnx import export_graph
from kdeploy.export.qdq_target import DEFAULT_TARGET, check_target, per_channel_for
from kdeploy.export.staging import staging_dir
from kdeploy.qat.fakequant import (
    QuantModel,
    calibrate,
    fold_batchnorm,
    insert_fake_quant,
    outputs_matter,
    strip_fake_quant,
)
from kdeploy.quantize import (
    FLOAT_GELU,
    Calibration,
    QuantOptions,
    auto_reduce_range,
    calibration_split,
    fp32_test_logits,
    quantize_one,
)
from kdeploy.recipe import QAD_METHODS, QatConfig, Recipe, load_data
from kdeploy.rundata import run_recipe
from kdeploy.runs import Run, WeightsMeta

FORMAT = "onnx-int8-qat"
ROLE = "student"
# Points by which the INT8 file may trail the simulation before the log says why: the tensors ONNX Runtime's QDQ
# file quantizes and the simulation keeps float (without qat.quantize_outputs: every Conv, BatchNorm and GELU op
# output) add error the fine-tuning never saw.
SIMULATION_GAP_POINTS = 0.5


def kd_method(recipe: Recipe, cfg: QatConfig) -> torch.nn.Module:
    """The registered ``kd`` loss with ``qat:``'s temperature/alpha, else ``distill:``'s (alpha only from a KD
    recipe: other methods' ``alpha`` means something else), else KD's defaults."""
    distill = recipe.distill.params()
    temperature = cfg.temperature if cfg.temperature is not None else distill.get("temperature")
    alpha = cfg.alpha if cfg.alpha is not None else distill.get("alpha") if recipe.distill.method == "kd" else None
    params = {k: v for k, v in (("temperature", temperature), ("alpha", alpha)) if v is not None}
    return create_method("kd", params)


def qad_method_name(recipe: Recipe) -> str:
    """The registered loss QAD fine-tunes with: ``distill.method`` when it is one of ``QAD_METHODS``, else ``kd``."""
    return recipe.distill.method if recipe.distill.method in QAD_METHODS else "kd"


def qad_method(recipe: Recipe, cfg: QatConfig) -> torch.nn.Module:
    """QAD's loss: the recipe's ``dist`` or ``mse`` with its own weights (a student distilled with DIST is pulled
    back toward logits KD's solution by KD fine-tuning: benchmarks/README.md, "`fashion_mnist_cnn_qat` with DIST"),
    else :func:`kd_method`."""
    method = qad_method_name(recipe)
    if method == "kd":
        return kd_method(recipe, cfg)
    params = recipe.distill.params()
    if cfg.temperature is not None and "temperature" in params:
        params["temperature"] = cfg.temperature
    return create_method(method, params)


def _require_models(run: Run) -> None:
    roles = run.roles()
    if ROLE not in roles:
        raise UserError(f"{run.root}: no float student (student.safetensors) to fine-tune; run `kdeploy distill` first")
    if "teacher" not in roles:
        raise UserError(f"{run.root}: no teacher.safetensors; quantization-aware distillation needs the teacher")


def fine_tune(qmodel: QuantModel, teacher: torch.nn.Module, loss: torch.nn.Module, data: Any, cfg: QatConfig,
              batch_size: int, seed: int) -> list[dict[str, float]]:  # fmt: skip
    """KD fine-tuning with frozen activation ranges; returns per-epoch mean losses."""
    params = [p for p in qmodel.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(data.train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    teacher.eval()
    history = []
    for epoch in range(cfg.epochs):
        qmodel.train()
        totals: dict[str, float] = {}
        seen = 0
        with progress.task(f"qat epoch {epoch + 1}/{cfg.epochs}", total=math.ceil(len(data.train) / batch_size)) as bar:
            for x, y, _ in iterate_batches(data.train, batch_size, shuffle=True, generator=generator,
                                           mean=data.mean, std=data.std):  # fmt: skip
                with torch.no_grad():
                    teacher_logits = teacher(x)
                terms = loss(Outputs(student_logits=qmodel(x), targets=y, teacher_logits=teacher_logits))
                total = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                for k, v in terms.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) * len(y)
                seen += len(y)
                bar.update(1)
        row = {f"loss_{k}": v / max(seen, 1) for k, v in totals.items()}
        progress.log(f"qat epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
        history.append(row)
    return history


@torch.no_grad()
def torch_accuracy(model: torch.nn.Module, data: Any) -> float:
    model.eval()
    correct = 0
    for x, y, _ in iterate_batches(data.test, 1000, shuffle=False, mean=data.mean, std=data.std):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(data.test), 1)


def qat(
    run: Run | str | None = None,
    *,
    target: str = DEFAULT_TARGET,
    max_accuracy_drop: float = 0.01,
    raise_on_fail: bool = True,
) -> Artifact:
    """Run quantization-aware distillation on ``run``; returns the ``onnx-int8-qat`` artifact (also in the manifest).

    ``target`` is the INT8 file's form, as for ``kdeploy quantize --target``: ``onnxruntime``, or ``tensorrt``
    (float biases, no Q/DQ on the output, per-channel weights on 8 bits unless ``qat.reduce_range`` is set; checked
    by the TensorRT Q/DQ checker). Like every artifact stage it ends in :func:`~kdeploy.artifacts.finish_stage`:
    with ``raise_on_fail`` a missed accuracy gate raises :class:`~kdeploy.errors.GateFailed`."""
    check_target(target)
    run = run if isinstance(run, Run) else Run.open(run)
    _require_models(run)
    recipe = run_recipe(run)
    cfg = recipe.qat or QatConfig()
    # the settings say which: 7-bit weights where ORT's kernels saturate; per-channel weights for TensorRT
    cfg = cfg.model_copy(update={"reduce_range": auto_reduce_range(cfg.reduce_range, target),
                                 "per_channel": per_channel_for(target, cfg.per_channel),
                                 "float_gelu": FLOAT_GELU if cfg.float_gelu is None else cfg.float_gelu})  # fmt: skip
    # the float student's gated ONNX: accuracy reference and I/O spec
    source = source_artifact(run, ROLE, "onnx", "quantization-aware distillation")
    loss = qad_method(recipe, cfg)
    data = load_data(recipe)
    torch.manual_seed(recipe.seed)
    t0 = time.perf_counter()
    options = QuantOptions("minmax", cfg.per_channel, target, bool(cfg.reduce_range), bool(cfg.float_gelu))
    tuned, meta, calib, report = _fine_tune_quantized(run, recipe, cfg, loss, data, options.float_gelu)
    art = _export_and_quantize(run, tuned, meta, source, data, calib, options, max_accuracy_drop)
    art.settings["qat"] = {
        **cfg.model_dump(),
        "loss": {"method": qad_method_name(recipe), **loss.params.model_dump()},
        **report,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    art = manifest.upsert(run, art)
    progress.log("  " + describe(art))
    warn_if_unlike_simulation(art.accuracy, report["simulated_accuracy_after"], report["quantize_outputs"])
    return finish_stage([art], raise_on_fail)[0]


def warn_if_unlike_simulation(accuracy: float | None, simulated: float, outputs: bool) -> None:
    """One line when ONNX Runtime's INT8 file scores well below the simulation QAD fine-tuned, with what to try."""
    gap = (simulated - accuracy) * 100 if accuracy is not None else 0.0
    if gap <= SIMULATION_GAP_POINTS:
        return
    advice = (
        "ONNX Runtime quantizes ops the simulation does not model; compare the PTQ file (`kdeploy quantize --int8`)"
        if outputs
        else "ONNX Runtime also quantizes the op outputs the simulation kept float; set qat.quantize_outputs: true"
    )
    progress.log(f"  warning: the INT8 file scores {gap:.2f} points below the simulation ({accuracy:.4f} < "
                 f"{simulated:.4f}): {advice}")  # fmt: skip


def _fine_tune_quantized(
    run: Run, recipe: Recipe, cfg: QatConfig, loss: torch.nn.Module, data: Any, float_gelu: bool
) -> tuple[torch.nn.Module, WeightsMeta, Calibration, dict[str, Any]]:
    """The student with BatchNorm folded and fake-quant inserted, calibrated, fine-tuned against the teacher and
    stripped back to a float model; also its calibration split and what happened, for the artifact's settings.
    ``float_gelu``: the INT8 file keeps GELU in float (``QuantOptions``), so the simulation quantizes its output
    only."""
    student, meta = run.load_model(ROLE)
    teacher, _ = run.load_model("teacher")
    folded, note = fold_batchnorm(student)
    outputs = outputs_matter(folded) if cfg.quantize_outputs is None else cfg.quantize_outputs
    qmodel = insert_fake_quant(folded, cfg.per_channel, bool(cfg.reduce_range), outputs, float_gelu)
    calib = calibration_split(data.train, cfg.calib_samples, recipe.seed)
    calib_batches = [x for x, _, _ in iterate_batches(calib.split, 64, shuffle=False, mean=data.mean, std=data.std)]
    calibrate(qmodel, calib_batches)
    before = torch_accuracy(qmodel, data)
    progress.log(f"qat: {qmodel.layers} quantized layers, simulated INT8 accuracy before fine-tuning {before:.4f}")
    history = fine_tune(qmodel, teacher, loss, data, cfg, recipe.batch_size_for(cfg), recipe.seed)
    calibrate(qmodel, calib_batches)  # the ranges ORT will compute from the fine-tuned weights
    after = torch_accuracy(qmodel, data)
    progress.log(f"qat: simulated INT8 accuracy after fine-tuning {after:.4f}")
    report = {
        "batchnorm_folded": note is None,
        "quantize_outputs": outputs,
        "note": note,
        "quantized_layers": qmodel.layers,
        "simulated_accuracy_before": before,
        "simulated_accuracy_after": after,
        "history": history,
    }
    return strip_fake_quant(qmodel).eval(), meta, calib, report


def _export_and_quantize(run: Run, tuned: torch.nn.Module, meta: WeightsMeta, source: Artifact, data: Any,
                         calib: Calibration, options: QuantOptions, max_accuracy_drop: float) -> Artifact:  # fmt: skip
    """Export the fine-tuned float student to a staged ONNX file and quantize it by quantize's static INT8 path."""
    fp32_logits = fp32_test_logits(run, source, data)
    with staging_dir(run.export_dir) as tmp:
        folder = tmp / "qat-fp32"
        folder.mkdir()
        tuned_path = folder / "student.qat.fp32.onnx"
        export_graph(tuned, list(meta.in_shape), tuned_path, source.opset or 18)
        tuned_source = dataclasses.replace(source, files=[str(tuned_path.relative_to(run.export_dir))], sha256=None)
        art = quantize_one(run, ROLE, FORMAT, tuned_source, data, fp32_logits, options, calib, max_accuracy_drop)
    art.source, art.source_sha256 = source.files[0], source.sha256  # built from the float student's gated ONNX
    art.vs_fp32 = dataclasses.replace(art.vs_fp32, reference=source.files[0]) if art.vs_fp32 else None
    return art
