"""Bench results as files (``bench.csv``, ``bench.md``, ``pareto.png``) and the run's one-page ``report.md``.

Everything here is rich-free: typed records in, text and images out. The table cells come from
:mod:`kdeploy.bench.tables` (which the CLI also renders with rich), the plot from :mod:`kdeploy.bench.plot`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdeploy import atomic
from kdeploy.artifacts import Manifest, how_made, read_manifest
from kdeploy.bench.curves import curves_markdown
from kdeploy.bench.gate import GateVerdict, evaluate_gate
from kdeploy.bench.plot import write_pareto
from kdeploy.bench.records import BenchResult
from kdeploy.bench.tables import bench_csv, bench_markdown, markdown_table, num
from kdeploy.bench.winners import FILENAME as WINNERS_PLOT
from kdeploy.bench.winners import write_runtime_plot
from kdeploy.data.transforms import Augment
from kdeploy.errors import UserError, first_line
from kdeploy.recipe import ModelConfig, Recipe
from kdeploy.rundata import run_recipe
from kdeploy.runs import ModelMetrics, Run, StageTimes, saved_model_spec, spec_label


def write_bench_outputs(run: Run, result: BenchResult) -> list[Path]:
    """bench.csv, bench.md, pareto.png and (when a model ran on two runtimes) runtimes.png next to bench.json."""
    written = [atomic.write_text(run.bench_output(".csv"), bench_csv(result.rows))]
    plot = write_pareto(run.pareto_path, result.rows)
    written += [p for p in [write_runtime_plot(run.root / WINNERS_PLOT, result.rows)] if p]
    written.append(atomic.write_text(run.bench_output(".md"), bench_markdown(result, plot.name if plot else None)))
    if plot:
        written.append(plot)
    return written


def read_bench(run: Run | Path) -> BenchResult:
    """``bench.json`` of a run folder as a :class:`BenchResult`."""
    run = run if isinstance(run, Run) else Run(run)
    path = run.bench_path
    if not path.is_file():
        raise UserError(f"{run.root}: no bench.json; run `kdeploy bench {run.root}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt JSON; re-run `kdeploy bench {run.root}`") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise UserError(f"{path}: not a kdeploy bench result (no rows); re-run `kdeploy bench {run.root}`")
    try:
        return BenchResult.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: a bench row lacks {first_line(exc)}; re-run `kdeploy bench {run.root}`") from None


# ---- report.md -------------------------------------------------------------------------------------
def _augment_text(augment: Augment | None) -> str:
    on = {k: v for k, v in (augment.model_dump() if augment else {}).items() if v}
    return ", ".join(k if v is True else f"{k} {v}" for k, v in on.items()) or "none"


def _model_line(cfg: ModelConfig) -> str:
    """A model as the recipe builds it: loaded from its weights, or trained (epochs, optimizer, augmentation)."""
    name, kwargs = _named_model(cfg)
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    if cfg.checkpoint:
        files = ", ".join(cfg.checkpoint) if isinstance(cfg.checkpoint, list) else cfg.checkpoint
        return f"{name}({args}), weights {files}"
    own = f", augmentation {_augment_text(cfg.augment)}" if cfg.augment is not None else ""
    return f"{name}({args}), {cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr}{own}"


def _named_model(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """The recipe's model, or for a teacher given only by its checkpoint, the model that file records."""
    if cfg.model or cfg.target:
        return str(cfg.model or cfg.target), cfg.kwargs
    name, kwargs = spec_label(saved_model_spec(Path(str(cfg.checkpoint))) or {})
    return name or "the checkpoint's model", kwargs


def _recipe_section(recipe: Recipe) -> list[str]:
    d, distill, train = recipe.data, recipe.distill, recipe.train
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in distill.params().items())
    subset = f"{d.limit}-sample subset" if d.limit else "all samples"
    flags = [name for name in ("channels_last", "compile", "scale_lr") if getattr(train, name)]
    return [
        f"- recipe: `{recipe.name}`: {recipe.description}".rstrip(": "),
        f"- data: {d.name} ({subset}, val {d.val_size}, seed {recipe.seed}, augmentation {_augment_text(d.augment)})",
        f"- teacher: {_model_line(recipe.teacher)}",
        f"- student: {_model_line(recipe.student)}",
        f"- distillation: {distill.method} ({params})",
        f"- training: {train.precision}" + "".join(f", {f}" for f in flags),
    ]


def _training_section(models: dict[str, ModelMetrics]) -> list[str]:
    if not models:
        return ["No metrics.json (models were not trained in this folder)."]
    headers = ["model", "test accuracy", "val accuracy", "params", "best epoch", "train s", "samples/s", "threads"]
    cells = [
        [
            role,
            num(m.accuracy, ".4f"),
            num(m.val_accuracy, ".4f"),
            num(m.params, ","),
            "-" if m.best_epoch is None else str(m.best_epoch),
            num(m.train_seconds, ".1f"),
            num(m.samples_per_second, ",.0f"),
            num(m.train_threads, "d"),
        ]
        for role, m in models.items()
    ]
    return [markdown_table(headers, cells)]


def _parity_section(manifest: Manifest) -> list[str]:
    if not manifest.artifacts:
        return ["Nothing exported (no export/manifest.json)."]
    headers = ["id", "status", "MB", "made with", "compared with", "max abs diff", "top-1 agreement", "accuracy",
               "fp32 accuracy", "note"]  # fmt: skip
    cells = []
    for art in manifest.artifacts:
        versus = "PyTorch" if art.parity else "fp32 ONNX" if art.vs_fp32 else "-"
        compared = art.parity or art.vs_fp32
        cells.append(
            [
                art.id,
                art.status + ("" if art.passed or art.status == "skipped" else " (gate missed)"),
                num(art.bytes / 1e6 if art.files else None, ".3f"),
                how_made(art),
                versus,
                num(compared.max_abs_diff if compared else None, ".3g"),
                num(compared.top1_agreement if compared else None, ".4%"),
                num(art.accuracy, ".4f"),
                num(art.fp32_accuracy, ".4f"),
                first_line(art.reason or ""),
            ]
        )
    return [markdown_table(headers, cells)]


def gate_markdown(gate: GateVerdict) -> str:
    verdict = ("PASSED" if gate.passed else "FAILED") if gate.gated else "Best student row"
    return f"**{verdict}**: {gate.message}"


def report_markdown(
    recipe: Recipe | str,
    models: dict[str, ModelMetrics],
    bench: BenchResult | None,
    manifest: Manifest,
    gate: GateVerdict | None,
    stages: StageTimes | None = None,
) -> str:
    """``recipe``: the run's validated recipe, or why it could not be read (the rest of the report still renders);
    ``stages``: the wall time of each stage of the last `kdeploy run`, if one finished here."""
    name, section = (recipe.name, _recipe_section(recipe)) if isinstance(recipe, Recipe) else ("?", [f"- {recipe}"])
    parts = [f"# kdeploy report: {name}", "", "## Recipe", "", *section]
    if gate:
        parts += ["", "## Deployment gate", "", gate_markdown(gate)]
    parts += ["", "## Training (PyTorch, test set)", "", *_training_section(models)]
    if stages:
        parts += ["", "## Time", "", f"`kdeploy run`, wall time per stage ({stages.finished}): {stages.summary()}."]
    parts += ["", "## Benchmark", ""]
    parts += [bench_markdown(bench).rstrip()] if bench else ["Not benchmarked yet: run `kdeploy bench`."]
    parts += ["", "## Export parity (ONNX Runtime vs PyTorch)", "", *_parity_section(manifest)]
    return "\n".join(parts) + "\n"


def regate(run: Run, bench: BenchResult | None) -> GateVerdict | None:
    """The gate re-evaluated on the current bench.json with the thresholds saved in ``gate.json``."""
    path = run.gate_path
    if bench is None or not path.is_file():
        return None
    try:
        saved = GateVerdict.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt JSON; delete it or re-run `kdeploy run`") from None
    except (KeyError, TypeError) as exc:
        why = first_line(exc)
        raise UserError(f"{path}: not a kdeploy gate file ({why}); delete it or re-run `kdeploy run`") from None
    return evaluate_gate(bench.rows, saved.max_accuracy_drop, saved.min_speedup, saved.batch_size)


def _read_recipe(run: Run) -> Recipe | str:
    try:
        return run_recipe(run)
    except UserError as exc:
        return first_line(exc)


def write_report(run: Run, render_bench: bool = True) -> Path:
    """Re-render bench.csv/.md/pareto.png from bench.json (if any; ``render_bench=False`` when the bench that
    wrote them just ran) and write ``report.md``; measures nothing."""
    recipe = _read_recipe(run)
    bench = read_bench(run) if run.bench_path.is_file() else None
    if bench and render_bench:
        write_bench_outputs(run, bench)
    gate = regate(run, bench)
    text = report_markdown(recipe, run.model_metrics(), bench, read_manifest(run), gate, run.read_stage_times())
    text += curves_markdown(run.root, run.read_history())
    return atomic.write_text(run.report_path, text)
