"""Bench rows as text: the table cells (Markdown and the CLI's terminal table), ``bench.md`` and ``bench.csv``."""

from __future__ import annotations

import csv
import io
import math

from kdeploy.bench.records import BenchResult, BenchRow
from kdeploy.bench.winners import FILENAME as WINNERS_PLOT
from kdeploy.bench.winners import runtime_label, winners_markdown

# Table columns, shared by the Markdown tables and the terminal (which shows the COMPACT subset).
COLUMNS = ["model", "format", "runtime", "device", "batch", "accuracy", "Δacc", "params", "MMACs", "size MB",
           "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s", "speed-up", "size ×"]  # fmt: skip
COMPACT = ["model", "format", "runtime", "batch", "accuracy", "Δacc", "MMACs", "size MB", "p50 ms", "p99 ms",
           "samples/s", "speed-up", "size ×"]  # fmt: skip
CSV_FIELDS = [
    "model",
    "format",
    "precision",
    "runtime",
    "device",
    "batch_size",
    "accuracy",
    "accuracy_delta",
    "params",
    "macs",
    "flops",
    "size_mb",
    "memory_mb",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "min_ms",
    "std_ms",
    "iters",
    "throughput",
    "speedup",
    "size_reduction",
    "threads",
    "graph_optimization_level",
    "artifact",
    "files",
]


# ---- formatting ------------------------------------------------------------------------------------
def num(v: float | None, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def _ms(v: float) -> str:
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def row_cells(r: BenchRow, columns: list[str] = COLUMNS) -> list[str]:
    lat = r.latency_ms
    values = [
        r.model,
        r.format,
        runtime_label(r),
        r.device,
        str(r.batch_size),
        num(r.accuracy, ".4f"),
        _delta(r.accuracy_delta),
        num(r.params, ","),
        num(r.macs / 1e6 if r.macs is not None else None, ".3f"),
        num(r.size_mb, ".3f"),
        _ms(lat.p50),
        _ms(lat.p90),
        _ms(lat.p99),
        _ms(lat.mean),
        num(r.throughput, ",.0f"),
        _ratio(r.speedup),
        _ratio(r.size_reduction),
    ]
    cells = dict(zip(COLUMNS, values, strict=True))
    return [cells[c] for c in columns]


def table(rows: list[BenchRow], columns: list[str] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, rows ordered by batch size then as measured."""
    ordered = sorted(rows, key=lambda r: r.batch_size)  # stable: keeps measurement order per batch
    return columns, [row_cells(r, columns) for r in ordered]


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    text = {"model", "format", "runtime", "device", "id", "status", "compared with", "made with", "note"}
    numeric = {i for i, h in enumerate(headers) if h not in text}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def settings_line(result: BenchResult) -> str:
    m, s = result.machine, result.settings
    t = s.get("timing", {})
    busy = m.busy_cores_before
    return (
        f"{m.cpu} ({m.cores_available or '?'} cores available), {s.get('threads', '?')} threads "
        f"(torch and ORT intra-op; ORT inter-op 1, graph optimisation {s.get('graph_level', '?')}), "
        f"device {s.get('device', '?')}; per row: {t.get('warmup', '?')} warm-up iterations, then >= "
        f"{t.get('min_iters', '?')} iterations and >= {t.get('min_seconds', '?')} s; "
        f"torch {m.version('torch')}, onnxruntime {m.version('onnxruntime')}"
        + (f"; other processes used {busy:.1f} cores just before timing" if busy is not None else "")
    )


def bench_markdown(result: BenchResult, plot: str | None = "pareto.png") -> str:
    headers, cells = table(result.rows)
    parts = [
        "Latency per batch (ms); throughput in samples/s at p50; ratios against the teacher's PyTorch fp32 row at "
        "the same batch size (speed-up = teacher p50 / row p50; size × = teacher MB / row MB). MMACs per sample "
        "(fvcore; FLOPs = 2 x MACs). Accuracy on the test set through each runtime.",
        "",
        settings_line(result),
        "",
        markdown_table(headers, cells),
    ]
    if result.skipped:
        parts += ["", "Skipped:", ""]
        parts += [f"- {s.model} {s.format} ({s.runtime}): {s.reason}" for s in result.skipped]
    if plot:
        parts += ["", f"![accuracy vs latency]({plot})"]
    parts.append(winners_markdown(result.rows, WINNERS_PLOT if plot else None))
    return "\n".join(parts) + "\n"


def bench_csv(rows: list[BenchRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        r = row.to_dict()
        flat = {**r, **{f"{k}_ms": v for k, v in r["latency_ms"].items()}, "files": ";".join(row.files)}
        writer.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()
