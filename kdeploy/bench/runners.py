"""Runners: one model or artifact on one runtime and device, able to predict (accuracy) and be timed.

- ``TorchRunner``: PyTorch eager (fp32) on CPU or CUDA; optional CUDA-graph replay.
- ``OrtRunner``: an ONNX file through ONNX Runtime (CPU, or CUDAExecutionProvider with I/O binding).
- ``TensorRTRunner``: a serialized TensorRT 10 engine with device buffers (``execute_async_v3``).

A runner that cannot run here raises ``Unavailable`` with the reason; the bench records it as skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kdeploy.bench.latency import Latency, TimingSettings, time_cuda, time_host


class Unavailable(Exception):
    """This runtime/device combination cannot run here; ``str()`` is the reason."""


class Runner(Protocol):
    runtime: str
    device: str

    def info(self) -> dict[str, Any]: ...

    def max_batch(self) -> int | None: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def time(self, x: np.ndarray, settings: TimingSettings) -> Latency: ...

    def close(self) -> None: ...


def cuda_available() -> bool:
    return torch.cuda.is_available()


# ---- PyTorch ------------------------------------------------------------------------------------
class TorchRunner:
    runtime = "torch"

    def __init__(
        self, model: nn.Module, device: str = "cpu", threads: int | None = None, cuda_graph: bool = False
    ) -> None:
        if device == "cuda" and not cuda_available():
            raise Unavailable("CUDA is not available to PyTorch")
        self.device = device
        self.threads = threads
        self.cuda_graph = cuda_graph and device == "cuda"
        self.model = model.to(device).eval()

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threads": torch.get_num_threads() if self.device == "cpu" else None}
        if self.device == "cuda":
            out["cuda_graph"] = self.cuda_graph
        return out

    def max_batch(self) -> int | None:
        return None

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    @torch.inference_mode()
    def time(self, x: np.ndarray, settings: TimingSettings) -> Latency:
        inp = torch.from_numpy(x).to(self.device)
        if self.device == "cpu":
            return time_host(lambda: self.model(inp), settings)
        step: Callable[[], Any] = lambda: self.model(inp)  # noqa: E731
        stream = torch.cuda.Stream()
        torch.cuda.synchronize()  # the input copy ran on the default stream; the side stream must see it
        if self.cuda_graph:
            step = self._capture(inp, stream)
        return time_cuda(step, settings, stream)

    def _capture(self, inp: torch.Tensor, stream: torch.cuda.Stream) -> Callable[[], Any]:
        """Record one forward pass into a CUDA graph; replaying it skips per-kernel launch overhead."""
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on the side stream before capture, as the docs require
                self.model(inp)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.model(inp)
        return graph.replay

    def close(self) -> None:
        if self.device == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()


# ---- ONNX Runtime -------------------------------------------------------------------------------
_ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def ort_session(path: Path, threads: int | None, device: str = "cpu", graph_level: str = "all") -> Any:
    """The one session factory (:func:`kdeploy.export.ort.make_session`) with the providers for ``device``."""
    import onnxruntime as ort

    from kdeploy.export.ort import CPU, make_session

    providers = CPU
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider", *CPU]
    return make_session(path, threads, providers, graph_level)


class OrtRunner:
    runtime = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, graph_level: str = "all") -> None:
        self.path, self.device, self.threads, self.graph_level = path, device, threads, graph_level
        self.session = ort_session(path, threads, device, graph_level)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise Unavailable("onnxruntime could not create a CUDA session (see CUDA/cuDNN versions)")
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.dtype = _ORT_NUMPY.get(first.type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]
        batch = first.shape[0] if first.shape else None
        self._max_batch = batch if isinstance(batch, int) else None

    def info(self) -> dict[str, Any]:
        opts = self.session.get_session_options()
        return {
            "threads": opts.intra_op_num_threads or None,
            "inter_op_threads": opts.inter_op_num_threads,
            "graph_optimization_level": self.graph_level,
            "providers": self.session.get_providers(),
            "input_dtype": np.dtype(self.dtype).name,
        }

    def max_batch(self) -> int | None:
        return self._max_batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(self.output_names[:1], {self.input_name: x.astype(self.dtype, copy=False)})
        return np.asarray(out[0], dtype=np.float32)

    def time(self, x: np.ndarray, settings: TimingSettings) -> Latency:
        x = np.ascontiguousarray(x.astype(self.dtype, copy=False))
        if self.device == "cpu":
            feed = {self.input_name: x}
            names = self.output_names
            run = self.session.run
            return time_host(lambda: run(names, feed), settings)
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)

        def step() -> None:
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return time_host(step, settings)  # ORT uses its own stream; the host waits for it in step()

    def close(self) -> None:
        del self.session


# ---- TensorRT -----------------------------------------------------------------------------------------
class TensorRTRunner:
    """A serialized TensorRT engine through export's :class:`~kdeploy.export.tensorrt.EngineRunner` (its public
    ``bind``/``launch``/``stream``): timing binds device buffers once for the batch size (which also selects the
    optimization profile tuned for it) and times ``execute_async_v3`` alone between CUDA events on the engine's
    own stream. Not run yet: no machine with TensorRT has executed it."""

    runtime = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path) -> None:
        from kdeploy.errors import UserError
        from kdeploy.export.tensorrt import EngineRunner, missing_requirements

        missing = missing_requirements()
        if missing:
            raise Unavailable("TensorRT needs " + " and ".join(missing))
        import tensorrt as trt

        self.trt = trt
        try:
            self.engine = EngineRunner(trt, path.read_bytes())
        except UserError as exc:
            raise Unavailable(f"{path.name}: {exc}") from None

    def info(self) -> dict[str, Any]:
        e = self.engine
        return {
            "tensorrt": self.trt.__version__,
            "input_dtype": str(e.dtype(e.input)),
            "profiles": [[p.lo, p.hi] for p in e.profiles],
        }

    def max_batch(self) -> int | None:
        return self.engine.max_batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.engine(torch.from_numpy(x)).cpu().numpy()

    def time(self, x: np.ndarray, settings: TimingSettings) -> Latency:
        e = self.engine
        try:
            bound = e.bind(x.shape)
        except (ValueError, RuntimeError) as exc:
            raise Unavailable(f"batch {x.shape[0]}: {exc}") from None
        with torch.cuda.stream(e.stream):
            bound.input.copy_(torch.from_numpy(x))
        e.stream.synchronize()
        return time_cuda(e.launch, settings, e.stream)

    def close(self) -> None:
        del self.engine
        torch.cuda.empty_cache()
