"""What the CPU runs natively (kdeploy.cpu) and the choices made from it: `train.precision: auto` picks bf16
only where it is native, an emulated bf16 warns; static INT8 uses 7-bit weights on x86 CPUs without VNNI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdeploy import cpu
from kdeploy.distill.precision import resolve_precision
from kdeploy.quantize import auto_reduce_range, saturates

CPU = torch.device("cpu")


def _flags(monkeypatch: pytest.MonkeyPatch, text: str, machine: str = "x86_64") -> None:
    monkeypatch.setattr(cpu, "flags", lambda: frozenset(text.split()))
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)


def test_flags_are_read_from_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: fma avx512_bf16 in a name\nflags\t\t: fpu avx2 fma\n")
    assert cpu.read_flags(info) == {"fpu", "avx2", "fma"}
    assert cpu.read_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("flags", "bf16", "saturates", "amx"),
    [
        ("avx2 fma", False, True, False),
        ("avx2 avx512_vnni avx512_bf16", True, False, False),
        ("avx_vnni amx_bf16 amx_int8", True, False, True),
    ],
)
def test_native_features(monkeypatch: pytest.MonkeyPatch, flags: str, bf16: bool, saturates: bool, amx: bool) -> None:
    _flags(monkeypatch, flags)
    assert cpu.native_bf16() is bf16 and cpu.x86_without_vnni() is saturates and cpu.has_amx() is amx
    assert resolve_precision("auto", CPU) == ("bf16" if bf16 else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"


def test_arm_and_unknown_cpus_keep_8_bit_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    _flags(monkeypatch, "fp asimd asimddp", machine="aarch64")
    assert not cpu.x86_without_vnni()
    _flags(monkeypatch, "")
    assert not cpu.x86_without_vnni(), "nothing known: no change"


def test_explicit_bf16_on_an_emulating_cpu_warns_and_is_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _flags(monkeypatch, "avx2 fma")
    assert resolve_precision("bf16", CPU) == "bf16"
    assert "without AVX512-BF16/AMX is emulated" in capsys.readouterr().err


def test_qat_reduce_range_is_automatic_only_where_ort_kernels_saturate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _flags(monkeypatch, "avx2 fma")
    assert saturates() and not saturates("tensorrt")
    assert auto_reduce_range(None) is True and "has no VNNI" in capsys.readouterr().err
    assert auto_reduce_range(False) is False and auto_reduce_range(None, "tensorrt") is False
    _flags(monkeypatch, "avx2 avx512_vnni")
    assert auto_reduce_range(None) is False and auto_reduce_range(True) is True


def test_cpu_model_name_is_read_from_its_own_field(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2\n")
    assert cpu.read_field("model name", info) == "AMD EPYC 9B14"
    assert cpu.read_field("model name", tmp_path / "absent") == ""
    assert cpu.model_name()  # never empty: falls back to the platform, then "unknown CPU"
