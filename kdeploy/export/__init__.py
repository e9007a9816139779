"""Export: PyTorch -> ONNX (parity gate) and ONNX -> TensorRT engines, into ``<run>/export/``.

``export_onnx`` and ``export_tensorrt`` return :class:`~kdeploy.artifacts.Artifact` records (also written to
the manifest, see :mod:`kdeploy.artifacts`); ``onnx_accuracy`` and ``open_session`` (``kdeploy.export.ort``)
run artifacts with ONNX Runtime.
"""

from kdeploy.artifacts import artifact_path, read_manifest
from kdeploy.export.onnx import export_onnx
from kdeploy.export.ort import onnx_accuracy, open_session
from kdeploy.export.tensorrt import export_tensorrt

__all__ = ["artifact_path", "export_onnx", "export_tensorrt", "onnx_accuracy", "open_session", "read_manifest"]
