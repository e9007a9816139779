"""Bench results as files: ``bench.csv``, ``bench.md``, ``pareto.png``, and the run's ``report.md``.

Everything here is rich-free: plain data in, text and images out. The CLI renders the same table
(``table(rows)``) with rich.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from kdeploy import atomic
from kdeploy.bench.curves import curves_markdown
from kdeploy.bench.winners import FILENAME as WINNERS_PLOT
from kdeploy.bench.winners import runtime_label, winners_markdown, write_runtime_plot
from kdeploy.errors import UserError
from kdeploy.runs import Run

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
def _num(v: float | None, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def _ms(v: float) -> str:
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def row_cells(r: dict[str, Any], columns: list[str] = COLUMNS) -> list[str]:
    lat = r["latency_ms"]
    values = [
        r["model"],
        r["format"],
        runtime_label(r),
        r["device"],
        str(r["batch_size"]),
        _num(r["accuracy"], ".4f"),
        _delta(r.get("accuracy_delta")),
        _num(r.get("params"), ","),
        _num(r["macs"] / 1e6 if r.get("macs") is not None else None, ".3f"),
        _num(r["size_mb"], ".3f"),
        _ms(lat["p50"]),
        _ms(lat["p90"]),
        _ms(lat["p99"]),
        _ms(lat["mean"]),
        _num(r["throughput"], ",.0f"),
        _ratio(r.get("speedup")),
        _ratio(r.get("size_reduction")),
    ]
    cells = dict(zip(COLUMNS, values, strict=True))
    return [cells[c] for c in columns]


def table(rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, rows ordered by batch size then as measured."""
    ordered = sorted(rows, key=lambda r: r["batch_size"])  # stable: keeps measurement order per batch
    return columns, [row_cells(r, columns) for r in ordered]


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    text = {"model", "format", "runtime", "device", "id", "status", "compared with", "note"}
    numeric = {i for i, h in enumerate(headers) if h not in text}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def settings_line(result: dict[str, Any]) -> str:
    m, s = result.get("machine", {}), result.get("settings", {})
    t = s.get("timing", {})
    return (
        f"{m.get('cpu', '?')} ({m.get('cores_available', '?')} cores available), {s.get('threads', '?')} threads "
        f"(torch and ORT intra-op; ORT inter-op 1, graph optimisation {s.get('graph_level', '?')}), "
        f"device {s.get('device', '?')}; per row: {t.get('warmup', '?')} warm-up iterations, then >= "
        f"{t.get('min_iters', '?')} iterations and >= {t.get('min_seconds', '?')} s; "
        f"torch {m.get('versions', {}).get('torch', '?')}, onnxruntime {m.get('versions', {}).get('onnxruntime', '?')}"
        + (
            f"; other processes used {m['busy_cores_before']:.1f} cores just before timing"
            if m.get("busy_cores_before") is not None
            else ""
        )
    )


def bench_markdown(result: dict[str, Any], plot: str | None = "pareto.png") -> str:
    headers, cells = table(result["rows"])
    parts = [
        "Latency per batch (ms); throughput in samples/s at p50; ratios against the teacher's PyTorch fp32 row at "
        "the same batch size (speed-up = teacher p50 / row p50; size × = teacher MB / row MB). MMACs per sample "
        "(fvcore; FLOPs = 2 x MACs). Accuracy on the test set through each runtime.",
        "",
        settings_line(result),
        "",
        markdown_table(headers, cells),
    ]
    if result.get("skipped"):
        parts += ["", "Skipped:", ""]
        parts += [f"- {s['model']} {s['format']} ({s['runtime']}): {s['reason']}" for s in result["skipped"]]
    if plot:
        parts += ["", f"![accuracy vs latency]({plot})"]
    parts.append(winners_markdown(result["rows"], WINNERS_PLOT if plot else None))
    return "\n".join(parts) + "\n"


def bench_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {**r, **{f"{k}_ms": v for k, v in r["latency_ms"].items()}, "files": ";".join(r.get("files", []))}
        writer.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


# ---- the plot ---------------------------------------------------------------------------------------
def plot_batch(rows: list[dict[str, Any]]) -> int | None:
    sizes = sorted({r["batch_size"] for r in rows})
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


def write_pareto(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Accuracy vs p50 latency at batch 1 (or the smallest): colour = model, marker = format, area ~ size on
    disk, the teacher's PyTorch row outlined, the Pareto front dashed and its points labelled."""
    import math as _m

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    batch = plot_batch(rows)
    pts = [r for r in rows if r["batch_size"] == batch and r["device"] == rows[0]["device"]] if rows else []
    if not pts:
        return None
    biggest = max(r["size_mb"] for r in pts) or 1.0
    xy = [(r["latency_ms"]["p50"], r["accuracy"]) for r in pts]
    lats = [x for x, _ in xy]
    log = max(lats) / max(min(lats), 1e-9) > 10
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    reference = [i for i, r in enumerate(pts) if (r["model"], r["format"]) == ("teacher", "pytorch")]
    for i, (r, (x, y)) in enumerate(zip(pts, xy, strict=True)):
        ref = i in reference
        ax.scatter(x, y, s=40 + 900 * r["size_mb"] / biggest, color=MODEL_COLORS.get(r["model"], "#2ca02c"),
                   marker=FORMAT_MARKERS.get(r["format"], "o"), alpha=0.6, zorder=3,
                   edgecolors="black" if ref else "none", linewidths=2.0 if ref else 0)  # fmt: skip
    front = pareto_front(xy)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", color="black", lw=1, alpha=0.6, zorder=2,
            drawstyle="steps-post")  # fmt: skip
    labelled = sorted(set(front) | set(reference))
    tx = [_m.log10(x) for x in lats] if log else lats
    ys = [y for _, y in xy]
    offsets = _label_offsets(
        [(tx[i], ys[i]) for i in range(len(pts))], labelled, (max(tx) - min(tx)) or 1.0, (max(ys) - min(ys)) or 1.0
    )
    for i in labelled:
        r = pts[i]
        runtime = f" {runtime_label(r)}" if len({x["runtime"] for x in pts if x["format"] != "pytorch"}) > 1 else ""
        text = f"{r['model']} {r['format']}{runtime}" + (" (reference)" if i in reference else "")
        ax.annotate(text, xy[i], textcoords="offset points", xytext=(8, offsets[i]), fontsize=8, zorder=4,
                    fontweight="bold" if i in reference else "normal")  # fmt: skip
    handles = [Line2D([], [], ls="--", color="black", alpha=0.6, label="Pareto front (labelled)")]
    handles += [Line2D([], [], ls="", marker="o", ms=8, color=c, alpha=0.6, label=m)
                for m, c in MODEL_COLORS.items() if any(r["model"] == m for r in pts)]  # fmt: skip
    handles += [Line2D([], [], ls="", marker=FORMAT_MARKERS.get(f, "o"), ms=7, color="#555555", label=f)
                for f in dict.fromkeys(r["format"] for r in pts)]  # fmt: skip
    ax.legend(handles=handles, loc="lower right", fontsize=8, ncol=2)
    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    scale = ", log scale" if log else ""
    ax.set_xlabel(f"p50 latency, ms per batch of {batch} ({pts[0]['device']}{scale})")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs latency: colour = model, marker = format, area ~ size on disk")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.2, y=0.2)
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def write_bench_outputs(root: Path, result: dict[str, Any]) -> list[Path]:
    """bench.csv, bench.md and pareto.png next to bench.json."""
    written = [atomic.write_text(root / "bench.csv", bench_csv(result["rows"]))]
    plot = write_pareto(root / "pareto.png", result["rows"])
    written += [p for p in [write_runtime_plot(root / WINNERS_PLOT, result["rows"])] if p]
    written.append(atomic.write_text(root / "bench.md", bench_markdown(result, plot.name if plot else None)))
    if plot:
        written.append(plot)
    return written


def read_bench(root: Path) -> dict[str, Any]:
    path = root / "bench.json"
    if not path.is_file():
        raise UserError(f"{root}: no bench.json; run `kdeploy bench {root}` first")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt JSON; re-run `kdeploy bench {root}`") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise UserError(f"{path}: not a kdeploy bench result (no rows); re-run `kdeploy bench {root}`")
    return result


# ---- report.md -------------------------------------------------------------------------------------
def _augment_text(augment: dict[str, Any] | None) -> str:
    on = {k: v for k, v in (augment or {}).items() if v}
    return ", ".join(k if v is True else f"{k} {v}" for k, v in on.items()) or "none"


def _recipe_section(recipe: dict[str, Any]) -> list[str]:
    def model_line(cfg: dict[str, Any]) -> str:
        what = cfg.get("model") or cfg.get("target")
        kwargs = ", ".join(f"{k}={v}" for k, v in (cfg.get("kwargs") or {}).items())
        source = f", weights {cfg['checkpoint']}" if cfg.get("checkpoint") else f", {cfg.get('epochs')} epochs"
        own = f", augmentation {_augment_text(cfg['augment'])}" if cfg.get("augment") is not None else ""
        return f"{what}({kwargs}){source}, {cfg.get('optimizer')} lr {cfg.get('lr')}{own}"

    data = recipe.get("data", {})
    distill = recipe.get("distill", {})
    params = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in distill.items() if k != "method"
    )
    lines = [
        f"- recipe: `{recipe.get('name')}`: {recipe.get('description', '')}".rstrip(": "),
        f"- data: {data.get('name')} ({str(data['limit']) + '-sample subset' if data.get('limit') else 'all samples'}, "
        f"val {data.get('val_size')}, seed {recipe.get('seed')}, augmentation {_augment_text(data.get('augment'))})",
        f"- teacher: {model_line(recipe.get('teacher', {}))}",
        f"- student: {model_line(recipe.get('student', {}))}",
        f"- distillation: {distill.get('method')} ({params})",
    ]
    train = recipe.get("train") or {}
    flags = [name for name in ("channels_last", "compile", "scale_lr") if train.get(name)]
    lines.append(f"- training: {train.get('precision', 'fp32')}" + "".join(f", {f}" for f in flags))
    return lines


def _training_section(metrics: dict[str, Any]) -> list[str]:
    models = metrics.get("models", {})
    if not models:
        return ["No metrics.json (models were not trained in this folder)."]
    headers = ["model", "test accuracy", "val accuracy", "params", "best epoch", "train s", "samples/s"]
    cells = [
        [
            role,
            _num(m.get("accuracy"), ".4f"),
            _num(m.get("val_accuracy"), ".4f"),
            _num(m.get("params"), ","),
            str(m.get("best_epoch", "-")),
            _num(m.get("train_seconds"), ".1f"),
            _num(m.get("samples_per_second"), ",.0f"),
        ]
        for role, m in models.items()
    ]
    return [markdown_table(headers, cells)]


def _parity_section(manifest: dict[str, Any]) -> list[str]:
    arts = manifest.get("artifacts", [])
    if not arts:
        return ["Nothing exported (no export/manifest.json)."]
    headers = ["id", "status", "MB", "compared with", "max abs diff", "top-1 agreement", "accuracy", "fp32 accuracy",
               "note"]  # fmt: skip
    cells = []
    for a in arts:
        p = a.get("parity") or a.get("vs_fp32") or {}
        versus = "PyTorch" if a.get("parity") else "fp32 ONNX" if a.get("vs_fp32") else "-"
        reason = str(a.get("reason") or "").strip().splitlines()
        cells.append(
            [
                str(a.get("id")),
                str(a.get("status")) + ("" if a.get("passed", True) else " (gate missed)"),
                _num(a["bytes"] / 1e6 if a.get("bytes") is not None else None, ".3f"),
                versus,
                _num(p.get("max_abs_diff"), ".3g"),
                _num(p.get("top1_agreement"), ".4%"),
                _num(a.get("accuracy"), ".4f"),
                _num(a.get("fp32_accuracy"), ".4f"),
                reason[0] if reason else "",
            ]
        )
    return [markdown_table(headers, cells)]


def gate_markdown(gate: dict[str, Any]) -> str:
    verdict = ("PASSED" if gate["passed"] else "FAILED") if gate.get("gated", True) else "Best student row"
    return f"**{verdict}**: {gate['message']}"


def report_markdown(
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    bench: dict[str, Any] | None,
    manifest: dict[str, Any],
    gate: dict[str, Any] | None,
) -> str:
    parts = [f"# kdeploy report: {recipe.get('name', '?')}", "", "## Recipe", "", *_recipe_section(recipe)]
    if gate:
        parts += ["", "## Deployment gate", "", gate_markdown(gate)]
    parts += ["", "## Training (PyTorch, test set)", "", *_training_section(metrics)]
    parts += ["", "## Benchmark", ""]
    parts += [bench_markdown(bench).rstrip()] if bench else ["Not benchmarked yet: run `kdeploy bench`."]
    parts += ["", "## Export parity (ONNX Runtime vs PyTorch)", "", *_parity_section(manifest)]
    return "\n".join(parts) + "\n"


def regate(root: Path, bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate re-evaluated on the current bench.json with the thresholds saved in ``gate.json``."""
    from kdeploy.bench.gate import evaluate_gate

    path = root / "gate.json"
    if bench is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt JSON; delete it or re-run `kdeploy run`") from None
    return evaluate_gate(
        bench["rows"], saved.get("max_accuracy_drop"), saved.get("min_speedup"), saved.get("batch_size", 1)
    )


def write_report(run: Run) -> Path:
    """Re-render bench.csv/.md/pareto.png from bench.json (if any) and write ``report.md``; measures nothing."""
    import yaml

    from kdeploy.export.manifest import read_manifest

    recipe = yaml.safe_load(run.recipe_path.read_text(encoding="utf-8")) or {}
    bench = read_bench(run.root) if (run.root / "bench.json").is_file() else None
    if bench:
        write_bench_outputs(run.root, bench)
    gate = regate(run.root, bench)
    text = report_markdown(recipe, run.read_metrics(), bench, read_manifest(run), gate)
    text += curves_markdown(run.root, run.read_history())
    return atomic.write_text(run.root / "report.md", text)
