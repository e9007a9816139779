"""Reliability: atomic writes everywhere, broken runs and artifacts, diverging training, untrusted resume
state, disk full and unwritable folders. CLI cases run as separate ``kdeploy`` processes (tests/forkserver.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file, safe_open, save_file

from kdeploy import atomic
from kdeploy.bench import BenchSettings, TimingSettings, bench
from kdeploy.distill import distill
from kdeploy.errors import UserError
from kdeploy.export import export_onnx
from kdeploy.models import create_model
from kdeploy.quantize import quantize
from kdeploy.recipe import validate
from kdeploy.runs import Run

from .cli_helpers import ForkServer, assert_one_line_error, tree_digest
from .conftest import tiny_recipe, write_recipe
from .test_bad_inputs import write_evil_checkpoint


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    srv = ForkServer()
    yield srv
    srv.close()


@dataclass
class AuditedRun:
    run: Run
    arrived: set[str]  # absolute paths that os.replace / os.rename moved a file onto


@pytest.fixture(scope="module")
def audited(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> AuditedRun:
    """distill -> export -> quantize -> bench in this process, recording every rename's destination."""
    arrived: set[str] = set()
    real_replace, real_rename = os.replace, os.rename

    def replace(src: str, dst: str, *args: object, **kwargs: object) -> None:
        real_replace(src, dst, *args, **kwargs)
        arrived.add(os.path.abspath(dst))

    def rename(src: str, dst: str, *args: object, **kwargs: object) -> None:
        real_rename(src, dst, *args, **kwargs)
        arrived.add(os.path.abspath(dst))

    root = tmp_path_factory.mktemp("audit") / "tiny"
    raw = tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=1, data__limit=300)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", replace)
        mp.setattr(os, "rename", rename)
        run = distill(validate(raw), out=root)
        export_onnx(run, models="student", parity_samples=256)
        quantize(run, int8=True, fp16=True, calib_samples=32, models="student")
        timing = TimingSettings(warmup=0, min_iters=1, min_seconds=0.0)
        bench(run, BenchSettings(batch_sizes=(1,), threads=1, runtimes=("torch", "onnxruntime"), timing=timing))
    return AuditedRun(run, arrived)


# ---- atomic writes -------------------------------------------------------------------------------------
def test_every_file_kdeploy_writes_arrives_by_rename(audited: AuditedRun) -> None:
    """A killed process can leave a hidden temp file, never a truncated file under a real name."""
    files = [p for p in audited.run.root.rglob("*") if p.is_file()]
    names = {str(p.relative_to(audited.run.root)) for p in files}
    expected = {"recipe.yaml", "metrics.json", "history.csv", "student.safetensors", "export/manifest.json"}
    expected |= {"export/student.onnx", "export/student.int8.onnx", "export/student.fp16.onnx", "bench.json"}
    assert expected <= names, f"the stages did not write what they should: {sorted(expected - names)}"
    direct = sorted(str(p.relative_to(audited.run.root)) for p in files if os.path.abspath(p) not in audited.arrived)
    assert not direct, f"written in place instead of temp-and-rename: {direct}"
    assert not [p for p in audited.run.root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging")]


def test_written_files_respect_the_umask(audited: AuditedRun) -> None:
    """Temp files are created 0600; the published file gets the mode a plain open() would have given."""
    mask = os.umask(0)
    os.umask(mask)
    for name in ("metrics.json", "student.safetensors", "bench.json", "export/manifest.json"):
        mode = stat.S_IMODE((audited.run.root / name).stat().st_mode)
        assert mode == 0o666 & ~mask, f"{name}: mode {oct(mode)}"


def test_a_failing_writer_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def no_space(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"metrics\.json: No space left on device; free space or choose another"):
        atomic.write_with(target, no_space)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with pytest.raises(KeyboardInterrupt):
        atomic.write_with(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# ---- broken runs and artifacts: export / quantize / bench ---------------------------------------------
def _wrong_input_onnx(path: Path) -> None:
    """A valid ONNX classifier for 3x32x32 inputs (the run's models take 1x28x28)."""
    weight = numpy_helper.from_array(torch.zeros(3 * 32 * 32, 10).numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "wrong_input",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _mismatched_weights(root: Path) -> None:
    """student.safetensors keeps its metadata (hidden [16]) but holds the tensors of a hidden [8] MLP."""
    path = root / "student.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    model = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[8])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)


def _not_a_run(root: Path) -> None:
    (root / "recipe.yaml").unlink()


def _no_weights(root: Path) -> None:
    for p in root.glob("*.safetensors"):
        p.unlink()


def _truncate(root: Path) -> None:
    path = root / "student.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _onnx_garbage(root: Path) -> None:
    (root / "export" / "student.onnx").write_text("this is not an ONNX protobuf\n")


def _onnx_wrong_input(root: Path) -> None:
    _wrong_input_onnx(root / "export" / "student.onnx")


BENCH = ["--models", "student", "--batch-sizes", "1", "--warmup", "0", "--iters", "1", "--seconds", "0"]
BENCH += ["--threads", "1", "--runtimes", "torch,onnxruntime"]
ARTIFACT_CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "export_not_a_run": (_not_a_run, ["export"], r"not a kdeploy run \(no recipe\.yaml\); pass a folder written by"),
    "bench_not_a_run": (_not_a_run, ["bench", *BENCH], r"not a kdeploy run \(no recipe\.yaml\)"),
    "quantize_not_a_run": (_not_a_run, ["quantize", "--int8"], r"not a kdeploy run \(no recipe\.yaml\)"),
    "export_no_weights": (_no_weights, ["export"], r"no trained models \(\*\.safetensors\); run `kdeploy distill`"),
    "export_truncated_weights": (
        _truncate,
        ["export", "--models", "student"],
        r"student\.safetensors: not a readable safetensors file \(.*\); re-run `kdeploy distill`",
    ),
    "bench_truncated_weights": (_truncate, ["bench", *BENCH], r"student\.safetensors: not a readable safetensors"),
    "export_shape_mismatch": (
        _mismatched_weights,
        ["export", "--models", "student"],
        r"student\.safetensors: weights do not fit the model \(shape mismatch fc1\.weight \(8, 784\) vs \(16, 784\)",
    ),
    "bench_shape_mismatch": (_mismatched_weights, ["bench", *BENCH], r"weights do not fit the model \(shape"),
    "bench_onnx_not_onnx": (
        _onnx_garbage,
        ["bench", *BENCH],
        r"student\.onnx: changed since it was exported \(sha256 differs .*\); re-run `kdeploy export`",
    ),
    "quantize_onnx_not_onnx": (
        _onnx_garbage,
        ["quantize", "--int8", "--models", "student"],
        r"student\.onnx: changed since it was exported and gated; re-run `kdeploy export --onnx`",
    ),
    "bench_onnx_wrong_input": (_onnx_wrong_input, ["bench", *BENCH], r"student\.onnx: changed since it was exported"),
    "quantize_onnx_wrong_input": (
        _onnx_wrong_input,
        ["quantize", "--fp16", "--models", "student"],
        r"student\.onnx: changed since it was exported and gated",
    ),
}


@pytest.mark.parametrize("name", sorted(ARTIFACT_CASES))
def test_broken_run_or_artifact_is_one_line(
    name: str, audited: AuditedRun, server: ForkServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tamper, command, pattern = ARTIFACT_CASES[name]
    tmp = tmp_path_factory.mktemp(name)
    root = tmp / "run"
    shutil.copytree(audited.run.root, root, symlinks=True)
    tamper(root)
    before = tree_digest(root)
    result = server.run(["-q", command[0], str(root), *command[1:]], tmp, timeout=120)
    assert_one_line_error(result, pattern)
    assert tree_digest(root) == before, f"{name}: the run folder changed"


# ---- diverging training and untrusted resume state ------------------------------------------------------
@dataclass
class Diverged:
    tmp: Path
    recipe: Path
    root: Path
    line: str


@pytest.fixture(scope="module")
def diverged(mnist_root: Path, server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> Diverged:
    """A teacher whose loss turns NaN at epoch 2, step 3 (300 samples, batch 64: 5 steps per epoch)."""
    tmp = tmp_path_factory.mktemp("diverge")
    raw = tiny_recipe(mnist_root, teacher__epochs=3, data__limit=300, baseline=False)
    raw["teacher"] = {"target": "usermodels:DivergesAfter", "kwargs": {"steps": 5 + 2}, "epochs": 3}
    recipe = write_recipe(tmp / "diverge.yaml", raw)
    root = tmp / "run"
    result = server.run(["-q", "distill", str(recipe), "--out", str(root)], tmp)
    pattern = (
        r"teacher: loss became nan at epoch 2, step 3 \(last good checkpoint kept in .*state/teacher\.pt\); "
        r"lower teacher\.lr or check the data"
    )
    return Diverged(tmp, recipe, root, assert_one_line_error(result, pattern))


def test_divergence_keeps_the_last_good_checkpoint(diverged: Diverged) -> None:
    state = torch.load(diverged.root / "state" / "teacher.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0, "the checkpoint is the one of the last completed epoch (epoch 1)"
    assert [row["epoch"] for row in state["history"]] == [1]
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (diverged.root / "teacher.safetensors").exists(), "no final weights for a model that diverged"
    assert not [p for p in diverged.root.rglob("*") if p.name.endswith(".tmp")]


def test_resume_refuses_a_planted_pickle(diverged: Diverged, server: ForkServer, tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(diverged.root, root, symlinks=True)
    marker = tmp_path / "payload_ran"
    write_evil_checkpoint(root / "state" / "teacher.pt", marker)
    before = tree_digest(root)
    result = server.run(["-q", "distill", str(diverged.recipe), "--out", str(root), "--resume"], tmp_path)
    assert_one_line_error(result, r"state/teacher\.pt: resume state unusable \(refused to unpickle it: .*\); delete it")
    assert not marker.exists(), "the pickle payload ran"
    assert tree_digest(root) == before


# ---- disk full, unwritable folders ---------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(mnt: Path, options: str, why_skip: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``mnt`` (needs root and mount rights; the test is skipped otherwise)."""
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {why_skip} here ({done.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB file system; atomic ENOSPC handling is also unit-tested where mounting is not allowed."""
    with tmpfs(tmp_path / "small", "size=256k", "tmpfs") as mnt:
        yield mnt


def test_disk_full_is_one_line_and_leaves_no_partial_file(
    small_tmpfs: Path, mnist_root: Path, server: ForkServer, tmp_path: Path
) -> None:
    """The teacher's first checkpoint (weights + Adam state, ~600 KB) does not fit on the 256 KiB disk."""
    raw = tiny_recipe(mnist_root, teacher__epochs=2, data__limit=300)
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    result = server.run(["-q", "distill", str(recipe), "--out", str(small_tmpfs / "run")], tmp_path)
    assert_one_line_error(result, r"cannot write .*state/teacher\.pt: no space left on device; free space or")
    left = [p for p in small_tmpfs.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.endswith(".tmp")], f"partial temp files left: {left}"
    assert not (small_tmpfs / "run" / "state" / "teacher.pt").exists()
    yaml.safe_load((small_tmpfs / "run" / "recipe.yaml").read_text())  # what was written is whole
    json.loads((small_tmpfs / "run" / "environment.json").read_text())


def test_unwritable_output_folder_is_one_line(mnist_root: Path, server: ForkServer, tmp_path: Path) -> None:
    """As root, chmod does not stop writes; a path below a regular file fails for everyone."""
    (tmp_path / "a_file").write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(mnist_root, data__limit=300))
    result = server.run(["-q", "distill", str(recipe), "--out", str(tmp_path / "a_file" / "run")], tmp_path)
    assert_one_line_error(result, r"cannot create .*a_file/run: .*a_file is a file; choose another --out")
    assert (tmp_path / "a_file").read_text() == "x"


def test_read_only_file_system_is_one_line(mnist_root: Path, server: ForkServer, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k", "read-only tmpfs") as ro:
        recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(mnist_root, data__limit=300))
        result = server.run(["-q", "distill", str(recipe), "--out", str(ro / "run")], tmp_path)
        assert_one_line_error(result, r"cannot write into .*/ro: permission denied or read-only; choose another --out")


def test_weights_files_stay_loadable(audited: AuditedRun) -> None:
    """Sanity for the fixture the artifact cases tamper with: untouched, everything loads."""
    for role in audited.run.roles():
        assert load_file(audited.run.weights_path(role))
    assert onnx.load(str(audited.run.export_dir / "student.onnx"))
