"""Export: PyTorch -> ONNX (parity gate), ONNX -> TensorRT engines, and the artifact manifest.

``export_onnx`` and ``export_tensorrt`` write into ``<run>/export/`` and return manifest entries;
``read_manifest``, ``upsert`` and ``artifact_path`` are the manifest API the quantize and bench stages use;
``onnx_accuracy`` and ``open_session`` (``kdeploy.export.ort``) run artifacts with ONNX Runtime.
"""

from kdeploy.export.manifest import artifact_path, read_manifest, upsert, usable
from kdeploy.export.onnx import export_onnx
from kdeploy.export.ort import onnx_accuracy, open_session
from kdeploy.export.tensorrt import export_tensorrt

__all__ = [
    "artifact_path",
    "export_onnx",
    "export_tensorrt",
    "onnx_accuracy",
    "open_session",
    "read_manifest",
    "upsert",
    "usable",
]
