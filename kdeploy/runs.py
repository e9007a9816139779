"""The run folder: the only hand-off between stages.

```
runs/<name>/
  recipe.yaml          resolved recipe
  environment.json     versions, CPU, threads
  teacher.safetensors  weights + JSON metadata (enough to rebuild the module)
  baseline.safetensors
  student.safetensors
  history.csv          one row per model and epoch
  metrics.json         test accuracy, params, time per model
  state/<role>.pt      resume state of an unfinished model (weights_only-loadable)
  export/              artifacts and manifest.json (export, quantize)
  bench.json           bench rows (+ bench.csv, bench.md, pareto.png)
  gate.json            the deployment gate's thresholds and verdict (`kdeploy run`)
  stages.json          wall seconds of each stage of the last `kdeploy run`
  report.md            everything above in one page
runs/latest -> <name>  the newest run
```
This module is the only one that spells these names: every other module asks a :class:`Run` for a path.
A multi-seed parent (:mod:`kdeploy.seeds`) holds ``seed<N>/`` run folders plus ``seeds.json`` and ``seeds.md``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from kdeploy import atomic
from kdeploy.cpu import accelerations, model_name
from kdeploy.errors import UserError, first_line
from kdeploy.jsonrecord import split_known

ROLES = ("teacher", "baseline", "student")
META_KEY = "kdeploy"
DEFAULT_RUNS_DIR = Path("runs")
LATEST = "latest"


def default_run_dir(name: str, out: str | os.PathLike[str] | None = None) -> Path:
    """Where a recipe's run goes: ``out`` when given, else ``runs/<recipe name>``."""
    return Path(out) if out is not None else DEFAULT_RUNS_DIR / name


class SeedsFolder:
    """A multi-seed parent: ``seed<N>/`` run folders plus ``seeds.json`` and ``seeds.md`` (:mod:`kdeploy.seeds`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def seed_run(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

    @property
    def summary_path(self) -> Path:
        return self.root / "seeds.json"

    @property
    def markdown_path(self) -> Path:
        return self.root / "seeds.md"

    def holds_seeds(self) -> bool:
        """Whether the folder is (part of) a multi-seed run."""
        return self.summary_path.is_file() or any((p / "recipe.yaml").is_file() for p in self.root.glob("seed*"))


def point_latest(parent: Path, target: Path) -> None:
    """``<parent>/latest`` -> ``target`` (a relative symlink, replaced atomically); a text file where symlinks
    are not supported. ``target`` may sit deeper (a multi-seed run's ``<name>/seed0``)."""
    link, tmp = parent / LATEST, parent / f".{LATEST}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target.resolve(), parent.resolve()), target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # filesystems without symlinks: a text file naming the run
        atomic.write_text(parent / f"{LATEST}.txt", str(target) + "\n")


@dataclass
class ModelMetrics:
    """One model's entry in ``metrics.json`` (what the trainer measured); unknown keys are kept in ``extra``."""

    accuracy: float | None = None  # test accuracy of the model selected on validation
    last_accuracy: float | None = None  # test accuracy after the last epoch
    val_accuracy: float | None = None
    best_epoch: int | None = None
    params: int | None = None
    train_seconds: float | None = None
    samples_per_second: float | None = None
    compile_seconds: float | None = None
    train_threads: int | None = None  # intra-op threads it trained with (half the cores side by side)
    train_precision: str | None = None  # train.precision as resolved: fp32, bf16 (autocast) or fp16
    checkpoint: str | list[str] | None = None  # a teacher loaded from weights instead of trained
    method: str | None = None  # the student's distillation method
    teacher_outputs: str | None = None  # "cached", "cached, both flip views", "cached, N views", "per-batch", "unused"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        optional = ("compile_seconds", "train_threads", "train_precision", "checkpoint", "method", "teacher_outputs")
        for key in optional:
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetrics:
        known, extra = split_known(cls, data)
        return cls(**known, extra=extra)


@dataclass
class RunMetrics:
    """``metrics.json``: each trained model's :class:`ModelMetrics` and the run-level fields the trainer writes;
    unknown keys are kept in ``extra``."""

    models: dict[str, ModelMetrics] = field(default_factory=dict)
    recipe: str = ""
    seed: int | None = None
    method: str | None = None
    world_size: int = 1
    backend: str | None = None
    dataset: dict[str, Any] = field(default_factory=dict)  # name, source and the split sizes
    teacher_outputs: str | None = None  # written when the run closes
    wall_seconds: float | None = None  # summed over resumed sessions; written when the run closes
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        run_level = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("models", "extra")}
        for late in ("teacher_outputs", "wall_seconds"):
            if run_level[late] is None:
                del run_level[late]
        return {"models": {role: m.to_dict() for role, m in self.models.items()}, **run_level, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetrics:
        known, extra = split_known(cls, data, skip={"models"})
        models = data.get("models") or {}
        return cls(
            models={role: ModelMetrics.from_dict(m) for role, m in models.items() if isinstance(m, dict)},
            **known,
            extra=extra,
        )


@dataclass
class StageTimes:
    """``stages.json``: the wall seconds of each stage of the last ``kdeploy run``, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    finished: str = ""  # ISO 8601, UTC

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> str:
        """``distill 250.1 s, export 14.0 s, ...; 320.6 s in all``."""
        parts = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.seconds.items())
        return f"{parts}; {self.total:.1f} s in all"

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "total_seconds": round(self.total, 1), "finished": self.finished}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageTimes:
        seconds = data.get("seconds")
        if not isinstance(seconds, dict) or not all(isinstance(v, int | float) for v in seconds.values()):
            raise ValueError("no seconds per stage")
        return cls({str(k): float(v) for k, v in seconds.items()}, str(data.get("finished", "")))


@dataclass(frozen=True)
class WeightsMeta:
    """A weights file's kdeploy metadata (written by the trainer): what rebuilds the module and feeds it."""

    role: str
    model: dict[str, Any]  # the registry's spec: ``build_model(meta.model)`` rebuilds the module
    in_shape: tuple[int, ...]  # one input, without the batch dimension
    mean: tuple[float, ...]  # per-channel input normalisation
    std: tuple[float, ...]
    accuracy: float | None  # test accuracy when the weights were saved

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsMeta:
        dataset = data.get("dataset") or {}
        return cls(
            role=str(data.get("role", "")),
            model=data["model"],
            in_shape=tuple(int(v) for v in data["model"]["in_shape"]),
            mean=tuple(float(v) for v in dataset.get("mean", ())),
            std=tuple(float(v) for v in dataset.get("std", ())),
            accuracy=data.get("accuracy"),
        )


class Run:
    """A run folder on disk."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ---- layout -------------------------------------------------------------------------
    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history_path(self) -> Path:
        return self.root / "history.csv"

    @property
    def environment_path(self) -> Path:
        return self.root / "environment.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def manifest_path(self) -> Path:
        return self.export_dir / "manifest.json"

    @property
    def bench_path(self) -> Path:
        return self.root / "bench.json"

    def bench_output(self, suffix: str) -> Path:
        """``bench.csv``, ``bench.md`` (``suffix`` = ``.csv`` / ``.md``)."""
        return self.root / f"bench{suffix}"

    @property
    def pareto_path(self) -> Path:
        return self.root / "pareto.png"

    @property
    def gate_path(self) -> Path:
        return self.root / "gate.json"

    @property
    def report_path(self) -> Path:
        return self.root / "report.md"

    @property
    def stages_path(self) -> Path:
        return self.root / "stages.json"

    def weights_path(self, role: str) -> Path:
        return self.root / f"{role}.safetensors"

    def state_path(self, role: str) -> Path:
        return self.root / "state" / f"{role}.pt"

    def roles(self) -> list[str]:
        """Model roles whose final weights exist, in pipeline order."""
        return [r for r in ROLES if self.weights_path(r).is_file()]

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Run:
        """An existing, finished-or-partial run; ``None`` means ``runs/latest``."""
        root = Path(path) if path is not None else DEFAULT_RUNS_DIR / LATEST
        if not root.exists():
            if path is None:
                raise UserError("no run given and runs/latest does not exist; run `kdeploy distill RECIPE` first")
            raise UserError(f"{root}: no such run folder; pass a folder written by `kdeploy distill`")
        run = cls(root.resolve())
        if not run.recipe_path.is_file():
            raise UserError(f"{root}: not a kdeploy run (no recipe.yaml); pass a folder written by `kdeploy distill`")
        return run

    def mark_latest(self) -> None:
        """Point ``<parent>/latest`` at this run."""
        point_latest(self.root.parent, self.root)

    # ---- weights ------------------------------------------------------------------------
    def save_weights(self, role: str, model: nn.Module, meta: dict[str, Any]) -> Path:
        return save_weights(self.weights_path(role), model, meta)

    def load_model(self, role: str) -> tuple[nn.Module, WeightsMeta]:
        path = self.weights_path(role)
        if not path.is_file():
            have = ", ".join(self.roles()) or "none"
            raise UserError(f"{self.root}: no {role} weights ({path.name}); models in this run: {have}")
        return load_model(path)

    # ---- metrics and history --------------------------------------------------------------
    def read_metrics(self) -> RunMetrics:
        """``metrics.json``, typed (empty when nothing was trained here)."""
        if not self.metrics_path.is_file():
            return RunMetrics()
        try:
            data = json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"{self.metrics_path}: corrupt JSON; re-run `kdeploy distill --resume`") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.metrics_path}: not a kdeploy metrics file; re-run `kdeploy distill --resume`")
        return RunMetrics.from_dict(data)

    def model_metrics(self) -> dict[str, ModelMetrics]:
        """``metrics.json``'s per-model entries, typed (empty when nothing was trained here)."""
        return self.read_metrics().models

    def write_metrics(self, metrics: RunMetrics) -> None:
        atomic.write_json(self.metrics_path, metrics.to_dict())

    def read_stage_times(self) -> StageTimes | None:
        """``stages.json`` (None when no `kdeploy run` finished here); a file it cannot read is a UserError."""
        if not self.stages_path.is_file():
            return None
        try:
            return StageTimes.from_dict(json.loads(self.stages_path.read_text(encoding="utf-8")))
        except (ValueError, AttributeError):  # bad JSON or text, not an object, no seconds per stage
            raise UserError(
                f"{self.stages_path}: not a kdeploy stage-times file; delete it or re-run `kdeploy run`"
            ) from None

    def write_stage_times(self, times: StageTimes) -> None:
        atomic.write_json(self.stages_path, times.to_dict())

    def read_history(self) -> list[dict[str, str]]:
        if not self.history_path.is_file():
            return []
        with open(self.history_path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.history_path, buf.getvalue())

    def remove_leftovers(self) -> None:
        """Delete temporary files a killed process left (they never sit under a real name)."""
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for staging in self.export_dir.glob(".staging-*"):
            shutil.rmtree(staging, ignore_errors=True)

    def clear(self) -> None:
        """Remove everything kdeploy wrote into this folder (for --force)."""
        if self.root.is_dir():
            shutil.rmtree(self.root)


# ---- weights I/O ----------------------------------------------------------------------------
def save_weights(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {META_KEY: json.dumps(meta)}
    return atomic.write_with(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def read_meta(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc}); re-run `kdeploy distill`") from None
    if raw is None:
        raise UserError(f"{path}: safetensors file without kdeploy metadata; it was not written by kdeploy")
    return json.loads(raw)


def load_model(path: Path) -> tuple[nn.Module, WeightsMeta]:
    """Rebuild a module from a kdeploy weights file via the model registry."""
    from kdeploy.models import build_model

    meta = WeightsMeta.from_dict(read_meta(path))
    model = build_model(meta.model)
    load_state(model, load_state_file(path), str(path))
    model.eval()
    return model, meta


def weights_file(path: Path) -> Path:
    """``path``, when it is a file; one line naming the fix when it is missing or a folder (a run, say)."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        what = f"one of its weights files ({', '.join(found)})" if found else "a weights file"
        raise UserError(f"{path}: a folder, not a weights file; pass {what}")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; fix the path")
    return path


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a .pt/.pth file without unpickling code."""
    suffix = weights_file(path).suffix.lower()
    try:
        if suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        raise UserError(
            f"{path}: cannot load weights ({first_line(exc, 200)}); pass a .safetensors file or a plain state_dict"
        ) from None
    except Exception as exc:  # pickle.UnpicklingError for payload-carrying pickles
        if type(exc).__name__ == "UnpicklingError":
            raise UserError(
                f"{path}: refused to unpickle (it holds more than tensors); save a plain state_dict or safetensors"
            ) from None
        raise
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state_dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_resume_state(path: Path) -> dict[str, Any]:
    """A trainer checkpoint (``state/<role>.pt``): tensors and plain values only, never arbitrary pickles."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a payload, RuntimeError/EOFError for a damaged zip
        first = first_line(exc, 200)
        what = "refused to unpickle it" if type(exc).__name__ == "UnpicklingError" else "cannot read it"
        raise UserError(
            f"{path}: resume state unusable ({what}: {first}); delete it to retrain that model, or re-run with --force"
        ) from None
    if not isinstance(obj, dict) or "epoch" not in obj or "model" not in obj:
        raise UserError(f"{path}: not a kdeploy resume state; delete it to retrain that model, or re-run with --force")
    return obj


CHECK_MODEL = "check the model and its kwargs"  # the fix for weights that do not fit, when the file names no model


def load_checkpoint(model: nn.Module, checkpoint: str | list[str]) -> None:
    """Load a recipe's ``checkpoint``: one weights file, or a list of one file per member of an ensemble."""
    if isinstance(checkpoint, str):
        load_state(model, load_state_file(Path(checkpoint)), checkpoint, fix=model_fix(Path(checkpoint)))
        return
    members = model.get_submodule("members")
    for member, path in zip(members, checkpoint, strict=True):
        load_state(member, load_state_file(Path(path)), path, fix=model_fix(Path(path)))


def saved_model_spec(path: Path) -> dict[str, Any] | None:
    """The registry spec a kdeploy-written weights file was saved from; ``None`` for another tool's file or a .pt."""
    try:
        spec = read_meta(path)["model"]
    except (UserError, KeyError, TypeError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def spec_label(spec: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A registry spec's model as a user names it: the registered name (else the user target) and its kwargs."""
    return spec.get("name") or spec.get("target"), spec.get("kwargs") or {}


def model_fix(path: Path) -> str:
    """What to do when ``path``'s weights do not fit: a kdeploy-written file names the model it was saved from."""
    spec = saved_model_spec(path)
    if spec is None:
        return CHECK_MODEL
    model, kwargs = spec_label(spec)
    return f"the file holds model {model!r} with kwargs {kwargs}: give the recipe that model"


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, fix: str = CHECK_MODEL) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"shape mismatch {', '.join(wrong[:2])}")
        raise UserError(f"{source}: weights do not fit the model ({'; '.join(parts)}); {fix}")
    model.load_state_dict(state)


def package_versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None where one is not installed), for run and artifact records."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for pkg in packages:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask on Linux, else every core): the default thread count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    versions = package_versions("torch", "torchvision", "onnx", "onnxruntime", "numpy", "kdeploy")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": model_name(),
        "cpu_accelerations": accelerations(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }
