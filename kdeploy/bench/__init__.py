"""Benchmarks: accuracy, params, MACs, size and latency of every model and artifact of a run.

``measure`` (static counts), ``latency`` (the timing loop), ``runners`` (torch, onnxruntime, tensorrt),
``harness`` (what to measure, ``bench``), ``report`` (JSON/CSV/Markdown/plot, ``report.md``).
Never imports the trainer: models are rebuilt from their weights' metadata.
"""

from kdeploy.bench.harness import BenchSettings, bench
from kdeploy.bench.latency import Latency, TimingSettings
from kdeploy.bench.measure import MacCount, count_macs

__all__ = ["BenchSettings", "Latency", "MacCount", "TimingSettings", "bench", "count_macs"]
