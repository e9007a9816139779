"""The model registry: ``@register_model``, ``create_model`` and rebuilding a model from its metadata.

A model factory (function or class) takes keyword-only ``num_classes`` and ``in_shape`` (C, H, W)
plus its own keyword arguments, and returns an ``nn.Module`` mapping N×C×H×W floats to N×num_classes
logits. Weights files store :func:`model_meta` so that export and bench rebuild the same model with
:func:`build_model` without knowing how it was trained.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from torch import nn

from kdeploy.errors import UserError
from kdeploy.registry import Registry

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=Callable[..., Any])

MODELS: Registry[ModelFactory] = Registry("model")
_MODEL_FOLDERS: list[Path] = []  # where user targets are looked for after sys.path and the current folder

# Arguments every factory receives from the recipe's data section, never from the model kwargs.
_INJECTED = ("num_classes", "in_shape")


@overload
def register_model(name: F) -> F: ...
@overload
def register_model(name: str | None = None) -> Callable[[F], F]: ...
def register_model(name: str | F | None = None) -> F | Callable[[F], F]:
    """Register a model factory: ``@register_model()``, ``@register_model("name")`` or bare."""
    if callable(name):
        return MODELS.register(None)(name)
    return MODELS.register(name)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def create_model(name: str, *, num_classes: int, in_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names and bad arguments raise a one-line :class:`UserError`."""
    factory = MODELS.get(name)
    label = f"model {name!r}"
    shape = _check_shape(label, num_classes, in_shape)
    _check_kwargs(label, factory, kwargs)
    try:
        return factory(num_classes=num_classes, in_shape=shape, **kwargs)
    except ValueError as error:  # factories raise ValueError for bad values (negative width, ...)
        raise UserError(f"{label}: {error}") from None


def model_meta(
    name: str | None,
    target: str | None,
    kwargs: dict[str, Any] | None,
    num_classes: int,
    in_shape: Sequence[int],
) -> dict[str, Any]:
    """The JSON-serialisable description :func:`build_model` rebuilds a model from."""
    _require_one(name, target)
    meta = {
        "name": name,
        "target": target,
        "kwargs": dict(kwargs or {}),
        "num_classes": int(num_classes),
        "in_shape": [int(v) for v in in_shape],
    }
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as error:
        raise UserError(f"model {name or target!r}: kwargs must be plain YAML/JSON values ({error})") from None


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Rebuild a model from :func:`model_meta`'s dict (a registered name or a user ``target``)."""
    name, target = meta.get("name"), meta.get("target")
    kwargs = dict(meta.get("kwargs") or {})
    num_classes, in_shape = meta["num_classes"], meta["in_shape"]
    _require_one(name, target)
    if name is not None:
        _reject_injected(f"model {name!r}", kwargs)
        return create_model(name, num_classes=num_classes, in_shape=in_shape, **kwargs)

    label = f"model target {target!r}"
    shape = _check_shape(label, num_classes, in_shape)
    factory = import_target(target)
    kwargs = _with_injected(factory, kwargs, {"num_classes": num_classes, "in_shape": shape})
    _check_kwargs(label, factory, kwargs, hide=())
    return factory(**kwargs)


def check_model(name: str | None, target: str | None, kwargs: dict[str, Any]) -> None:
    """What :func:`build_model` checks before it calls the factory, without the data's ``num_classes`` and
    ``in_shape``: a recipe's unknown model, unimportable target or bad kwarg then fails before its data loads.
    The one-line error starts with the recipe key at fault: ``model:``, ``target:`` or ``kwargs:``."""
    _require_one(name, target)
    key, label = ("model", f"model {name!r}") if name is not None else ("target", f"model target {target!r}")
    try:
        factory = MODELS.get(name) if name is not None else import_target(str(target))
    except UserError as error:
        raise UserError(f"{key}: {error}") from None
    try:
        if name is not None:
            _check_kwargs(label, factory, kwargs)
        else:
            _check_kwargs(label, factory, _with_injected(factory, kwargs, dict.fromkeys(_INJECTED)), hide=())
    except UserError as error:
        raise UserError(f"kwargs: {error}") from None


def _with_injected(factory: Callable[..., Any], kwargs: dict[str, Any], injected: dict[str, Any]) -> dict[str, Any]:
    """A user target gets ``num_classes`` and ``in_shape`` when it accepts them and the kwargs do not give them."""
    accepted = _parameters(factory)
    return {**{k: v for k, v in injected.items() if k in accepted and k not in kwargs}, **kwargs}


def _require_one(name: str | None, target: str | None) -> None:
    if (name is None) == (target is None):
        raise UserError("model: set exactly one of 'name' (a registered model) or 'target' (module:Class)")


def import_target(target: str) -> Callable[..., Any]:
    """Resolve ``"package.module:Attr"`` (``Attr`` may be dotted) to the object it names."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"model target {target!r}: expected 'package.module:Class'")
    try:
        obj: Any = _import_user_module(module_name)
    except Exception as error:  # ImportError, but also a SyntaxError in the user's file
        reason = f"{type(error).__name__}: {error}"
        raise UserError(
            f"model target {target!r}: cannot import module {module_name!r} ({reason}); check the path and PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(
                f"model target {target!r}: module {module_name!r} has no attribute {attr!r}; "
                "check the path and PYTHONPATH"
            )
        obj = getattr(obj, part)
    # Only nn.Module classes: a run folder's weights metadata names its target too, and a shared run must not be
    # able to call an arbitrary function (``subprocess:getoutput``) when it is exported or benchmarked.
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UserError(f"model target {target!r}: {attr!r} is not a torch.nn.Module class; name a model class")
    return obj


def add_model_folder(folder: str | os.PathLike[str]) -> None:
    """Let user targets be found in ``folder`` too (``load_recipe`` adds the recipe's folder)."""
    path = Path(folder).resolve()
    if path not in _MODEL_FOLDERS:
        _MODEL_FOLDERS.append(path)


def _import_user_module(name: str) -> Any:
    """Import ``name`` from ``sys.path``, else from the current folder or a recipe's folder, as tools with
    ``module:attr`` targets do: ``target: "mymodels:TinyNet"`` next to the recipe works without PYTHONPATH."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        top = name.partition(".")[0]
        if error.name != top:  # the module exists but something it imports is missing: the user's to fix
            raise
        for folder in (Path.cwd(), *_MODEL_FOLDERS):
            if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
                sys.path.append(str(folder))  # appended: never shadows an installed module of the same name
                return importlib.import_module(name)
        raise


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def module_paths(model: nn.Module) -> list[str]:
    """Dotted names of all submodules, as accepted by feature hooks (``"layer2"``, ``"layer2.0.conv1"``)."""
    return [name for name, _ in model.named_modules() if name]


def _check_shape(label: str, num_classes: Any, in_shape: Any) -> tuple[int, int, int]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"{label}: num_classes must be a positive integer, got {num_classes!r}")
    try:
        shape = tuple(int(v) for v in in_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"{label}: in_shape must be [channels, height, width], got {in_shape!r}")
    return shape  # type: ignore[return-value]


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def _check_kwargs(
    label: str, factory: Callable[..., Any], kwargs: dict[str, Any], hide: Sequence[str] = _INJECTED
) -> None:
    """Reject unexpected or missing arguments before calling, so errors inside factories stay bugs."""
    params = _parameters(factory)
    kinds = {p.kind for p in params.values()}
    named = {
        k: p
        for k, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    accepted = [k for k in named if k not in hide]
    listing = ", ".join(accepted) if accepted else "none"
    _reject_injected(label, kwargs, hide)
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        for key in kwargs:
            if key not in named:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"{label}: unexpected argument {key!r}{hint}; accepted: {listing}")
    given = set(kwargs) | set(hide)
    for key, param in named.items():
        if param.default is inspect.Parameter.empty and key not in given:
            raise UserError(f"{label}: missing argument {key!r}; accepted: {listing}")


def _reject_injected(label: str, kwargs: dict[str, Any], injected: Sequence[str] = _INJECTED) -> None:
    for key in kwargs:
        if key in injected:
            raise UserError(f"{label}: {key} comes from the data settings; remove it from the model kwargs")


def list_archs(name: str, pattern: str = "*") -> list[str]:
    """Architectures a model family (``timm``, ``torchvision``) accepts as its ``arch`` kwarg, by shell pattern."""
    lister = getattr(MODELS.get(name), "list_archs", None)
    if lister is None:
        families = ", ".join(n for n in MODELS.names() if hasattr(MODELS.get(n), "list_archs"))
        raise UserError(f"model {name!r} takes no 'arch'; models with an arch list: {families}")
    return lister(pattern)
