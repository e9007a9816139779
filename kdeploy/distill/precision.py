"""Training precision: check the recipe's ``train.precision`` against the device and resolve ``auto``.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs with
AVX512-BF16 or AMX. Elsewhere PyTorch emulates it and training runs several times slower than fp32, so ``auto``
picks fp32 there and an explicit ``bf16`` logs one warning line.
"""

from __future__ import annotations

from typing import Literal

import torch

from kdeploy import cpu, progress
from kdeploy.errors import UserError

Precision = Literal["fp32", "bf16", "fp16"]


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu.native_bf16()


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision training runs in: ``auto`` is bf16 where it is native (see module doc), else fp32; fp16
    without a GPU and bf16 on a GPU without it are user errors; bf16 on a CPU without native support warns."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise UserError(
            "train.precision: fp16 needs a CUDA GPU (CPUs lack fast fp16 kernels and it needs loss scaling); "
            "use train.precision=auto on CPU"
        )
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision: this GPU has no bf16 support; use train.precision=fp16")
    if requested == "bf16" and device.type == "cpu" and not cpu.native_bf16():
        progress.log(
            "warning: train.precision bf16 on a CPU without AVX512-BF16/AMX is emulated and slower than fp32; "
            "use train.precision=auto (or fp32)"
        )
    return requested  # type: ignore[return-value]
