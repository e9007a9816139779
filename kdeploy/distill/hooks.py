"""Capture intermediate outputs by module path with forward hooks (after torchdistill's
``forward_hook.py``), so any model, a user's included, works unmodified."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import Tensor, nn

from kdeploy.errors import UserError


def resolve(model: nn.Module, path: str, role: str, key: str) -> nn.Module:
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.4) or names[:8]
    raise UserError(f"{key}: {role} has no module {path!r}; nearby module paths: {', '.join(close)}")


class FeatureHooks:
    """Record the outputs of the given submodules: for each, its first output since the last ``clear`` or ``pop``.

    First, not last: a model that runs a submodule twice in one forward pass (``fast_cnn``'s flip test-time
    augmentation averages the plain and the mirrored image) gives the features of the plain view, the one
    the other model of the pair sees. ``run`` clears, runs one forward pass and pops its features.
    """

    def __init__(self, model: nn.Module, paths: list[str], role: str, key: str) -> None:
        self.paths = list(paths)
        self.modules = [resolve(model, p, role, key) for p in self.paths]
        self.outputs: dict[str, Tensor] = {}
        self._handles: list = []

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            if path not in self.outputs:
                self.outputs[path] = output[0] if isinstance(output, tuple) else output

        return hook

    def attach(self) -> FeatureHooks:
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in zip(self.paths, self.modules, strict=True)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        self.outputs.clear()

    def run(self, forward: Callable[[Tensor], Tensor], images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``forward(images)`` and the features of that pass alone (evaluation passes between training steps run
        through the same hooks, so whatever they left is cleared first)."""
        self.clear()
        output = forward(images)
        return output, self.pop()

    def pop(self) -> list[Tensor]:
        feats = [self.outputs[p] for p in self.paths]
        self.outputs.clear()
        return feats
