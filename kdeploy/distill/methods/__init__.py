"""Distillation methods: one small file per method, each registered by name."""

from kdeploy.distill.methods import at, ce, dkd, fitnet, kd  # noqa: F401  (registration)
from kdeploy.distill.methods.base import METHODS, Method, MethodParams, Outputs, kl_soft, register_method

__all__ = ["METHODS", "Method", "MethodParams", "Outputs", "create_method", "kl_soft", "register_method"]


def create_method(name: str, params: dict) -> Method:
    cls = METHODS.get(name)
    return cls(cls.Params.model_validate(params))
