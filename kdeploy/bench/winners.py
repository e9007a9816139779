"""Which runtime wins: for every model, nominal precision and batch size benched on more than one runtime, the
p50 latency on each and the fastest, as a Markdown table and a plot (one panel per batch size).

PyTorch fp32 and the fp32 ONNX file of the same model count as one comparison (the same weights and precision);
an OpenVINO row that ran at another precision than its file's (bf16 by default on CPUs with AMX) says so in its
runtime label, since it is then not a like-for-like comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdeploy.bench.figures import save_png
from kdeploy.bench.records import BenchRow

FILENAME = "runtimes.png"
RUNTIME_COLOURS = {"torch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#9467bd", "tensorrt": "#2ca02c"}


@dataclass(frozen=True)
class Comparison:
    """One model at one nominal precision and batch size, timed on several runtimes (p50 ms, fastest first)."""

    model: str
    precision: str
    batch_size: int
    p50_ms: tuple[tuple[str, float], ...]  # (runtime label, p50), ascending

    @property
    def winner(self) -> str:
        return self.p50_ms[0][0]

    @property
    def margin(self) -> float:
        """Runner-up p50 / winner p50 (how many times faster the winner is)."""
        return self.p50_ms[1][1] / self.p50_ms[0][1]


def runtime_label(row: BenchRow) -> str:
    """``openvino`` or ``openvino bf16`` when OpenVINO ran a file at another precision than the file's."""
    used = row.inference_precision
    nominal = {"fp32": "f32", "fp16": "f16"}.get(row.precision, row.precision)
    if used and row.runtime == "openvino" and used != nominal and nominal in ("f32", "f16"):
        return f"{row.runtime} {used}"
    return row.runtime


def compare_runtimes(rows: list[BenchRow]) -> list[Comparison]:
    """Every (model, precision, batch, device) group with at least two runtimes, in table order."""
    groups: dict[tuple[str, str, int, str], dict[str, float]] = {}
    for r in rows:
        key = (r.model, r.precision, r.batch_size, r.device)
        groups.setdefault(key, {}).setdefault(runtime_label(r), float(r.latency_ms.p50))
    out = []
    for (model, precision, batch, _), times in groups.items():
        if len(times) > 1:
            ranked = tuple(sorted(times.items(), key=lambda kv: kv[1]))
            out.append(Comparison(model, precision, batch, ranked))
    return sorted(out, key=lambda c: (c.batch_size, c.model, c.precision))


def winners_markdown(rows: list[BenchRow], plot: str | None = None) -> str:
    """The "fastest runtime" section of bench.md ("" when no model ran on two runtimes)."""
    comparisons = compare_runtimes(rows)
    if not comparisons:
        return ""
    lines = [
        "",
        "Fastest runtime per model, precision and batch size (p50 ms; x = runner-up p50 / winner p50):",
        "",
        "| model | precision | batch | p50 ms by runtime | fastest |",
        "|---|---|---:|---|---|",
    ]
    for c in comparisons:
        times = ", ".join(f"{name} {ms:.4g}" for name, ms in c.p50_ms)
        lines.append(f"| {c.model} | {c.precision} | {c.batch_size} | {times} | **{c.winner}** ({c.margin:.2f}x) |")
    if plot:
        lines += ["", f"![p50 latency by runtime]({plot})"]
    return "\n".join(lines) + "\n"


def write_runtime_plot(path: Path, rows: list[BenchRow]) -> Path | None:
    """Grouped bars of p50 latency per runtime, one panel per batch size, the fastest bar outlined; None when
    no model ran on two runtimes."""
    comparisons = compare_runtimes(rows)
    if not comparisons:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({c.batch_size for c in comparisons})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        group = [c for c in comparisons if c.batch_size == batch]
        labels = sorted({name for c in group for name, _ in c.p50_ms})
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            xs, ys, edges = [], [], []
            for i, c in enumerate(group):
                ms = dict(c.p50_ms).get(label)
                if ms is not None:
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    ys.append(ms)
                    edges.append("black" if c.winner == label else "none")
            colour = RUNTIME_COLOURS.get(label.split()[0], "#bcbd22")
            ax.bar(
                xs, ys, width, label=label, color=colour, edgecolor=edges, linewidth=1.5, hatch="//" * (" " in label)
            )
        ax.set_xticks(range(len(group)), [f"{c.model}\n{c.precision}" for c in group], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("p50 ms per batch (log)")
        ax.set_title(f"batch {batch}: fastest outlined")
        ax.legend(fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
