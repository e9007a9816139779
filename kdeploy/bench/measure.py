"""Static measurements of a model or artifact: parameters, MACs/FLOPs, size on disk and in memory.

Counting convention: one multiply-accumulate (MAC) is one fused multiply-add. fvcore's
``FlopCountAnalysis`` reports MACs (it calls them "flops"); ``torch.utils.flop_counter`` counts two
FLOPs per MAC. We report ``macs`` from fvcore, ``flops = 2 * macs``, and cross-check against torch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdeploy import progress
from kdeploy.models import count_params

__all__ = ["MacCount", "count_macs", "count_params", "disk_bytes", "memory_bytes"]

MB = 1_000_000
DISAGREE = 0.03  # warn when fvcore and torch's counter differ by more than this fraction


@dataclass(frozen=True)
class MacCount:
    """Per-sample (batch 1) compute of a model."""

    macs: int  # fvcore: fused multiply-adds, incl. norms and pooling
    torch_macs: int  # torch.utils.flop_counter FLOPs / 2 (matmuls and convolutions only)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def disagreement(self) -> float:
        """Relative difference between the two counters (0 when both are 0)."""
        top = max(self.macs, self.torch_macs)
        return abs(self.macs - self.torch_macs) / top if top else 0.0


def memory_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (the in-memory size of the weights)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def fvcore_macs(model: nn.Module, example: torch.Tensor) -> int:
    fv_logger = logging.getLogger("fvcore")
    level = fv_logger.level
    fv_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, example)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        fv_logger.setLevel(level)


def torch_counter_macs(model: nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    return int(counter.get_total_flops()) // 2


@torch.inference_mode(False)
def count_macs(model: nn.Module, in_shape: Iterable[int], name: str = "model") -> MacCount:
    """MACs for one sample of shape ``in_shape`` (C, H, W); warns when the two counters disagree."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(1, *in_shape, device=device)
    try:
        with torch.no_grad():
            count = MacCount(fvcore_macs(model, example), torch_counter_macs(model, example))
    finally:
        model.train(was_training)
    if count.disagreement > DISAGREE:
        progress.log(
            f"warning: {name}: fvcore counts {count.macs:,} MACs but torch.utils.flop_counter "
            f"{count.torch_macs:,} ({count.disagreement:.1%} apart; fvcore also counts norms and pooling)"
        )
    return count


def onnx_external_files(path: Path) -> list[Path]:
    """Files holding an ONNX model's external tensor data (none for a self-contained model)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX protobuf (e.g. a TensorRT engine): nothing external to add
        return []
    found: list[Path] = []
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                extra = path.parent / entry.value
                if extra not in found:
                    found.append(extra)
    return found


def artifact_files(files: Iterable[Path]) -> list[Path]:
    """The listed files plus any ONNX external-data files they reference, without repeats."""
    out: list[Path] = []
    for f in files:
        for p in [f, *(onnx_external_files(f) if f.suffix == ".onnx" else [])]:
            if p not in out:
                out.append(p)
    return out


def disk_bytes(files: Iterable[Path]) -> int:
    """Total size on disk of an artifact: every file, ONNX external data included."""
    return sum(p.stat().st_size for p in artifact_files(files) if p.is_file())
