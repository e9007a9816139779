"""Distillation methods: one small file per method, each registered by name.

Importing this package loads nothing heavy: the parameter schemas are in ``params`` (pydantic only), and the
losses (torch) load on first use of ``create_method`` or of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdeploy.lazy import exports

if TYPE_CHECKING:
    from kdeploy.distill.methods.base import METHOD_CLASSES, Method, Outputs, kl_soft, register_method
    from kdeploy.distill.methods.params import METHOD_PARAMS, MethodParams

BUILTIN = ("at", "ce", "dist", "dkd", "fitnet", "kd", "mse")  # this package's modules, one per method

__all__ = [
    "METHOD_CLASSES",
    "METHOD_PARAMS",
    "Method",
    "MethodParams",
    "Outputs",
    "create_method",
    "kl_soft",
    "register_method",
]
_getattr, __dir__ = exports(
    __name__,
    {
        "METHOD_CLASSES": "kdeploy.distill.methods.base:METHOD_CLASSES",
        "METHOD_PARAMS": "kdeploy.distill.methods.params:METHOD_PARAMS",
        "Method": "kdeploy.distill.methods.base:Method",
        "MethodParams": "kdeploy.distill.methods.params:MethodParams",
        "Outputs": "kdeploy.distill.methods.base:Outputs",
        "kl_soft": "kdeploy.distill.methods.base:kl_soft",
        "register_method": "kdeploy.distill.methods.base:register_method",
    },
)


def __getattr__(name: str) -> Any:
    if name == "METHOD_CLASSES":  # the registry, complete with the built-in losses
        load_builtin()
    return _getattr(name)


def load_builtin() -> None:
    """Import (register) the built-in methods' losses."""
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")


def create_method(name: str, params: dict[str, Any]) -> Method:
    """The method ``name`` with its validated parameters."""
    from kdeploy.distill.methods.base import METHOD_CLASSES

    load_builtin()
    cls = METHOD_CLASSES.get(name)
    return cls(cls.Params.model_validate(params))
