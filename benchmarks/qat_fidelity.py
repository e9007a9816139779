"""Does QAD's INT8 simulation predict ONNX Runtime's file? Simulated accuracy against the ORT file's, per run.

For each run folder (copied to a temporary folder first, so the run is left as it was): export the float student to
ONNX if needed, quantize it as `kdeploy qat` does (static QDQ, per-channel 7-bit weights, min-max on the recipe's
``qat.calib_samples`` training images, seeded as QAD draws them) and measure the file's Q/DQ arithmetic (ORT graph
optimisations off) on the test set; then calibrate kdeploy's fake-quant simulation of the same float student on the
same images, once quantizing Conv/Linear inputs and the logits only and once with ``quantize_outputs``, and print the
three accuracies with the number of quantization points in each. No fine-tuning: where the simulation before QAD
misses what the file loses, QAD fine-tunes against the wrong loss.

``--by-op`` also quantizes the file with ORT's quantizer limited to Conv/Gemm/MatMul inputs, then adding their
outputs, then GELU's Mul and Add: which of ORT's extra quantization points cost the accuracy.

Usage::

    KDEPLOY_DATA=../shared/data .venv/bin/python benchmarks/qat_fidelity.py RUN [RUN ...] [--by-op]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnx
from _scratch import scratch_run

from kdeploy.data import iterate_batches
from kdeploy.evaluate import top1_accuracy
from kdeploy.export.ort import make_session, onnx_logits
from kdeploy.qat.fakequant import calibrate, fold_batchnorm, insert_fake_quant
from kdeploy.qat.stage import torch_accuracy
from kdeploy.quantize.calibration import calibration_split, make_reader
from kdeploy.quantize.convert import QuantOptions, convert_static, preprocess
from kdeploy.rundata import load_run_data, run_recipe
from kdeploy.runs import Run

CONV = ["Conv", "Gemm", "MatMul"]
# (label, ORT's op_types_to_quantize, OpTypesToExcludeOutputQuantization)
BY_OP = [
    ("Conv/Gemm inputs", CONV, CONV),
    ("+ their outputs", CONV, []),
    ("+ GELU's Mul", [*CONV, "Mul"], []),
    ("+ GELU's Add", [*CONV, "Mul", "Add"], []),
]


def file_accuracy(path: Path, data: Any) -> float:
    session = make_session(path, threads=1, graph_level="disabled")  # Q/DQ arithmetic, not this CPU's kernels
    return top1_accuracy(onnx_logits(session, data.test, data.mean, data.std), data.test.labels.numpy())


def q_points(path: Path) -> int:
    return [n.op_type for n in onnx.load(str(path)).graph.node].count("QuantizeLinear")


def simulated(run: Run, data: Any, batches: list, outputs: bool) -> tuple[float, int]:
    student, _ = run.load_model("student")
    qmodel = insert_fake_quant(
        fold_batchnorm(student)[0], per_channel=True, reduce_range=True, quantize_outputs=outputs
    )
    calibrate(qmodel, batches)
    return torch_accuracy(qmodel, data), len(qmodel.quantizers())


def by_op(run: Run, calib: Any, data: Any, tmp: Path) -> list[str]:
    """ORT's quantizer limited to some op types (kdeploy's own path takes them all): accuracy per step."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    pre, _ = preprocess(run.export_dir / "student.onnx", tmp / "pre.onnx")
    lines = []
    for i, (label, ops, no_output) in enumerate(BY_OP):
        out = tmp / f"by_op{i}.onnx"
        quantize_static(str(pre), str(out), make_reader(calib.split, data.mean, data.std, "input"),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=ops,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": no_output})  # fmt: skip
        lines.append(f"    ORT, {label}: {file_accuracy(out, data):.4f} ({q_points(out)} points)")
    return lines


def one_run(source: Path, with_ops: bool) -> list[str]:
    with scratch_run(source, ["student"]) as (run, tmp):
        data, recipe = load_run_data(run), run_recipe(run)
        calib = calibration_split(data.train, recipe.qat.calib_samples if recipe.qat else 512, recipe.seed)
        reader = make_reader(calib.split, data.mean, data.std, "input")
        path = tmp / "student.int8.onnx"
        convert_static(
            run.export_dir / "student.onnx", path, tmp, reader, QuantOptions("minmax", True, reduce_range=True)
        )
        batches = [x for x, _, _ in iterate_batches(calib.split, 64, shuffle=False, mean=data.mean, std=data.std)]
        (inputs, n_in), (outputs, n_out) = simulated(run, data, batches, False), simulated(run, data, batches, True)
        lines = [
            f"{source}: float {run.read_metrics().models['student'].accuracy:.4f}; ORT file (per-channel 7-bit, "
            f"Q/DQ arithmetic) {file_accuracy(path, data):.4f} ({q_points(path)} points); simulated: Conv/Linear "
            f"inputs and logits {inputs:.4f} ({n_in} points), quantize_outputs {outputs:.4f} ({n_out} points)"
        ]
        return lines + (by_op(run, calib, data, tmp) if with_ops else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders holding student.safetensors")
    ap.add_argument("--by-op", action="store_true", help="also ORT's file limited to some op types")
    args = ap.parse_args()
    for source in args.runs:
        print("\n".join(one_run(source, args.by_op)), flush=True)


if __name__ == "__main__":
    main()
