"""INT8 calibration images: a seeded subset of the training split, fed to ORT as a ``CalibrationDataReader``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdeploy.data import Split, iterate_batches
from kdeploy.errors import UserError

CALIB_BATCH = 64


@dataclass(frozen=True)
class Calibration:
    """The training images static INT8 is calibrated on, and the seed that chose them (both go in the manifest)."""

    split: Split
    seed: int

    def settings(self) -> dict[str, Any]:
        return {"calib_samples": len(self.split), "calib_split": "train", "calib_seed": self.seed}


def calibration_split(train: Split, samples: int, seed: int) -> Calibration:
    """A seeded random subset of the training split (never the test set)."""
    if len(train) == 0:
        raise UserError("the run's training split is empty; INT8 calibration needs training images")
    n = min(samples, len(train))
    order = np.random.default_rng(seed).permutation(len(train))[:n]
    return Calibration(train.subset(torch.as_tensor(np.sort(order), dtype=torch.int64)), seed)


def make_reader(split: Split, mean: Any, std: Any, name: str, batch_size: int = CALIB_BATCH) -> Any:
    """A ``CalibrationDataReader`` yielding normalised float32 batches of ``split``."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [
                x.numpy() for x, _, _ in iterate_batches(split, batch_size, shuffle=False, mean=mean, std=std)
            ]
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(self.batches):
                return None
            self.pos += 1
            return {name: self.batches[self.pos - 1]}

        def rewind(self) -> None:
            self.pos = 0

    return _Reader()


# ONNX Runtime's entropy (KL) calibrator searches thresholds between ``num_quantized_bins`` and ``num_bins`` wide
# windows of the activation histogram. ``quantize_static`` cannot pass either (it builds the calibrator with 128 and
# 128), which leaves one window, the whole range: its "entropy" is min-max. kdeploy runs the calibrator itself with
# a 2048-bin histogram searched for the 255-level window of symmetric int8 (TensorRT's KL search has the same
# resolution: 2048 bins of |x|, 128 positive levels), then hands the ranges to ``quantize_static`` as overrides.
ENTROPY_BINS = 2048
ENTROPY_LEVELS = 255


def entropy_overrides(model: Path, reader: Any, tmp: Path) -> dict[str, list[dict[str, np.float32]]]:
    """KL-divergence activation ranges of ``model`` on what ``reader`` yields, as ``quantize_static``'s
    ``TensorQuantOverrides`` (``rmin`` / ``rmax`` per tensor); the reader is rewound afterwards."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    options = {"symmetric": True, "num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_LEVELS}
    calibrator = create_calibrator(
        model, None, tmp / "entropy_augmented.onnx", CalibrationMethod.Entropy, extra_options=options
    )
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    reader.rewind()
    overrides: dict[str, list[dict[str, np.float32]]] = {}
    for name in ranges:  # ORT computes scales from numpy scalars of the tensor's float type
        lo, hi = ranges[name].range_value
        overrides[name] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
    return overrides
