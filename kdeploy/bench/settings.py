"""What ``kdeploy bench`` measures and how: runtimes, devices, batch sizes, threads, timing (:class:`BenchSettings`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kdeploy.bench.gate import REFERENCE
from kdeploy.bench.latency import TimingSettings
from kdeploy.bench.openvino_runner import check_openvino
from kdeploy.errors import UserError
from kdeploy.export.ort import GRAPH_LEVELS
from kdeploy.runs import ROLES, available_cores

RUNTIMES = ("torch", "onnxruntime", "tensorrt")
OPTIONAL_RUNTIMES = ("openvino",)  # not in the default list: an optional extra
DEVICES = ("cpu", "cuda")
PRECISION = {
    "pytorch": "fp32",
    "onnx": "fp32",
    "onnx-int8": "int8",
    "onnx-int8-qat": "int8",
    "onnx-int8-dynamic": "int8-dynamic",
    "onnx-fp16": "fp16",
    "tensorrt-fp16": "fp16",
    "tensorrt-int8": "int8",
}


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1, 32, 256)
    threads: int | None = None  # None: every core this process may use
    runtimes: tuple[str, ...] = RUNTIMES
    device: str = "cpu"
    models: tuple[str, ...] | None = None  # roles (and their artifacts); None: all
    timing: TimingSettings = field(default_factory=TimingSettings)
    graph_level: str = "all"  # ONNX Runtime graph optimisation level
    cuda_graph: bool = False  # replay PyTorch CUDA graphs (small models: removes launch overhead)
    eval_batch_size: int = 1000
    data_root: str | None = None  # override the recipe's data.root
    openvino_precision: str = "auto"  # OpenVINO INFERENCE_PRECISION_HINT; auto: the CPU plugin's default

    def resolved_threads(self) -> int:
        return self.threads or available_cores()

    def check(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UserError(f"--batch-sizes {list(self.batch_sizes)}: give positive integers, e.g. 1,32,256")
        bad = [r for r in self.runtimes if r not in RUNTIMES + OPTIONAL_RUNTIMES]
        if bad or not self.runtimes:
            known = ", ".join(RUNTIMES + OPTIONAL_RUNTIMES)
            raise UserError(f"--runtimes: unknown {', '.join(bad) or '(none)'}; choose from {known}")
        check_openvino(self.runtimes, self.openvino_precision)
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: choose cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be >= 1")
        if self.graph_level not in GRAPH_LEVELS:
            raise UserError(f"--graph-level {self.graph_level!r}: choose from {', '.join(GRAPH_LEVELS)}")
        unknown = [m for m in self.models or () if m not in ROLES]
        if unknown:
            raise UserError(f"--models {','.join(unknown)}: unknown role; choose from {', '.join(ROLES)}")
        if self.eval_batch_size < 1:
            raise UserError(f"eval batch size {self.eval_batch_size}: must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["threads"] = self.resolved_threads()
        out["timing"] = self.timing.to_dict()
        out["batch_sizes"] = list(self.batch_sizes)
        out["runtimes"] = list(self.runtimes)
        out["models"] = list(self.models) if self.models else None
        out["reference"] = {"model": REFERENCE[0], "format": REFERENCE[1], "runtime": "torch"}
        return out
