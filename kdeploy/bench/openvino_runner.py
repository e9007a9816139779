"""OpenVINO as a bench runtime: the run's ONNX files (fp32, INT8 QDQ, FP16) compiled for the CPU plugin.

``pip install 'kdeploy[openvino]'``, then ``kdeploy bench --runtimes torch,onnxruntime,openvino``. Each model
is compiled once with the ``LATENCY`` performance hint, one stream and ``--threads`` inference threads; every
row records the hint and the precision OpenVINO actually ran at (the compiled model's
``INFERENCE_PRECISION_HINT``). On CPUs with bf16 support (AMX, AVX512-BF16) the CPU plugin runs fp32 models in
bf16 by default, so their accuracy and latency are bf16's; ``--openvino-precision f32`` forces f32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.bench.latency import Latency, TimingSettings, time_host
from kdeploy.bench.runners import Unavailable
from kdeploy.errors import UserError

INSTALL = "pip install 'kdeploy[openvino]'"
PRECISIONS = ("auto", "f32", "bf16", "f16")  # auto: the CPU plugin's default for this machine
LATENCY_HINT = "LATENCY"


def import_openvino() -> Any:
    """``import openvino``, or a one-line :class:`UserError` naming the extra."""
    try:
        import openvino
    except ImportError:
        raise UserError(f"--runtimes openvino needs OpenVINO; install it with: {INSTALL}") from None
    return openvino


def check_openvino(runtimes: tuple[str, ...], precision: str) -> None:
    """Validate the OpenVINO settings of a bench before anything is measured."""
    if precision not in PRECISIONS:
        raise UserError(f"--openvino-precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if "openvino" in runtimes:
        import_openvino()


def precision_note(precision: str, forced: bool) -> str:
    """Why a row ran at ``precision``: forced by the user, or the plugin's default on this CPU."""
    if forced:
        return f"{precision} (forced with --openvino-precision)"
    if precision == "bf16":
        return "bf16 (OpenVINO's default for fp32 models on CPUs with bf16 support, e.g. AMX; --openvino-precision f32)"
    return f"{precision} (OpenVINO's default on this CPU)"


class OpenVINORunner:
    """One ONNX file compiled by OpenVINO's CPU plugin; ``time`` binds the input tensor once and times ``infer``."""

    runtime = "openvino"
    device = "cpu"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "auto") -> None:
        ov = import_openvino()
        self.path, self.precision = path, precision
        config: dict[str, Any] = {"PERFORMANCE_HINT": LATENCY_HINT, "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except RuntimeError as error:  # an op or type the CPU plugin does not support
            reason = str(error).strip().splitlines()
            raise Unavailable(f"OpenVINO cannot compile {path.name}: {reason[-1] if reason else error}") from None
        self.request = self.compiled.create_infer_request()
        self.version = ov.get_version()
        self.dtype = self.compiled.input(0).get_element_type().to_dtype()
        shape = self.compiled.input(0).get_partial_shape()
        self._max_batch = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else None

    def inference_precision(self) -> str:
        """The precision the CPU plugin chose (``f32``, ``bf16``, ``f16``), read back from the compiled model."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def info(self) -> dict[str, Any]:
        used = self.inference_precision()
        return {
            "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "openvino": self.version,
            "latency_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
            "streams": int(self.compiled.get_property("NUM_STREAMS")),
            "inference_precision": used,
            "inference_precision_note": precision_note(used, self.precision != "auto"),
            "input_dtype": np.dtype(self.dtype).name,
        }

    def max_batch(self) -> int | None:
        return self._max_batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, dtype=self.dtype)})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)

    def time(self, x: np.ndarray, settings: TimingSettings) -> Latency:
        import openvino as ov

        x = np.ascontiguousarray(x, dtype=self.dtype)
        self.request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        return time_host(self.request.infer, settings)

    def close(self) -> None:
        del self.request, self.compiled
