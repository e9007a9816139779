"""Quantization-aware distillation: INT8 fake quantization + KD fine-tuning -> ``export/student.qat.int8.onnx``.

``fakequant`` simulates ORT's symmetric INT8 QDQ arithmetic in PyTorch; ``stage`` is `kdeploy qat`. Never imports
the trainer: the models come from the run's weights, the loss from ``kdeploy.distill.methods``.
"""

from kdeploy.qat.stage import FORMAT, qat

__all__ = ["FORMAT", "qat"]
