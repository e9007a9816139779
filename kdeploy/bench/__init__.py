"""Benchmarks: accuracy, params, MACs, size and latency of every model and artifact of a run.

``settings`` (what and how), ``targets`` (what to measure), ``measure`` (static counts), ``latency`` (the
timing loop), ``runners`` (torch, onnxruntime, tensorrt), ``machine`` (cores, busy check), ``harness``
(``bench``, ratios), ``records`` (typed rows = ``bench.json``), ``gate``, ``tables``/``plot``/``report``
(CSV, Markdown, ``pareto.png``, ``report.md``).
Never imports the trainer: models are rebuilt from their weights' metadata.
"""

from kdeploy.bench.harness import bench
from kdeploy.bench.latency import Latency, TimingSettings
from kdeploy.bench.measure import MacCount, count_macs
from kdeploy.bench.records import BenchResult, BenchRow
from kdeploy.bench.settings import BenchSettings

__all__ = ["BenchResult", "BenchRow", "BenchSettings", "Latency", "MacCount", "TimingSettings", "bench", "count_macs"]
