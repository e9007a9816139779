"""The deployment gate: the best student row against the teacher's PyTorch fp32 row at one batch size.

"Best" is the fastest student row (any format and runtime) that meets every threshold; when none does, the
closest miss is reported: the fastest row within the accuracy budget, else the most accurate row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from kdeploy.errors import UserError

if TYPE_CHECKING:
    from kdeploy.bench.records import BenchRow

REFERENCE = ("teacher", "pytorch")


@dataclass
class GateVerdict:
    """The deployment gate's thresholds and verdict, as ``gate.json`` holds them."""

    passed: bool
    gated: bool  # False: no thresholds, the verdict only names the fastest student row
    max_accuracy_drop: float | None
    min_speedup: float | None
    batch_size: int
    artifact: str
    runtime: str
    device: str
    accuracy: float
    teacher_accuracy: float
    accuracy_drop: float
    speedup: float | None
    p50_ms: float
    teacher_p50_ms: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateVerdict:
        """Raises KeyError naming the first missing field."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _ok(row: BenchRow, ref_acc: float, max_drop: float | None, min_speedup: float | None) -> tuple[bool, bool]:
    acc_ok = max_drop is None or ref_acc - row.accuracy <= max_drop + 1e-12
    speed_ok = min_speedup is None or (row.speedup or 0.0) >= min_speedup
    return acc_ok, speed_ok


def _rows_at(rows: list[BenchRow], batch_size: int, candidate: str) -> tuple[BenchRow, list[BenchRow]]:
    """The teacher's PyTorch row and the candidate's rows at the gate's batch size; either missing is a user error."""
    at = [r for r in rows if r.batch_size == batch_size]
    ref = next((r for r in at if r.key == REFERENCE), None)
    if ref is None:
        raise UserError(
            f"the gate needs the teacher's PyTorch row at batch {batch_size}; "
            f"bench with --batch-sizes including {batch_size} and --runtimes including torch"
        )
    cands = [r for r in at if r.model == candidate]
    if not cands:
        raise UserError(f"the gate needs {candidate} rows at batch {batch_size}; the bench has none")
    return ref, cands


def _choose(
    cands: list[BenchRow], ref: BenchRow, max_drop: float | None, min_speedup: float | None
) -> tuple[BenchRow, bool]:
    """The fastest row that passes; else the fastest within the accuracy limit; else the most accurate."""
    checks = {id(r): _ok(r, ref.accuracy, max_drop, min_speedup) for r in cands}
    passing = [r for r in cands if all(checks[id(r)])]
    acc_ok = [r for r in cands if checks[id(r)][0]]
    if passing:
        return max(passing, key=lambda r: r.speedup), True
    if acc_ok:
        return max(acc_ok, key=lambda r: r.speedup), False
    return max(cands, key=lambda r: (r.accuracy, r.speedup)), False


def _message(best: BenchRow, ref: BenchRow, passed: bool, max_drop: float | None, min_speedup: float | None,
             candidate: str) -> str:  # fmt: skip
    drop = ref.accuracy - best.accuracy
    limits = [f"accuracy drop {drop:+.4f}" + (f" (max {max_drop:g})" if max_drop is not None else "")]
    limits.append(f"speed-up {best.speedup:.2f}x" + (f" (min {min_speedup:g}x)" if min_speedup is not None else ""))
    message = (
        f"{best.model}:{best.format} on {best.runtime}/{best.device} at batch {best.batch_size}: "
        f"accuracy {best.accuracy:.4f} vs teacher PyTorch fp32 {ref.accuracy:.4f}, "
        f"p50 {best.latency_ms.p50:.4g} ms vs {ref.latency_ms.p50:.4g} ms; " + ", ".join(limits)
    )
    if max_drop is None and min_speedup is None:
        return "no thresholds set; fastest " + message
    if not passed and max_drop is not None and min_speedup is not None:
        message += f"; no {candidate} row meets both"
    return message


def evaluate_gate(
    rows: list[BenchRow],
    max_accuracy_drop: float | None = None,
    min_speedup: float | None = None,
    batch_size: int = 1,
    candidate: str = "student",
) -> GateVerdict:
    """The gate verdict: ``passed``, ``message`` and the chosen row's numbers (``gate.json``)."""
    ref, cands = _rows_at(rows, batch_size, candidate)
    best, passed = _choose(cands, ref, max_accuracy_drop, min_speedup)
    return GateVerdict(
        passed=passed,
        gated=max_accuracy_drop is not None or min_speedup is not None,
        max_accuracy_drop=max_accuracy_drop,
        min_speedup=min_speedup,
        batch_size=batch_size,
        artifact=f"{best.model}:{best.format}",
        runtime=best.runtime,
        device=best.device,
        accuracy=best.accuracy,
        teacher_accuracy=ref.accuracy,
        accuracy_drop=ref.accuracy - best.accuracy,
        speedup=best.speedup,
        p50_ms=best.latency_ms.p50,
        teacher_p50_ms=ref.latency_ms.p50,
        message=_message(best, ref, passed, max_accuracy_drop, min_speedup, candidate),
    )
