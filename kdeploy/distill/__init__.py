"""Distillation: methods (registry), feature hooks, one trainer, and the `distill` stage."""

from kdeploy.distill.methods import METHODS, Method, Outputs, create_method, register_method
from kdeploy.distill.run import distill
from kdeploy.distill.trainer import Trainer, World

__all__ = ["METHODS", "Method", "Outputs", "Trainer", "World", "create_method", "distill", "register_method"]
