"""The rich tables the commands print: metrics, seeds, bench rows and artifacts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from kdeploy.cli.main import out

if TYPE_CHECKING:
    from kdeploy.artifacts import Artifact
    from kdeploy.bench.records import BenchResult
    from kdeploy.runs import RunMetrics
    from kdeploy.seeds import SeedsSummary


def _wide() -> Console:
    """Pipes and files: no 80-column squeeze."""
    return out if out.is_terminal else Console(width=200)


def print_seeds(result: SeedsSummary) -> None:
    seeds = ", ".join(str(s) for s in result.seeds)
    table = Table(title=f"{result.recipe}: test accuracy % over seeds {seeds} (mean ± std)", title_justify="left",
                  caption=result.teacher_note or None, caption_justify="left")  # fmt: skip
    for col in ("model", "best epoch", "last epoch", "n"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for role, stats in result.stats.items():
        table.add_row(role, stats.accuracy.percent(), stats.last_accuracy.percent(), str(stats.accuracy.n))
    out.print(table)


def print_metrics(metrics: RunMetrics) -> None:
    """A run's models (metrics.json): test accuracy, size and training speed."""
    table = Table(title=f"{metrics.recipe}: test accuracy", title_justify="left")
    for col in ("model", "accuracy", "params", "best epoch", "train s", "samples/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for role, m in metrics.models.items():
        table.add_row(
            role,
            _fmt(m.accuracy, ".4f"),
            _fmt(m.params, ","),
            "" if m.best_epoch is None else str(m.best_epoch),
            _fmt(m.train_seconds, ".1f"),
            _fmt(m.samples_per_second, ",.0f"),
        )
    out.print(table)


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# What a narrow terminal keeps first; the rest of COMPACT follows in this order while it fits (bench.md has all).
BENCH_PRIORITY = ("model", "format", "runtime", "batch", "accuracy", "p50 ms", "speed-up", "size MB", "Δacc",
                  "samples/s", "p99 ms", "MMACs", "size ×")  # fmt: skip
TEXT_COLUMNS = {"model", "format", "runtime"}


def fit_columns(headers: list[str], cells: list[list[str]], width: int) -> list[int]:
    """Indices of the columns to show in ``width`` characters: by BENCH_PRIORITY while they fit, in table order.

    A rich table with borders takes 1 character plus, per column, its widest cell + 2 padding + 1 border.
    """
    need = {i: max([len(h), *(len(row[i]) for row in cells)]) + 3 for i, h in enumerate(headers)}
    rank = {h: n for n, h in enumerate(BENCH_PRIORITY)}
    chosen, used = [], 1
    for i in sorted(range(len(headers)), key=lambda i: rank.get(headers[i], len(rank))):
        if used + need[i] <= width or not chosen:
            chosen.append(i)
            used += need[i]
    return sorted(chosen)


def fitted_table(title: str, headers: list[str], cells: list[list[str]], width: int) -> tuple[Table, list[str]]:
    """A table of the columns that fit ``width`` characters, and the names of the columns left out."""
    keep = fit_columns(headers, cells, width)
    t = Table(title=title, title_justify="left")
    for i in keep:
        t.add_column(headers[i], justify="left" if headers[i] in TEXT_COLUMNS else "right", no_wrap=True)
    for row in cells:
        t.add_row(*(row[i] for i in keep))
    return t, [h for i, h in enumerate(headers) if i not in keep]


def bench_table(result: BenchResult, width: int) -> tuple[Table, list[str]]:
    """The bench rows (the COMPACT columns) as a table that fits ``width``, and the columns left out."""
    from kdeploy.bench.tables import COMPACT, table

    headers, cells = table(result.rows, COMPACT)
    device = ", ".join(sorted({r.device for r in result.rows}))
    title = f"bench on {device}: latency ms per batch, ratios vs teacher PyTorch fp32 (all columns: bench.md)"
    return fitted_table(title, headers, cells, width)


def print_bench(result: BenchResult) -> None:
    from kdeploy.bench.tables import settings_line

    console = _wide()
    t, hidden = bench_table(result, console.width)
    console.print(t)
    if hidden:
        out.print(f"not shown at this width: {', '.join(hidden)} (see bench.md)", highlight=False, soft_wrap=True)
    out.print(settings_line(result), highlight=False, soft_wrap=True)
    for skip in result.skipped:
        out.print(f"skipped {skip.model} {skip.format} ({skip.runtime}): {skip.reason}", highlight=False)


def print_artifacts(artifacts: list[Artifact], title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("artifact", "file", "MB", "max |Δ logit|", "top-1 agree", "accuracy", "Δ acc (pt)", "status"):
        t.add_column(col, justify="left" if col in {"artifact", "file", "status"} else "right")
    for art in artifacts:
        compared = art.parity or art.vs_fp32  # fp32 ONNX: vs PyTorch; quantized: vs the fp32 ONNX
        drop = art.accuracy_drop
        t.add_row(
            art.id,
            art.files[0] if art.files else "-",
            f"{art.bytes / 1e6:.3f}" if art.files else "-",
            f"{compared.max_abs_diff:.2e}" if compared else "-",
            f"{compared.top1_agreement:.2%}" if compared else "-",
            f"{art.accuracy:.4f}" if art.accuracy is not None else "-",
            f"{(0.0 - drop) * 100:+.2f}" if drop is not None and art.format != "onnx" else "-",
            art.status if art.status == "ok" else f"{art.status}: {art.reason or ''}",
        )
    _wide().print(t)
    out.print(
        "max |Δ logit| and top-1 agree: ONNX vs PyTorch (parity gate), quantized vs the fp32 ONNX; "
        "Δ acc: test accuracy change vs fp32",
        highlight=False,
        soft_wrap=True,
    )
