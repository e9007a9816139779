"""The recipe: a validated YAML description of teacher, student, data and distillation.

Problems are reported one line per problem, each naming its key path
(``student.epochs: must be >= 1, got 0``), before any work starts.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdeploy.catalog import shipped_recipes  # noqa: F401  (kdeploy.recipe.shipped_recipes, as before)
from kdeploy.data import Augment, Dataset, load_dataset
from kdeploy.distill.methods.params import METHOD_PARAMS
from kdeploy.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = Field(description="dataset: mnist, fashion_mnist, cifar10, cifar100, imagefolder")
    root: str | None = Field(None, description="folder holding the data; else KDEPLOY_DATA, cache, system")
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    val_size: int | float = Field(5000, ge=0, description="held-out validation samples (int) or fraction")
    augment: Augment = Field(default_factory=Augment)
    download: bool = Field(False, description="let torchvision download the dataset when it is not found")
    limit: int | None = Field(None, ge=1, description="keep only this many train/test samples (smoke runs)")


class ModelConfig(_Strict):
    model: str | None = Field(None, description="registered model name (see `kdeploy models`)")
    target: str | None = Field(None, description='user model by import path: "package.module:Class"')
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | list[str] | None = Field(
        None,
        description=".safetensors or .pt/.pth weights: load, do not train (teacher only); a list: one file per member "
        "of an `ensemble` teacher; a kdeploy-written file alone, without `model`, builds the model it was saved from",
    )
    epochs: int = Field(10, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "step", "onecycle", "linear"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs at which `step` multiplies lr")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int | float = Field(0, ge=0, description="linear lr warm-up; a float is a fraction of epochs")
    batch_size: int | None = Field(None, ge=1, description="this model's training batch size instead of data's")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="smoothing of this model's cross-entropy term")
    ema: float | None = Field(
        None, gt=0, lt=1, description="decay of an EMA of the weights (e.g. 0.999): validated, tested and saved"
    )
    keep: Literal["best", "last"] = Field(
        "best", description="the epoch whose weights are kept, tested and saved: best on validation, or the last"
    )
    mixup: float = Field(0.0, ge=0, description="Beta(a, a) batch mixup; 0: off")
    cutmix: float = Field(0.0, ge=0, description="Beta(a, a) batch CutMix; 0: off (with mixup: one per batch)")
    augment: Augment | None = Field(
        None, description="this model's training augmentation instead of data.augment (the baseline follows student)"
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="teacher only: the seed it trains with (or a checkpoint was trained with), whose validation split "
        "every run then uses; `--seeds` trains that one teacher once and shares it; default: each run's own seed",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.model is None and self.target is None and isinstance(self.checkpoint, str):
            if self.kwargs:
                raise ValueError("kwargs without a model: give `model` too, or drop kwargs to build the checkpoint's")
            return self  # a kdeploy weights file names its model: `distill` builds that one
        if (self.model is None) == (self.target is None):
            raise ValueError("give exactly one of `model` (a registered name) or `target` (package.module:Class)")
        if self.target is not None and ":" not in self.target:
            raise ValueError(f'target must look like "package.module:Class", got {self.target!r}')
        if isinstance(self.checkpoint, list):
            self._ensemble_members(len(self.checkpoint))
        return self

    def _ensemble_members(self, files: int) -> None:
        """A list of checkpoints loads an ensemble, one file per member; ``kwargs.members`` defaults to their count."""
        if self.model != "ensemble":
            raise ValueError("a list of checkpoints loads an ensemble's members: set model: ensemble, with the "
                             "members' model in kwargs.model (or give one checkpoint file)")  # fmt: skip
        if files == 0:
            raise ValueError("checkpoint: the list is empty; give one weights file per ensemble member")
        members = self.kwargs.setdefault("members", files)
        if members != files:
            raise ValueError(f"checkpoint lists {files} files but kwargs.members is {members!r}; give one per member")


class DistillConfig(BaseModel):
    """`method` plus that method's own parameters, validated against the method's schema."""

    model_config = ConfigDict(extra="allow")
    method: str = "kd"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="auto: bf16 where native (bf16 GPUs, CPUs with AVX512-BF16/AMX), else fp32"
    )
    channels_last: bool = False
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads; default: all cores")
    teacher_cache: Literal["auto", "memory", "never"] = Field(
        "auto",
        description="auto: precompute teacher outputs once for every view the student's augmentation makes of "
        "an image (none; mirror images; whole-pixel shifts, when there are no more views than student epochs) and "
        "keep them in the user cache for later runs with the same teacher and data; memory: precompute them for "
        "this run only; never: run the teacher per batch",
    )
    scale_lr: bool = Field(False, description="multiply lr by world size under torchrun/DDP")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when torch sees one")
    tensorboard: bool = Field(False, description="per-epoch scalars under <run>/tensorboard/<model>")
    concurrent_students: bool | Literal["auto"] = Field(
        "auto",
        description="train the CE baseline and the distilled student side by side, each with half the threads; "
        "auto: on one CPU process with 2+ threads when the student draws no global randomness in training (no "
        "dropout), so both train as they would alone; true: whenever there is one process (no torch.compile)",
    )


# the distillation methods QAD fine-tunes with when the recipe distils with them (logits only, no warm-up epochs);
# any other method's recipe is fine-tuned with logits KD
QAD_METHODS = ("kd", "dist", "mse")


class QatConfig(_Strict):
    """Quantization-aware distillation (`kdeploy qat`): INT8 fake quantization, then fine-tuning of the student with
    the recipe's own loss where it is one of ``QAD_METHODS``, else with logits KD."""

    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (cosine to 0 over the QAT epochs)")
    per_channel: bool = Field(True, description="per-output-channel symmetric weight scales (else per tensor)")
    reduce_range: bool | None = Field(
        None, description="7-bit weights [-64, 64]; default: on x86 CPUs without VNNI (ORT's INT8 kernels saturate)"
    )
    calib_samples: int = Field(512, ge=1, description="training images that set the activation ranges")
    quantize_outputs: bool | None = Field(
        None,
        description="also simulate the layer outputs ORT's QDQ file quantizes (Conv, Linear, BatchNorm, GELU's ops), "
        "not only Conv/Linear inputs and the logits; default: on where the folded student keeps GELU or BatchNorm",
    )
    float_gelu: bool | None = Field(
        None,
        description="keep each exact GELU in float in the INT8 file (as `kdeploy quantize --float-gelu`) and simulate "
        "its output only; default: as `kdeploy quantize` (GELU's inner tensors quantized)",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="temperature of QAD's loss (distill.method where kd, dist or mse, else kd); default "
        "distill.temperature",
    )
    alpha: float | None = Field(
        None, ge=0, le=1, description="weight of the KD term where QAD fine-tunes with kd; default distill.alpha"
    )
    batch_size: int | None = Field(None, ge=1, description="default data.batch_size")


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    seed: int = 0
    data: DataConfig
    teacher: ModelConfig
    student: ModelConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    baseline: bool = True
    train: TrainConfig = Field(default_factory=TrainConfig)
    qat: QatConfig | None = Field(None, description="quantization-aware distillation; `kdeploy run` runs it when set")

    @model_validator(mode="after")
    def _method_params(self) -> Recipe:
        if self.distill.method not in METHOD_PARAMS:
            raise ValueError(METHOD_PARAMS.unknown_message(self.distill.method))
        return self

    @model_validator(mode="after")
    def _qat_alpha_is_kds(self) -> Recipe:
        method = self.distill.method
        if self.qat and self.qat.alpha is not None and method != "kd" and method in QAD_METHODS:
            raise ValueError(f"qat.alpha: QAD fine-tunes with the recipe's {method} loss, which has no alpha; drop "
                             f"qat.alpha (or set distill.method: kd)")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _only_teachers_are_loaded(self) -> Recipe:
        """Student and baseline always train; an ensemble teacher is averaged from models trained apart, so it is
        loaded, never trained."""
        if self.student.checkpoint:
            raise ValueError("student.checkpoint: only a teacher is loaded; the student and its baseline always train "
                             "(drop it, or load those weights as teacher.checkpoint)")  # fmt: skip
        if self.student.seed is not None:
            raise ValueError("student.seed: the student and its baseline train with the run's `seed` (or --seeds); "
                             "only a teacher has a seed of its own")  # fmt: skip
        if self.student.model == "ensemble":
            raise ValueError("student: an ensemble is a teacher only (trained members, averaged); pick a single model")
        if self.teacher.model == "ensemble" and not self.teacher.checkpoint:
            raise ValueError("teacher: an ensemble is loaded, not trained: give teacher.checkpoint, a list of one "
                             "weights file per member (train them first, e.g. one teacher per seed)")  # fmt: skip
        return self

    @property
    def teacher_seed(self) -> int:
        """The seed the teacher trains with: ``teacher.seed``, else the run's."""
        return self.seed if self.teacher.seed is None else self.teacher.seed

    def batch_size_for(self, stage: ModelConfig | QatConfig) -> int:
        """The training batch of a model or of QAT: its own ``batch_size``, else ``data.batch_size``."""
        return training_batch(stage, self.data.batch_size)


def training_batch(stage: ModelConfig | QatConfig, data_batch_size: int) -> int:
    """A stage's own ``batch_size``, else the data's: the one rule for every training loop's batch."""
    return stage.batch_size or data_batch_size


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(parts) or "recipe"


def _describe(err: dict[str, Any], valid_keys: dict[str, list[str]]) -> str:
    loc = _loc(err["loc"])
    if err["type"] == "extra_forbidden":
        parent, _, key = loc.rpartition(".")
        close = difflib.get_close_matches(key, valid_keys.get(parent, []), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{loc}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in {"greater_than_equal", "greater_than", "less_than", "less_than_equal"}:
        msg = msg.replace("Input should be", "must be").replace("greater than or equal to", ">=")
        msg = msg.replace("greater than", ">").replace("less than or equal to", "<=").replace("less than", "<")
        return f"{loc}: {msg}, got {err['input']!r}"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    if err["type"] == "string_pattern_mismatch" and loc == "name":
        return f"name: must be a plain folder name (letters, digits, _ . -; no slashes), got {err['input']!r}"
    return f"{loc}: {msg}" + (f", got {err['input']!r}" if not isinstance(err["input"], dict) else "")


def _valid_keys() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"": list(Recipe.model_fields)}
    for key, field in Recipe.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[key] = list(ann.model_fields)
    for key in ("data.augment", "teacher.augment", "student.augment"):
        out[key] = list(Augment.model_fields)
    out["qat"] = list(QatConfig.model_fields)  # Optional section: not found by the loop above
    return out


def validate(raw: Any, source: str = "recipe") -> Recipe:
    """Validate a parsed YAML mapping; all problems are reported together in one UserError."""
    if raw is None:
        raise UserError(f"{source}: the file is empty; write a recipe (see `kdeploy recipes` for examples)")
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping of keys, got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except pydantic.ValidationError as exc:
        keys = _valid_keys()
        problems = [_describe(e, keys) for e in exc.errors()]
        raise UserError(f"{source}: " + "; ".join(problems)) from None
    _validate_method_params(recipe, source)
    return recipe


def _validate_method_params(recipe: Recipe, source: str) -> None:
    schema = METHOD_PARAMS.get(recipe.distill.method)
    try:
        params = schema.model_validate(recipe.distill.params())
    except pydantic.ValidationError as exc:
        keys = {"distill": ["method", *schema.model_fields]}
        problems = [_describe({**e, "loc": ("distill", *e["loc"])}, keys) for e in exc.errors()]
        raise UserError(f"{source}: " + "; ".join(problems)) from None
    # store the defaults too, so the resolved recipe written into the run folder is complete; the schemas derive
    # nothing from other keys (KD's weights stay None unless given), so the resolved recipe means what was written
    for key, value in params.model_dump().items():
        setattr(recipe.distill, key, value)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:  # !!python/object and friends: never constructed
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{source}: YAML tag not allowed{where} ({exc.problem}); recipes are plain YAML: remove the tag"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{source}: not valid YAML{where}: {problem}; fix the syntax") from None


def _coerce(value: str) -> Any:
    """Type a --set value the way YAML would (numbers, booleans, lists, null)."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to the raw mapping; typing happens in the schema afterwards."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set student.epochs=3")
        node: Any = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _coerce(value)
    return raw


def load_recipe(
    path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    data_root: str | None = None,
) -> Recipe:
    """Read, override and validate a recipe file. ``data_root`` (from --data-root) wins over the file."""
    p = Path(path)
    if not p.is_file():
        hint = " (see `kdeploy recipes` for the shipped ones)"
        raise UserError(f"recipe {str(p)!r} not found{hint}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {p}: {exc}; pass a UTF-8 YAML file") from None
    raw = parse_yaml(text, str(p))
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [])
        if data_root:
            raw.setdefault("data", {})
            if isinstance(raw["data"], dict):
                raw["data"]["root"] = data_root
    recipe = validate(raw, str(p))
    if recipe.teacher.target or recipe.student.target:  # user models may sit next to the recipe
        from kdeploy.models.registry import add_model_folder

        add_model_folder(p.parent)
    return recipe


def load_data(recipe: Recipe) -> Dataset:
    """The recipe's dataset: the one call every stage makes (same root, limit, seed and validation split). The split
    is the teacher's seed's, so a shared teacher (``teacher.seed``) never trained on a run's validation images."""
    d = recipe.data
    seed = recipe.teacher_seed
    return load_dataset(d.name, root=d.root, download=d.download, val_size=d.val_size, seed=seed, limit=d.limit)


def dump_recipe(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
