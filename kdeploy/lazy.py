"""Lazy package attributes (PEP 562), so importing a package costs only what is used.

``kdeploy``, ``kdeploy.distill`` and ``kdeploy.distill.methods`` name their public objects here instead of
importing them: ``import kdeploy`` (the CLI's first step) and the recipe's read of the method parameter
schemas then load neither torch nor the trainer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``names`` maps each public name to ``"module:attr"``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
