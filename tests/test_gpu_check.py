"""benchmarks/gpu_check.py --smoke: the prepared device check runs end to end on a CPU (tiny data and models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CIFAR10, REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown(tmp_path: Path) -> None:
    if not (CIFAR10 / "cifar10-jpg.tar.gz").is_file():
        pytest.skip(f"CIFAR-10 tarball not found in {CIFAR10}")
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--data-root", str(CIFAR10), "--out", str(out), "--budget-s", "900"]
    cmd += ["--only", "cifar10_cnn_logits", "--only", "cifar10_cnn_feature", "--only", "cifar10_fast"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    jobs = {j["name"]: j for j in report["jobs"]}
    assert list(jobs) == ["cifar10_fast", "cifar10_cnn_logits", "cifar10_cnn_feature"]
    logits = jobs["cifar10_cnn_logits"]
    assert logits["status"] == "ok", logits["reason"]
    assert set(logits["accuracy"]) == {"teacher", "baseline", "student"}
    assert all(0.0 <= a <= 1.0 for a in logits["accuracy"].values())
    feature = jobs["cifar10_cnn_feature"]
    assert any(o.startswith("teacher.checkpoint=") for o in feature["overrides"])
    assert feature["status"] in ("ok", "timeout"), feature["reason"]  # a loaded CPU may hit the deadline
    if feature["status"] == "ok":  # the logits row's teacher was reused, not retrained
        assert feature["accuracy"]["teacher"] == logits["accuracy"]["teacher"]
        assert "baseline" not in feature["accuracy"]
    fast = jobs["cifar10_fast"]
    if (REPO / "recipes" / "cifar10_fast.yaml").is_file():
        assert fast["status"] in ("ok", "timeout"), fast["reason"]
    else:
        assert fast["status"] == "skipped" and "does not exist" in fast["reason"]
    rows = [(r["job"], r["role"], r["batch"]) for r in report["latency"]]
    assert ("cifar10_cnn_logits", "teacher", 1) in rows and ("cifar10_cnn_logits", "student", 8) in rows
    assert all(r["eager_ms"] and r["eager_ms"] > 0 for r in report["latency"] if not r["error"])
    assert report["environment"]["torch"] and "--smoke" in report["environment"]["command"]
    md = (out / "gpu_check.md").read_text()
    assert "| cifar10_cnn_logits | 0 | ok |" in md and "82.44 %" in md and "## Latency" in md


def test_job_table_names_existing_recipes() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    for job in gpu_check.JOBS:
        assert job.optional or (REPO / "recipes" / f"{job.recipe}.yaml").is_file(), job.recipe
        assert job.teacher_from is None or job.teacher_from in [j.name for j in gpu_check.JOBS]
    assert gpu_check.BENCH_BATCHES == (1, 256)
