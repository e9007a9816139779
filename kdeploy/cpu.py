"""What this machine's CPU runs natively, from the Linux ``/proc/cpuinfo`` flags (elsewhere: nothing is known).

Two decisions depend on it: bf16 autocast pays only with AVX512-BF16 or AMX (``train.precision: auto``), and ONNX
Runtime's x86 INT8 kernels without a VNNI dot product (AVX2's ``vpmaddubsw``) add pairs of u8 x s8 products in
16 bits, which saturates for 8-bit weights; 7-bit weights (``reduce_range``) avoid it (``quantize`` auto).
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


def read_field(key: str, cpuinfo: Path = CPUINFO) -> str:
    """The value of the first ``key : value`` line of a cpuinfo file; empty when there is none (not Linux)."""
    try:
        lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    line = next((ln for ln in lines if ln.split(":", 1)[0].strip() == key), "")
    return line.partition(":")[2].strip()


def read_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first ``flags`` line of a cpuinfo file; empty when there is none (not Linux, not x86)."""
    return frozenset(read_field("flags", cpuinfo).split())


@cache
def flags() -> frozenset[str]:
    return read_flags()


@cache
def model_name() -> str:
    """The CPU model ("AMD EPYC", "Intel(R) Xeon(R) ..."), else what the platform module says, else "unknown CPU"."""
    return read_field("model name") or platform.processor() or "unknown CPU"


def has_amx() -> bool:
    """AMX bf16 tiles (Intel Xeon 4th generation on): what the bench scripts record next to every number."""
    return "amx_bf16" in flags()


def accelerations() -> list[str]:
    """The bf16 and INT8 flags this CPU has (``amx_bf16``, ``avx512_vnni``, ...): what makes its numbers differ."""
    return sorted(f for f in (*NATIVE_BF16, *INT8_DOT) if f in flags())


def native_bf16() -> bool:
    return any(f in flags() for f in NATIVE_BF16)


def x86_without_vnni() -> bool:
    """An x86 CPU whose ONNX Runtime INT8 kernels saturate on 8-bit weights (no VNNI/AMX dot product)."""
    x86 = platform.machine().lower() in {"x86_64", "amd64", "i686", "x86"}
    return x86 and bool(flags()) and not any(f in flags() for f in INT8_DOT)
