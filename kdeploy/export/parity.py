"""The parity gate: PyTorch versus ONNX Runtime on real test batches at batch size 1 and a larger one.

Numbers recorded for every artifact:

- ``max_abs_diff``: max over all checked logits of ``|ort - torch|``;
- ``max_rel_diff``: max of ``|ort - torch| / |torch|`` over logits with ``|torch| >= 1e-6`` (elementwise,
  numpy's ``assert_allclose`` definition; large near-zero logits make it noisy, so it is reported, not gated);
- ``top1_agreement``: fraction of samples whose argmax is the same in both.

The gate passes when every logit satisfies ``|ort - torch| <= atol + rtol * |torch|`` and the top-1 agreement is
at least ``min_agreement`` (defaults: atol 1e-4, rtol 0, 100 % agreement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from kdeploy.data import Split, iterate_batches
from kdeploy.export.ort import run_batch

REL_FLOOR = 1e-6


@dataclass
class Diff:
    """Running comparison of reference (torch) and candidate (ORT) logits."""

    samples: int = 0
    agree: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    violations: int = 0  # logits outside atol + rtol * |ref|

    def add(self, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"output shapes differ: torch {ref.shape} vs onnx {got.shape}")
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(got64 - ref64)
        finite = np.isfinite(diff)
        self.samples += ref.shape[0]
        self.agree += int((ref.argmax(1) == got.argmax(1)).sum())
        if diff.size:
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()) if finite.all() else float("inf"))
            mag = np.abs(ref64)
            big = mag >= REL_FLOOR
            if big.any():
                self.max_rel_diff = max(self.max_rel_diff, float((diff[big] / mag[big]).max()))
        self.violations += int((~finite | (diff > atol + rtol * np.abs(ref64))).sum())

    @property
    def agreement(self) -> float:
        return self.agree / self.samples if self.samples else float("nan")


@dataclass
class ParityResult:
    batch_sizes: list[int]
    samples: dict[str, int]  # per batch size: how many test samples were compared
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    violations: int
    atol: float
    rtol: float
    min_agreement: float
    passed: bool
    per_batch: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"max abs diff {self.max_abs_diff:.3g} (atol {self.atol:g}), max rel diff {self.max_rel_diff:.3g}, "
            f"top-1 agreement {self.top1_agreement:.4%} (min {self.min_agreement:.2%})"
        )


@torch.inference_mode()
def check_parity(
    model: nn.Module,
    session: ort.InferenceSession,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 256,
    samples: int = 1024,
    single_samples: int = 32,
    atol: float = 1e-4,
    rtol: float = 0.0,
    min_agreement: float = 1.0,
) -> ParityResult:
    """Compare on the first ``single_samples`` test images one at a time (batch 1), then on the first
    ``samples`` images in batches of ``batch_size`` (the last batch may be shorter: a third batch size)."""
    model.eval()
    total = Diff()
    per_batch: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    plan = [(1, min(single_samples, len(split))), (batch_size, min(samples, len(split)))]
    for bs, n in plan:
        part = Diff()
        for x, _, _ in iterate_batches(split.head(n), bs, shuffle=False, mean=mean, std=std):
            ref = model(x).float().numpy()
            got = run_batch(session, x.numpy())
            part.add(ref, got, atol, rtol)
            total.add(ref, got, atol, rtol)
        counts[str(bs)] = part.samples
        per_batch[str(bs)] = {
            "max_abs_diff": part.max_abs_diff,
            "max_rel_diff": part.max_rel_diff,
            "top1_agreement": part.agreement,
        }
    passed = total.samples > 0 and total.violations == 0 and total.agreement >= min_agreement
    return ParityResult(
        batch_sizes=[bs for bs, _ in plan],
        samples=counts,
        max_abs_diff=total.max_abs_diff,
        max_rel_diff=total.max_rel_diff,
        top1_agreement=total.agreement,
        violations=total.violations,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
        passed=passed,
        per_batch=per_batch,
    )


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float | int]:
    """Informational comparison of a quantized artifact's logits with its fp32 source's (whole test set)."""
    d = Diff()
    d.add(ref, got, atol=float("inf"), rtol=0.0)
    return {"max_abs_diff": d.max_abs_diff, "top1_agreement": d.agreement, "samples": d.samples}
