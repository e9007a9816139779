"""The typed records of ``bench.json``: one :class:`BenchRow` per target and batch size, inside a :class:`BenchResult`.

The JSON keys are the ones kdeploy has always written, so old ``bench.json`` files load; keys this version does
not know are kept in ``extra``. ``machine`` is a :class:`BenchMachine`; ``settings`` (the options used, as
:meth:`kdeploy.bench.settings.BenchSettings.to_dict` writes them) stays a plain mapping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kdeploy.bench.latency import LatencyMs
from kdeploy.jsonrecord import split_known

# runtime details a runner reports; present only for the runtimes that have them
RUNTIME_FIELDS = ("threads", "inter_op_threads", "graph_optimization_level", "input_dtype", "cuda_graph", "tensorrt",
                  "openvino", "latency_hint", "streams", "inference_precision", "inference_precision_note")  # fmt: skip


@dataclass
class BenchRow:
    """One model or artifact on one runtime and device at one batch size."""

    model: str
    format: str
    precision: str
    runtime: str
    device: str
    batch_size: int
    accuracy: float
    latency_ms: LatencyMs
    iters: int
    throughput: float
    params: int | None = None
    macs: int | None = None
    flops: int | None = None
    size_mb: float = 0.0
    memory_mb: float | None = None
    artifact: str | None = None  # manifest id; None for PyTorch rows
    files: list[str] = field(default_factory=list)
    threads: int | None = None
    inter_op_threads: int | None = None
    graph_optimization_level: str | None = None
    input_dtype: str | None = None
    cuda_graph: bool | None = None
    tensorrt: str | None = None
    openvino: str | None = None  # OpenVINO rows: version, performance hint, streams, the precision the plugin used
    latency_hint: str | None = None
    streams: int | None = None
    inference_precision: str | None = None
    inference_precision_note: str | None = None
    # against the teacher's PyTorch fp32 row at the same batch size (see harness.add_ratios)
    speedup: float | None = None
    size_reduction: float | None = None
    accuracy_delta: float | None = None
    reference_device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.format

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["extra"]
        for name in RUNTIME_FIELDS:
            if out[name] is None:
                del out[name]
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRow:
        known, extra = split_known(cls, data)
        latency = data["latency_ms"]
        known["latency_ms"] = LatencyMs(**{f.name: latency[f.name] for f in dataclasses.fields(LatencyMs)})
        return cls(**known, extra=extra)


@dataclass
class Skipped:
    """A target bench could not measure, and why."""

    model: str
    format: str
    runtime: str
    reason: str


SKIPPED_KEYS = ("model", "format", "runtime", "reason")


@dataclass
class BenchMachine:
    """Where a bench ran: the run environment (:func:`kdeploy.runs.environment`), then the cores, threads and
    competing load around the timing. Keys this version does not name are kept in ``extra``."""

    cpu: str = "?"
    cpu_accelerations: list[str] = field(default_factory=list)
    cpu_count: int | None = None
    cores_available: int | None = None
    threads: int | None = None  # torch and ONNX Runtime intra-op threads during timing
    torch_threads: int | None = None  # torch's thread count when the environment was read
    cuda: str | None = None  # GPU name, None without one
    python: str = ""
    platform: str = ""
    versions: dict[str, str | None] = field(default_factory=dict)
    onnxruntime_providers: list[str] = field(default_factory=list)
    load_average_before: float | None = None
    load_average_after: float | None = None
    busy_cores_before: float | None = None  # cores other processes used just before timing (Linux), else None
    extra: dict[str, Any] = field(default_factory=dict)

    def version(self, package: str) -> str:
        return self.versions.get(package) or "?"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchMachine:
        known, extra = split_known(cls, data)
        return cls(**{k: v for k, v in known.items() if v is not None}, extra=extra)


@dataclass
class BenchResult:
    """Everything ``kdeploy bench`` measured in one run folder (``bench.json``)."""

    run: str
    machine: BenchMachine
    settings: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "machine": self.machine.to_dict(),
            "settings": self.settings,
            "rows": [r.to_dict() for r in self.rows],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        return cls(
            run=str(data.get("run", "")),
            machine=BenchMachine.from_dict(data.get("machine") or {}),
            settings=data.get("settings") or {},
            rows=[BenchRow.from_dict(r) for r in data.get("rows", [])],
            skipped=[Skipped(**{k: str(s.get(k, "")) for k in SKIPPED_KEYS}) for s in data.get("skipped", [])],
        )
