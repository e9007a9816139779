"""INT8 fake quantization that simulates what ONNX Runtime's static QDQ quantizer later does to the same model.

kdeploy's PTQ (``kdeploy.quantize``) quantizes with symmetric int8 everywhere: scale = absmax / 127, zero point 0,
range [-127, 127]; activations per tensor from min-max calibration, weights per tensor or per output channel from
the weights themselves, after BatchNorm is folded into the convolutions (weights on [-64, 64] with ``reduce_range``,
as ORT writes them for x86 CPUs without VNNI, whose u8s8 kernels saturate on full-range int8 weights). Here the same
arithmetic runs in PyTorch (``torch.fake_quantize_per_*_affine``, straight-through gradients) so that fine-tuning
adapts the weights to it:

- ``fold_batchnorm``: Conv+BN folded (``torch.fx``), as the ONNX export and ORT's pre-processing do;
- ``ActQuant``: per-tensor activation quantizer, min-max calibrated, then frozen;
- ``QuantConv2d`` / ``QuantLinear``: quantize their input (``ActQuant``) and their weight (per channel or per tensor);
- ``insert_fake_quant``: wraps every Conv2d/Linear and appends an output quantizer (ORT quantizes the logits too).
  With ``quantize_outputs`` it also quantizes what else ORT's QDQ file quantizes: the output of every Conv2d,
  Linear, BatchNorm and Flatten (``OutputQuant``), and GELU as ONNX opset 18 writes it, ``x * (0.5 * (1 +
  erf(x / sqrt 2)))`` with the Erf, Add and both Mul outputs quantized (``QuantGELU``), or, with ``float_gelu``
  (as ``QuantOptions.float_gelu`` writes the file), only GELU's output. Max-pooling is left alone: ORT's MaxPool
  keeps its input's scale, so its output is already on that grid.

``strip_fake_quant`` returns the plain float model (same parameters) for the ONNX export.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

QMAX = 127  # symmetric int8 as ORT uses it: [-127, 127], zero point 0
QMAX_REDUCED = 64  # ORT's reduce_range weights: [-64, 64] (7 bits), for x86 CPUs without VNNI


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, str | None]:
    """Conv+BatchNorm folded into Conv (eval statistics); returns ``(model, note)``, note set when tracing failed."""
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        return fuse(model, inplace=False), None
    except Exception as exc:  # a forward torch.fx cannot trace: keep BatchNorm (weights simulated before folding)
        return model, f"BatchNorm not folded (torch.fx cannot trace the model: {type(exc).__name__})"


def _scale(absmax: Tensor, qmax: int = QMAX) -> Tensor:
    return (absmax / qmax).clamp_min(torch.finfo(torch.float32).tiny).float()


class ActQuant(nn.Module):
    """Per-tensor symmetric int8 fake quantization; records the running absmax while ``calibrating``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("absmax", torch.zeros(()))
        self.calibrating = False

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.absmax = torch.maximum(self.absmax, x.detach().abs().max().float())
            return x
        if float(self.absmax) == 0.0:
            return x  # never calibrated (a layer calibration did not reach): leave it float
        return torch.fake_quantize_per_tensor_affine(x, float(_scale(self.absmax)), 0, -QMAX, QMAX)


def quantize_weight(weight: Tensor, per_channel: bool, qmax: int = QMAX) -> Tensor:
    """Fake-quantized weight on [-qmax, qmax]; scales from the current weight (ORT computes them the same way)."""
    if per_channel:
        absmax = weight.detach().abs().flatten(1).amax(dim=1)
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, _scale(absmax, qmax), zero, 0, -qmax, qmax)
    scale = float(_scale(weight.detach().abs().max(), qmax))
    return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -qmax, qmax)


class QuantConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, per_channel: bool, qmax: int = QMAX, outputs: bool = False) -> None:
        super().__init__()
        self.conv, self.per_channel, self.qmax, self.act = conv, per_channel, qmax, ActQuant()
        self.out = ActQuant() if outputs else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        weight = quantize_weight(self.conv.weight, self.per_channel, self.qmax)
        return self.out(self.conv._conv_forward(self.act(x), weight, self.conv.bias))


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, per_channel: bool, qmax: int = QMAX, outputs: bool = False) -> None:
        super().__init__()
        self.linear, self.per_channel, self.qmax, self.act = linear, per_channel, qmax, ActQuant()
        self.out = ActQuant() if outputs else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        weight = quantize_weight(self.linear.weight, self.per_channel, self.qmax)
        return self.out(F.linear(self.act(x), weight, self.linear.bias))


class OutputQuant(nn.Module):
    """A layer followed by a per-tensor quantizer on its output (BatchNorm and Flatten under ``quantize_outputs``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer, self.act = layer, ActQuant()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.layer(x))


class QuantGELU(nn.Module):
    """Exact GELU as the ONNX export writes it at opset 18, each tensor ORT's QDQ file quantizes quantized."""

    def __init__(self, gelu: nn.GELU) -> None:
        super().__init__()
        self.gelu = gelu  # what strip_fake_quant puts back
        self.erf, self.add, self.mul_half, self.out = ActQuant(), ActQuant(), ActQuant(), ActQuant()

    def forward(self, x: Tensor) -> Tensor:
        half = self.mul_half(0.5 * self.add(self.erf(torch.erf(x / math.sqrt(2))) + 1))
        return self.out(x * half)


class QuantModel(nn.Module):
    """A float model whose Conv2d/Linear layers (and with ``outputs`` its BatchNorm, Flatten and GELU layers) are
    wrapped in place, plus a quantizer on the logits."""

    def __init__(
        self,
        model: nn.Module,
        per_channel: bool,
        reduce_range: bool = False,
        outputs: bool = False,
        float_gelu: bool = False,
    ) -> None:
        super().__init__()
        self.model = _wrap(model, per_channel, QMAX_REDUCED if reduce_range else QMAX, outputs, float_gelu)
        self.out = ActQuant()
        self.layers = sum(isinstance(m, QuantConv2d | QuantLinear) for m in self.model.modules())

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.model(x))

    def quantizers(self) -> list[ActQuant]:
        return [m for m in self.modules() if isinstance(m, ActQuant)]

    def set_calibrating(self, on: bool) -> None:
        for q in self.quantizers():
            q.calibrating = on


def _wrap(model: nn.Module, per_channel: bool, qmax: int, outputs: bool, float_gelu: bool) -> nn.Module:
    for name, child in list(model.named_children()):
        if type(child) is nn.Conv2d:
            setattr(model, name, QuantConv2d(child, per_channel, qmax, outputs))
        elif type(child) is nn.Linear:
            setattr(model, name, QuantLinear(child, per_channel, qmax, outputs))
        elif outputs and not float_gelu and type(child) is nn.GELU and child.approximate == "none":
            setattr(model, name, QuantGELU(child))
        elif outputs and isinstance(child, nn.BatchNorm2d | nn.Flatten | nn.GELU):
            setattr(model, name, OutputQuant(child))
        else:
            _wrap(child, per_channel, qmax, outputs, float_gelu)
    return model


def strip_fake_quant(qmodel: QuantModel) -> nn.Module:
    """The plain float model again (wrappers replaced by their layers, in place), ready for the ONNX export."""

    def unwrap(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, QuantConv2d):
                setattr(module, name, child.conv)
            elif isinstance(child, QuantLinear):
                setattr(module, name, child.linear)
            elif isinstance(child, OutputQuant):
                setattr(module, name, child.layer)
            elif isinstance(child, QuantGELU):
                setattr(module, name, child.gelu)
            else:
                unwrap(child)

    unwrap(qmodel.model)
    return qmodel.model


def outputs_matter(model: nn.Module) -> bool:
    """Whether ORT's file quantizes tensors between the layers of this (folded) model that the default simulation
    leaves float and that cost accuracy: GELU (five ops in ONNX) or BatchNorm that could not be folded. For Conv/ReLU
    students the default simulation matched ORT's files within 0.03 points (benchmarks/README.md)."""
    return any(isinstance(m, nn.GELU | nn.BatchNorm2d) for m in model.modules())


def insert_fake_quant(
    model: nn.Module,
    per_channel: bool = True,
    reduce_range: bool = False,
    quantize_outputs: bool = False,
    float_gelu: bool = False,
) -> QuantModel:
    """Wrap a (BatchNorm-folded) float model in place; ``reduce_range``: weights on [-64, 64]; ``quantize_outputs``:
    also the layer outputs ORT's QDQ file quantizes, GELU's inner ones unless ``float_gelu`` (module docstring)."""
    return QuantModel(model, per_channel, reduce_range, quantize_outputs, float_gelu)


@torch.no_grad()
def calibrate(qmodel: QuantModel, batches: list[Tensor]) -> None:
    """Min-max ranges of every quantized tensor over ``batches`` (float forward), then frozen."""
    qmodel.eval()
    for q in qmodel.quantizers():
        q.absmax.zero_()
    qmodel.set_calibrating(True)
    try:
        for x in batches:
            qmodel(x)
    finally:
        qmodel.set_calibrating(False)
