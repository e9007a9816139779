"""timm models: a small arch offline without pretrained weights, FitNet by module path, the offline and missing-extra
errors."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from kdeploy.distill import distill
from kdeploy.errors import UserError
from kdeploy.models import build_model, create_model, list_archs, model_meta, module_paths
from kdeploy.recipe import validate

from .cli_helpers import cli_command, cli_env
from .conftest import tiny_recipe

timm = pytest.importorskip("timm")
ARCH = "resnet10t"


def test_timm_arch_gives_logits_and_rebuilds_from_meta() -> None:
    torch.manual_seed(0)
    model = create_model("timm", num_classes=5, in_shape=(1, 28, 28), arch=ARCH, model_kwargs={"drop_rate": 0.1})
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 5)
    assert {"layer1", "layer2", "layer3", "fc"} <= set(module_paths(model))
    meta = model_meta("timm", None, {"arch": ARCH, "model_kwargs": {"drop_rate": 0.1}}, 5, (1, 28, 28))
    rebuilt = build_model(meta)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_list_archs_filters_by_pattern() -> None:
    archs = list_archs("timm", "resnet1*")
    assert ARCH in archs and "resnet18" in archs and all(a.startswith("resnet1") for a in archs)
    assert "resnet18" in list_archs("torchvision", "resnet*")
    with pytest.raises(UserError, match=r"model 'cnn' takes no 'arch'; models with an arch list: timm, torchvision"):
        list_archs("cnn")


def test_timm_bad_arguments_are_one_line() -> None:
    with pytest.raises(UserError, match=r"unknown timm arch 'resnet10x' \(did you mean 'resnet10t'\?\)"):
        create_model("timm", num_classes=5, in_shape=(3, 32, 32), arch="resnet10x")
    with pytest.raises(UserError, match=r"set 'in_chans' outside model_kwargs"):
        create_model("timm", num_classes=5, in_shape=(3, 32, 32), arch=ARCH, model_kwargs={"in_chans": 3})
    with pytest.raises(UserError, match=r"model 'timm': unexpected argument 'weights'"):
        create_model("timm", num_classes=5, in_shape=(3, 32, 32), weights="DEFAULT")


def test_pretrained_offline_fails_fast_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot load pretrained timm weights for 'resnet10t': .*pretrained: false"):
        create_model("timm", num_classes=5, in_shape=(3, 32, 32), arch=ARCH, pretrained=True)
    assert time.perf_counter() - t0 < 10


def test_fitnet_hint_on_a_timm_student(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root, baseline=False, data__limit=300)
    raw["teacher"]["epochs"] = raw["student"]["epochs"] = 1
    raw["student"].update(model="timm", kwargs={"arch": ARCH})
    raw["distill"] = {"method": "fitnet", "student_layer": "layer2", "teacher_layer": "fc1", "kd_weight": 0.5}
    run = distill(validate(raw), out=tmp_path / "fit")
    assert float(run.read_history()[-1]["loss_hint"]) > 0


def test_missing_timm_names_the_extra(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "timm.py").write_text("raise ImportError('No module named timm')\n")
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env["PYTHONPATH"]])
    result = subprocess.run([*cli_command(), "models", "timm"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: model 'timm' needs the timm package; install it with: pip install 'kdeploy[timm]'"
    )
