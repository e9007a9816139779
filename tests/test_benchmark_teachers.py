"""The user ``target:`` teachers in benchmarks/ (ensemble_teacher.py), loaded as a recipe would load them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kdeploy.models.fast_cnn import FastCNN
from kdeploy.runs import load_state, load_state_file

from .conftest import benchmark_module

SHAPE = (3, 32, 32)
WIDTHS = (4, 8, 8)


def _member(tmp_path: Path, seed: int) -> tuple[FastCNN, Path]:
    torch.manual_seed(seed)
    model = FastCNN(num_classes=10, in_shape=SHAPE, widths=WIDTHS)
    model.init_from_data(torch.rand(64, *SHAPE))
    path = tmp_path / f"member{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), path


def test_ensemble_teacher_averages_its_members_logits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ens = benchmark_module("ensemble_teacher")
    members = [_member(tmp_path, seed) for seed in (1, 2)]
    out = tmp_path / "ens.safetensors"
    assert ens.main([str(out), *(str(p) for _, p in members)]) == 0
    assert "2 members" in capsys.readouterr().out

    teacher = ens.EnsembleTeacher(num_classes=10, in_shape=SHAPE, members=2, widths=WIDTHS)
    load_state(teacher, load_state_file(out), str(out))  # the strict loader a recipe's teacher.checkpoint uses
    teacher.eval()
    x = torch.rand(5, *SHAPE)
    with torch.no_grad():
        expected = (members[0][0](x) + members[1][0](x)) / 2
        torch.testing.assert_close(teacher(x), expected)
        assert not torch.allclose(members[0][0](x), members[1][0](x))  # two different members, not one twice


def test_ensemble_teacher_merge_names_a_missing_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ens = benchmark_module("ensemble_teacher")
    out = tmp_path / "ens.safetensors"
    assert ens.main([str(out), str(tmp_path / "absent.safetensors")]) == 2
    assert "absent.safetensors: checkpoint not found" in capsys.readouterr().err
    assert not out.exists()
