"""train.precision: `auto` picks bf16 only where the hardware has it natively, an emulated bf16 warns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdeploy.distill import precision
from kdeploy.distill.precision import cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("avx512f amx_bf16 amx_tile", True)],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="utf-8")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bf16_only_on_native_cpus(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"


def test_explicit_bf16_on_an_emulating_cpu_warns_and_is_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("bf16", CPU) == "bf16"
    assert "without AVX512-BF16/AMX is emulated" in capsys.readouterr().err
