"""``pareto.png``: accuracy against p50 latency, one point per bench row at one batch size, the front dashed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdeploy.bench.figures import save_png
from kdeploy.bench.gate import REFERENCE
from kdeploy.bench.records import BenchRow
from kdeploy.bench.winners import runtime_label


def plot_batch(rows: list[BenchRow]) -> int | None:
    sizes = sorted({r.batch_size for r in rows})
    return 1 if 1 in sizes else (sizes[0] if sizes else None)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency and higher accuracy), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


MODEL_COLORS = {"teacher": "#d62728", "baseline": "#7f7f7f", "student": "#1f77b4"}
FORMAT_MARKERS = {"pytorch": "o", "onnx": "s", "onnx-int8": "^", "onnx-int8-qat": "*", "onnx-int8-dynamic": "v",
                  "onnx-fp16": "D", "tensorrt-fp16": "P", "tensorrt-int8": "X"}  # fmt: skip


def _label_offsets(xy: list[tuple[float, float]], idx: list[int], xspan: float, yspan: float) -> dict[int, int]:
    """Vertical offsets (points) that stack the labels of nearby points instead of overprinting them."""
    offsets: dict[int, int] = {}
    placed: list[tuple[float, float, int]] = []
    for i in sorted(idx, key=lambda i: (xy[i][1], xy[i][0])):
        x, y = xy[i]
        near = [o for px, py, o in placed if abs(px - x) < 0.12 * xspan and abs(py - y) < 0.06 * yspan]
        offsets[i] = max(near) + 11 if near else 6
        placed.append((x, y, offsets[i]))
    return offsets


def write_pareto(path: Path, rows: list[BenchRow]) -> Path | None:
    """Accuracy vs p50 latency at batch 1 (or the smallest): colour = model, marker = format, area ~ size on
    disk, the teacher's PyTorch row outlined, the Pareto front dashed and its points labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = plot_batch(rows)
    pts = [r for r in rows if r.batch_size == batch and r.device == rows[0].device] if rows else []
    if not pts:
        return None
    xy = [(r.latency_ms.p50, r.accuracy) for r in pts]
    lats = [x for x, _ in xy]
    log = max(lats) / max(min(lats), 1e-9) > 10
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    reference = [i for i, r in enumerate(pts) if r.key == REFERENCE]
    _scatter(ax, pts, xy, reference)
    front = pareto_front(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", color="black", lw=1, alpha=0.6, zorder=2,
            drawstyle="steps-post")  # fmt: skip
    _label(ax, pts, xy, sorted(set(front) | set(reference)), reference, log)
    _legend(ax, pts)
    _axes(ax, f"p50 latency, ms per batch of {batch} ({pts[0].device}{', log scale' if log else ''})", log)
    fig.tight_layout()
    return save_png(fig, path)


def _scatter(ax: Any, pts: list[BenchRow], xy: list[tuple[float, float]], reference: list[int]) -> None:
    biggest = max(r.size_mb for r in pts) or 1.0
    for i, (r, (x, y)) in enumerate(zip(pts, xy, strict=True)):
        ref = i in reference
        ax.scatter(x, y, s=40 + 900 * r.size_mb / biggest, color=MODEL_COLORS.get(r.model, "#2ca02c"),
                   marker=FORMAT_MARKERS.get(r.format, "o"), alpha=0.6, zorder=3,
                   edgecolors="black" if ref else "none", linewidths=2.0 if ref else 0)  # fmt: skip


def _label(ax: Any, pts: list[BenchRow], xy: list[tuple[float, float]], labelled: list[int], reference: list[int],
           log: bool) -> None:  # fmt: skip
    """Name the labelled points, spread vertically where they would overlap (positions in the plotted scale)."""
    tx = [math.log10(x) if log else x for x, _ in xy]
    ys = [y for _, y in xy]
    offsets = _label_offsets(
        [(tx[i], ys[i]) for i in range(len(pts))], labelled, (max(tx) - min(tx)) or 1.0, (max(ys) - min(ys)) or 1.0
    )
    several_runtimes = len({x.runtime for x in pts if x.format != "pytorch"}) > 1
    for i in labelled:
        r = pts[i]
        runtime = f" {runtime_label(r)}" if several_runtimes else ""
        text = f"{r.model} {r.format}{runtime}" + (" (reference)" if i in reference else "")
        ax.annotate(text, xy[i], textcoords="offset points", xytext=(8, offsets[i]), fontsize=8, zorder=4,
                    fontweight="bold" if i in reference else "normal")  # fmt: skip


def _legend(ax: Any, pts: list[BenchRow]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="--", color="black", alpha=0.6, label="Pareto front (labelled)")]
    handles += [Line2D([], [], ls="", marker="o", ms=8, color=c, alpha=0.6, label=m)
                for m, c in MODEL_COLORS.items() if any(r.model == m for r in pts)]  # fmt: skip
    handles += [Line2D([], [], ls="", marker=FORMAT_MARKERS.get(f, "o"), ms=7, color="#555555", label=f)
                for f in dict.fromkeys(r.format for r in pts)]  # fmt: skip
    ax.legend(handles=handles, loc="lower right", fontsize=8, ncol=2)


def _axes(ax: Any, xlabel: str, log: bool) -> None:
    from matplotlib.ticker import FuncFormatter

    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs latency: colour = model, marker = format, area ~ size on disk")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.2, y=0.2)
