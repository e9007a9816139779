"""Distillation: methods (registry), feature hooks, one trainer, and the `distill` stage.

Importing this package loads nothing heavy (the recipe reads ``kdeploy.distill.methods.params`` through it);
the names below load their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdeploy.lazy import exports

if TYPE_CHECKING:
    from kdeploy.distill.distributed import World
    from kdeploy.distill.methods import METHOD_CLASSES, Method, Outputs, create_method, register_method
    from kdeploy.distill.run import distill
    from kdeploy.distill.trainer import Trainer

__all__ = ["METHOD_CLASSES", "Method", "Outputs", "Trainer", "World", "create_method", "distill", "register_method"]
__getattr__, __dir__ = exports(
    __name__,
    {
        "METHOD_CLASSES": "kdeploy.distill.methods:METHOD_CLASSES",
        "Method": "kdeploy.distill.methods:Method",
        "Outputs": "kdeploy.distill.methods:Outputs",
        "create_method": "kdeploy.distill.methods:create_method",
        "register_method": "kdeploy.distill.methods:register_method",
        "distill": "kdeploy.distill.run:distill",
        "Trainer": "kdeploy.distill.trainer:Trainer",
        "World": "kdeploy.distill.distributed:World",
    },
)
