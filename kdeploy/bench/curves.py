"""Training curves from ``history.csv``: loss terms and train/val accuracy per epoch, for every trained model.

One PNG (matplotlib, Agg backend): the first panel overlays every model's validation accuracy (solid) and
training accuracy (dashed), so the KD student against the CE baseline is visible at a glance; then one panel per
model with its loss terms (``loss_ce``, ``loss_kd``, ``loss_hint``, ...) and their sum. ``report.md`` embeds it
through :func:`curves_markdown`. Rows whose model has a single epoch still plot (as markers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdeploy.bench.figures import save_png

FILENAME = "curves.png"
# Fixed colours so a model keeps its colour across reports; unknown roles take the next free one.
COLOURS = {"teacher": "tab:blue", "baseline": "tab:orange", "student": "tab:green"}
SPARE = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


@dataclass
class Curve:
    """One model's per-epoch history: epochs, accuracies, and each loss term by name (``"loss"`` is the sum)."""

    model: str
    epochs: list[int] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_curves(rows: list[dict[str, str]]) -> list[Curve]:
    """``history.csv`` rows -> one :class:`Curve` per model, in first-seen order; a repeated epoch keeps its last row
    (a resumed run may have written it twice)."""
    by_model: dict[str, dict[int, dict[str, str]]] = {}
    for row in rows:
        model, epoch = row.get("model"), _float(row.get("epoch"))
        if not model or math.isnan(epoch):
            continue
        by_model.setdefault(model, {})[int(epoch)] = row
    curves = []
    for model, epochs in by_model.items():
        curve = Curve(model)
        ordered = [epochs[e] for e in sorted(epochs)]
        names = [k for k in ordered[0] if k.startswith("loss") and any(r.get(k) not in ("", None) for r in ordered)]
        for row in ordered:
            curve.epochs.append(int(_float(row["epoch"])))
            curve.train_acc.append(_float(row.get("train_acc")))
            curve.val_acc.append(_float(row.get("val_acc")))
            for name in names:
                curve.losses.setdefault(name, []).append(_float(row.get(name)))
        curves.append(curve)
    return curves


def _colour(model: str, index: int) -> str:
    return COLOURS.get(model, SPARE[index % len(SPARE)])


def write_curves(path: Path, rows: list[dict[str, str]]) -> Path | None:
    """Plot the curves of ``rows`` into ``path`` (atomically); None when there is no history to plot."""
    curves = read_curves(rows)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves) + 1, figsize=(4.2 * (len(curves) + 1), 3.6), squeeze=False)
    acc_ax = axes[0][0]
    for index, curve in enumerate(curves):
        colour = _colour(curve.model, index)
        marker = "o" if len(curve.epochs) < 2 else None
        acc_ax.plot(curve.epochs, curve.val_acc, color=colour, marker=marker, label=f"{curve.model} val")
        acc_ax.plot(
            curve.epochs, curve.train_acc, color=colour, marker=marker, linestyle="--", label=f"{curve.model} train"
        )
        loss_ax = axes[0][index + 1]
        for name, values in curve.losses.items():
            style = {"color": "black", "linewidth": 2} if name == "loss" else {}
            loss_ax.plot(curve.epochs, values, marker=marker, label=name, **style)
        loss_ax.set_title(f"{curve.model}: loss terms")
        loss_ax.set_xlabel("epoch")
        loss_ax.legend(fontsize=7)
        loss_ax.grid(alpha=0.3)
    acc_ax.set_title("accuracy (val solid, train dashed)")
    acc_ax.set_xlabel("epoch")
    acc_ax.legend(fontsize=7)
    acc_ax.grid(alpha=0.3)
    fig.tight_layout()

    return save_png(fig, path, dpi=110)


def curves_markdown(root: Path, rows: list[dict[str, str]]) -> str:
    """Write ``<root>/curves.png`` and return the report section that embeds it ("" without a history)."""
    written = write_curves(root / FILENAME, rows)
    if written is None:
        return ""
    return f"\n## Training curves\n\n![training curves]({FILENAME})\n"
