"""Tiny real distillation runs on MNIST: the run-folder contract, resume, runs/latest."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdeploy.distill import distill, step
from kdeploy.distill.hooks import FeatureHooks
from kdeploy.errors import UserError
from kdeploy.evaluate import predict_logits, top1_accuracy
from kdeploy.export import export_onnx
from kdeploy.models.fast_cnn import FastCNN
from kdeploy.recipe import load_data, validate
from kdeploy.runs import Run, load_model, read_meta

from .conftest import Capture, InterruptAt, reporting_to, tiny_recipe


@pytest.fixture(scope="module")
def tiny_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return distill(validate(tiny_recipe(mnist_root)), out=out)


def test_run_folder_contents(tiny_run: Run) -> None:
    names = {p.name for p in tiny_run.root.iterdir()}
    assert {"recipe.yaml", "environment.json", "metrics.json", "history.csv"} <= names
    assert {"teacher.safetensors", "baseline.safetensors", "student.safetensors"} <= names
    assert not list(tiny_run.root.glob("state/*.pt")), "resume state is removed once a model is finished"
    assert not list(tiny_run.root.rglob("*.tmp")), "no temporary files left behind"


def test_metrics_contract(tiny_run: Run) -> None:
    metrics = json.loads(tiny_run.metrics_path.read_text())
    assert set(metrics["models"]) == {"teacher", "baseline", "student"}
    for m in metrics["models"].values():
        assert 0.0 <= m["accuracy"] <= 1.0
        assert m["params"] > 0 and m["train_seconds"] > 0 and m["samples_per_second"] > 0
    assert metrics["models"]["teacher"]["params"] == 784 * 64 + 64 + 64 * 10 + 10
    assert metrics["models"]["teacher"]["accuracy"] > 0.6, "a 2-epoch MLP on 400 samples beats chance by far"
    assert metrics["teacher_outputs"] == "cached", "no augmentation: teacher logits computed once"


def test_history_has_one_row_per_model_and_epoch(tiny_run: Run) -> None:
    with open(tiny_run.history_path) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["epoch"]) for r in rows] == [
        (m, str(e)) for m in ("teacher", "baseline", "student") for e in (1, 2)
    ]
    student = [r for r in rows if r["model"] == "student"]
    assert all(float(r["loss_kd"]) > 0 for r in student)
    assert all(float(r["samples_per_s"]) > 0 for r in rows)


def test_weights_rebuild_from_metadata(tiny_run: Run) -> None:
    model, meta = tiny_run.load_model("student")
    assert meta.model["name"] == "mlp" and meta.in_shape == (1, 28, 28) and meta.role == "student"
    assert len(meta.mean) == len(meta.std) == 1 and meta.accuracy == tiny_run.model_metrics()["student"].accuracy
    state = load_file(tiny_run.weights_path("student"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_latest_points_at_the_newest_run(tiny_run: Run) -> None:
    latest = tiny_run.root.parent / "latest"
    assert latest.resolve() == tiny_run.root.resolve()


def test_existing_run_is_not_clobbered(tiny_run: Run, mnist_root: Path) -> None:
    before = tiny_run.metrics_path.read_bytes()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        distill(validate(tiny_recipe(mnist_root)), out=tiny_run.root)
    with pytest.raises(UserError, match="recipe differs"):
        distill(validate(tiny_recipe(mnist_root, seed=1)), out=tiny_run.root, resume=True)
    assert tiny_run.metrics_path.read_bytes() == before


def test_bad_layer_path_lists_nearby_modules(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root)
    raw["distill"] = {"method": "fitnet", "student_layer": "fc9", "teacher_layer": "fc1"}
    with pytest.raises(UserError, match=r"distill: student has no module 'fc9'; nearby module paths: .*fc1"):
        distill(validate(raw), out=tmp_path / "r")
    assert not (tmp_path / "r").exists(), "nothing written before the recipe is known to work"


def test_feature_distillation_runs_with_hooks(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root, baseline=False)
    raw["teacher"]["epochs"] = raw["student"]["epochs"] = 1
    raw["distill"] = {"method": "fitnet", "student_layer": "fc1", "teacher_layer": "fc1", "kd_weight": 0.5}
    run = distill(validate(raw), out=tmp_path / "fit")
    metrics = run.read_metrics()
    assert metrics.teacher_outputs == "per-batch", "teacher features are needed, so it runs per batch"
    assert set(metrics.models) == {"teacher", "student"}
    hist = run.read_history()
    assert float(hist[-1]["loss_hint"]) > 0


@pytest.mark.parametrize("marker", ["teacher epoch 3/3", "student epoch 2/3"])
def test_resume_reaches_the_same_weights(mnist_root: Path, tmp_path: Path, marker: str) -> None:
    raw = tiny_recipe(mnist_root, teacher__epochs=3, student__epochs=3, data__augment={"translate": 1})
    raw["teacher"]["kwargs"]["dropout"] = 0.2
    full = distill(validate(raw), out=tmp_path / "full")

    with reporting_to(InterruptAt(marker)), pytest.raises(KeyboardInterrupt):
        distill(validate(raw), out=tmp_path / "cut")
    assert list((tmp_path / "cut" / "state").glob("*.pt")), "a checkpoint of the last completed epoch exists"
    resumed = distill(validate(raw), out=tmp_path / "cut", resume=True)

    for role in ("teacher", "baseline", "student"):
        a, b = load_file(full.weights_path(role)), load_file(resumed.weights_path(role))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{role} weights differ after resume"
    acc = {r: m.accuracy for r, m in full.model_metrics().items()}
    assert {r: m.accuracy for r, m in resumed.model_metrics().items()} == acc
    assert len(resumed.read_history()) == len(full.read_history())


@pytest.mark.parametrize("val_size", [0, 200])
def test_epoch_lines_show_val_only_with_a_validation_split(mnist_root: Path, tmp_path: Path, val_size: int) -> None:
    raw = tiny_recipe(mnist_root, data__val_size=val_size, teacher__epochs=1, student__epochs=1, baseline=False)
    with reporting_to(Capture()) as capture:
        distill(validate(raw), out=tmp_path / "run")
    lines = [m for m in capture.lines if " epoch 1/1: " in m]
    assert [m.split()[0] for m in lines] == ["teacher", "student"]
    assert all((" val 0." in m) == (val_size > 0) and "nan" not in m for m in lines), lines


def test_diverging_loss_stops_with_epoch_and_step(mnist_root: Path, tmp_path: Path) -> None:
    raw = tiny_recipe(mnist_root, teacher__lr=1e6, teacher__epochs=2, baseline=False)
    raw["teacher"]["optimizer"] = "sgd"
    raw["teacher"]["momentum"] = 0.0
    with pytest.raises(UserError, match=r"teacher: loss became (nan|inf) at epoch \d+, step \d+"):
        distill(validate(raw), out=tmp_path / "nan")


def test_output_under_a_file_fails_before_loading_data(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    raw = tiny_recipe(Path("/nonexistent"))  # the data root is never reached
    with pytest.raises(UserError, match=r"is a file; choose another --out"):
        distill(validate(raw), out=tmp_path / "file" / "run")


def test_resume_removes_leftover_temporary_files(tiny_run: Run, mnist_root: Path) -> None:
    leftover = tiny_run.root / ".student.safetensors.abc.tmp"
    leftover.write_bytes(b"partial")
    (tiny_run.export_dir / ".staging-x").mkdir(parents=True)
    distill(validate(tiny_recipe(mnist_root)), out=tiny_run.root, resume=True)
    assert not leftover.exists() and not (tiny_run.export_dir / ".staging-x").exists()


@pytest.mark.parametrize(
    ("augment", "epochs", "expected"),
    [
        ({"flip": True}, 2, "cached, both flip views"),
        ({"translate": 1}, 9, "cached, 9 views"),
        ({"translate": 1}, 8, "per-batch"),  # 9 views cost more teacher passes than 8 epochs of the live teacher
    ],
)
def test_views_cached_match_the_live_teacher(
    augment: dict[str, Any], epochs: int, expected: str, mnist_root: Path, tmp_path: Path
) -> None:
    """A student on random flips or shifts gets its teacher's logits from a table of every view of every image
    (each image and its mirror image; each of its shifts), computed once when that costs no more teacher passes
    than the epochs would; training matches the live teacher run on the very same augmented batches."""
    runs = {}
    for cache in ("auto", "never"):
        raw = tiny_recipe(mnist_root, student__augment=augment, student__epochs=epochs, baseline=False,
                          train__teacher_cache=cache)  # fmt: skip
        runs[cache] = distill(validate(raw), out=tmp_path / cache)
    outputs = {c: json.loads(r.metrics_path.read_text())["teacher_outputs"] for c, r in runs.items()}
    assert outputs == {"auto": expected, "never": "per-batch"}
    cached, live = (load_file(str(runs[c].root / "student.safetensors")) for c in ("auto", "never"))
    assert cached.keys() == live.keys()
    for name in cached:
        torch.testing.assert_close(cached[name], live[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("keep", "kept_epoch"), [("best", 1), ("last", 3)])
def test_keep_picks_the_epoch_whose_weights_are_kept(
    keep: str, kept_epoch: int, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation accuracy forced to fall every epoch: `keep: best` keeps epoch 1, `keep: last` the last epoch,
    whose weights are then the ones tested and saved (accuracy == last_accuracy)."""
    from kdeploy.distill.evaluation import SplitScorer

    real, falling = SplitScorer.accuracy, iter(range(1000))

    def accuracy(self: SplitScorer, model: torch.nn.Module, split: Any) -> float:
        return 0.9 - 0.001 * next(falling) if split is self.data.val else real(self, model, split)

    monkeypatch.setattr(SplitScorer, "accuracy", accuracy)
    raw = tiny_recipe(mnist_root, baseline=False, student__epochs=3, student__keep=keep)
    student = json.loads(distill(validate(raw), out=tmp_path / keep).metrics_path.read_text())["models"]["student"]
    assert student["best_epoch"] == kept_epoch
    assert (student["accuracy"] == student["last_accuracy"]) or keep == "best"


def test_a_ce_student_never_runs_the_teacher(mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`distill: {method: ce}` (a baseline trained alone) neither caches the teacher's outputs nor runs it per
    batch: on CIFAR-10 the flip-view table cost minutes of teacher passes that nothing read."""
    from kdeploy.distill import trainer as trainer_module

    def never(*a: object, **kw: object) -> object:
        raise AssertionError("the teacher ran for a method that does not use it")

    monkeypatch.setattr(trainer_module.Trainer, "teacher_cache", never)
    monkeypatch.setattr(step.TeacherOutputs, "__call__", never)
    raw = tiny_recipe(mnist_root, student__augment={"flip": True}, baseline=False, distill={"method": "ce"})
    run = distill(validate(raw), out=tmp_path / "ce")
    assert json.loads(run.metrics_path.read_text())["teacher_outputs"] == "unused"


@pytest.mark.parametrize("cache", ["never", "auto"])
def test_the_teacher_runs_in_the_training_precision(
    cache: str, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 training runs the teacher under the same bf16 autocast as the student, live per batch (in fp32 it ran
    2.5x slower on an AMX CPU than the student's own step needed) or once for the cached table (3.0-3.5x
    on one AVX512-BF16 core); fp32 training runs it without autocast."""
    from kdeploy.distill import trainer as trainer_module

    seen: dict[str, set[bool]] = {}

    def spy(real: Any) -> Any:
        def call(*a: object, **kw: object) -> object:
            seen.setdefault(precision, set()).add(torch.is_autocast_enabled("cpu"))
            return real(*a, **kw)

        return call

    monkeypatch.setattr(step.TeacherOutputs, "__call__", spy(step.TeacherOutputs.__call__))
    monkeypatch.setattr(trainer_module, "teacher_table", spy(trainer_module.teacher_table))
    for precision in ("bf16", "fp32"):
        raw = tiny_recipe(mnist_root, baseline=False, train__teacher_cache=cache, train__precision=precision)
        distill(validate(raw), out=tmp_path / precision)
    assert seen == {"bf16": {True}, "fp32": {False}}
    for precision in ("bf16", "fp32"):  # metrics.json says which precision each model trained in
        models = json.loads((tmp_path / precision / "metrics.json").read_text())["models"]
        assert {m["train_precision"] for m in models.values()} == {precision}, models
    outputs = json.loads((tmp_path / "fp32" / "metrics.json").read_text())["teacher_outputs"]
    assert outputs == ("cached" if cache == "auto" else "per-batch")


def test_a_checkpoint_teacher_teaches_like_the_one_trained_in_the_run(mnist_root: Path, tmp_path: Path) -> None:
    """A convolutional teacher run live (jittered batches, channels_last) gives the same student whether the run
    trained it or loaded its file, so seeds that share a teacher checkpoint reproduce the run that made it; the
    file alone, without `model` and `kwargs`, builds the model it was saved from."""
    raw = tiny_recipe(mnist_root, baseline=False, data__augment={"translate": 2}, train__channels_last=True,
                      teacher__model="fast_cnn", teacher__kwargs={"widths": [4, 8, 8]}, teacher__epochs=1)  # fmt: skip
    trained = distill(validate(raw), out=tmp_path / "trained")
    raw["teacher"]["checkpoint"] = str(trained.root / "teacher.safetensors")
    loaded = distill(validate(raw), out=tmp_path / "loaded")
    assert json.loads(loaded.metrics_path.read_text())["teacher_outputs"] == "per-batch"
    assert "train_precision" not in loaded.model_metrics()["teacher"].to_dict(), "a loaded teacher trained elsewhere"
    del raw["teacher"]["model"], raw["teacher"]["kwargs"]
    named_by_file = distill(validate(raw), out=tmp_path / "named_by_file")
    assert read_meta(named_by_file.root / "teacher.safetensors")["model"]["kwargs"] == {"widths": [4, 8, 8]}
    a = load_file(str(trained.root / "student.safetensors"))
    for run in (loaded, named_by_file):
        b = load_file(str(run.root / "student.safetensors"))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def two_member_ensemble(root: Path, out: Path, **changes: Any) -> dict[str, Any]:
    """Train tiny teachers apart at seeds 0 and 1 (runs of ``tiny_recipe(root, **changes)`` in ``out``); returns
    the ``teacher`` section that loads them as one ensemble."""
    files = []
    for seed in (0, 1):
        run = distill(validate(tiny_recipe(root, seed=seed, **changes)), out=out / f"t{seed}")
        files.append(str(run.root / "teacher.safetensors"))
    return {"model": "ensemble", "kwargs": {"model": "mlp", "member_kwargs": {"hidden": [64]}}, "checkpoint": files}


def test_an_ensemble_of_trained_teachers_teaches_and_reloads_as_one_file(mnist_root: Path, tmp_path: Path) -> None:
    """Two teachers trained apart (seeds 0 and 1) load as one ensemble teacher from a list of checkpoints; its
    accuracy is that of the mean logits, and the run's teacher.safetensors rebuilds the same ensemble."""
    flips = {"student__augment": {"flip": True}, "baseline": False, "student__epochs": 1}
    ens = two_member_ensemble(mnist_root, tmp_path, **flips)
    files = ens["checkpoint"]
    members = [load_model(Path(f))[0] for f in files]
    raw = tiny_recipe(mnist_root, **flips)
    raw["teacher"] = {**raw["teacher"], **ens}
    run = distill(validate(raw), out=tmp_path / "ens")
    teacher, meta = load_model(run.root / "teacher.safetensors")
    assert meta.model["name"] == "ensemble" and meta.model["kwargs"]["members"] == 2
    data = load_data(validate(raw))
    mean = sum(predict_logits(m, data.test, data.mean, data.std) for m in members) / 2
    torch.testing.assert_close(predict_logits(teacher, data.test, data.mean, data.std), mean)
    accuracy = top1_accuracy(mean.numpy(), data.test.labels.numpy())
    recorded = json.loads(run.metrics_path.read_text())["models"]["teacher"]
    assert recorded["accuracy"] == pytest.approx(accuracy) and recorded["checkpoint"] == files
    exported = {a.id: a for a in export_onnx(run)}
    assert exported["teacher:onnx"].passed, "the ensemble exports as one ONNX graph within the parity gate"


def test_an_ensembles_table_is_the_mean_of_its_members_stored_tables(tmp_path: Path) -> None:
    """Each member's flip-view table is stored when it is distilled from alone; the ensemble reads both and
    averages them, computing nothing, and its student trains as from the ensemble's own table. (Whole sources:
    every seed's table covers the same train and val images; ``limit`` would draw other images per seed.)"""
    from .test_data import write_idx

    root = write_idx(tmp_path / "idx", n_train=300, n_test=40)
    flips = {"data__limit": None, "data__val_size": 60, "student__augment": {"flip": True}, "baseline": False,
             "student__epochs": 1}  # fmt: skip
    ens = two_member_ensemble(root, tmp_path, **flips)
    stored = sorted((tmp_path / "teacher_store").glob("*.safetensors"))
    assert len(stored) == 2
    runs = {}
    for cache in ("auto", "memory"):
        raw = tiny_recipe(root, **flips, train__teacher_cache=cache)
        raw["teacher"] = {**raw["teacher"], **ens}
        with reporting_to(Capture()) as seen:
            runs[cache] = distill(validate(raw), out=tmp_path / cache)
        assert any("averaged over its 2 members' tables (2 read" in m for m in seen.lines) == (cache == "auto")
    assert sorted((tmp_path / "teacher_store").glob("*.safetensors")) == stored, "no ensemble table is stored"
    averaged, own = (load_file(str(runs[c].root / "student.safetensors")) for c in ("auto", "memory"))
    for name in averaged:
        torch.testing.assert_close(averaged[name], own[name], rtol=1e-5, atol=1e-6)


def test_each_model_can_have_its_own_augmentation(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hinton's setting: a jittered teacher, an unaugmented student and baseline, whose teacher logits are then
    cached; a model's own `augment` replaces data.augment for that model only."""
    from kdeploy.distill import trainer as trainer_module

    seen: list[tuple[str, object]] = []
    real_fit, real_iterate = trainer_module.Trainer.fit, trainer_module.iterate_batches_with_views
    current: dict[int, str] = {}  # per thread: baseline and student may train side by side

    def fit(self: object, role: str, *a: object, **kw: object) -> object:
        current[threading.get_ident()] = role
        return real_fit(self, role, *a, **kw)  # type: ignore[arg-type]

    def iterate(*a: object, **kw: object) -> object:
        if kw.get("shuffle"):
            seen.append((current[threading.get_ident()], kw.get("augment")))
        return real_iterate(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module.Trainer, "fit", fit)
    monkeypatch.setattr(trainer_module, "iterate_batches_with_views", iterate)
    raw = tiny_recipe(mnist_root, data__augment={"translate": 2}, student__augment={})
    run = distill(validate(raw), out=tmp_path / "run")
    augment = {
        role: {a.model_dump_json(exclude_defaults=True) if a else None for r, a in seen if r == role}
        for role, _ in seen
    }
    assert augment["teacher"] == {'{"translate":2}'}
    assert augment["baseline"] == augment["student"] == {None}
    assert json.loads(run.metrics_path.read_text())["teacher_outputs"] == "cached"
    from kdeploy.bench.report import _recipe_section
    from kdeploy.rundata import run_recipe

    summary = "\n".join(_recipe_section(run_recipe(run)))
    assert "augmentation translate 2)" in summary and "lr 0.003, augmentation none" in summary
    assert summary.endswith("- training: fp32")


def test_teacher_features_come_from_the_plain_view_under_flip_tta() -> None:
    # fast_cnn's flip TTA runs every block twice per forward pass; the hooked features must be the plain
    # image's, the view the student sees, not the mirrored one's (the last call)
    teacher = FastCNN(num_classes=10, in_shape=(3, 16, 16), widths=(4, 8, 8), tta="flip").eval()
    hooks = FeatureHooks(teacher, ["block2"], "teacher", "distill").attach()
    images = torch.randn(2, 3, 16, 16)
    teacher_outputs = step.TeacherOutputs(teacher, hooks, None)
    _, features = teacher_outputs(images, torch.arange(2))
    with torch.no_grad():
        plain = teacher.block2(teacher.block1(teacher.stem(images)))
        hooks.clear()
        teacher(images.flip(-1))  # an evaluation pass between steps leaves the mirrored image's features behind
    torch.testing.assert_close(features[0], plain)
    _, again = teacher_outputs(images, torch.arange(2))
    torch.testing.assert_close(again[0], plain)


def test_a_second_run_reads_the_teacher_outputs_from_the_store(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run from the same teacher checkpoint on the same data (here another temperature) reads the flip-view
    table the first run stored instead of running the teacher again, and trains exactly as from a fresh table."""
    from kdeploy.distill import trainer as trainer_module

    calls: list[int] = []
    real = trainer_module.teacher_table
    monkeypatch.setattr(trainer_module, "teacher_table", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    flips = {"student__augment": {"flip": True}, "baseline": False}
    first = distill(validate(tiny_recipe(mnist_root, **flips)), out=tmp_path / "first")
    stored = list((tmp_path / "teacher_store").glob("*.safetensors"))
    assert len(calls) == 1 and len(stored) == 1
    checkpoint = {"teacher__checkpoint": str(first.root / "teacher.safetensors")}
    runs = {}
    for cache in ("auto", "memory"):
        raw = tiny_recipe(mnist_root, **flips, **checkpoint, distill__temperature=2.0, train__teacher_cache=cache)
        with reporting_to(Capture()) as seen:
            runs[cache] = distill(validate(raw), out=tmp_path / cache)
        assert any(f"read from {stored[0]}" in m for m in seen.lines) == (cache == "auto")
    assert len(calls) == 2, "only the memory-only run computed the table again"
    assert list((tmp_path / "teacher_store").glob("*.safetensors")) == stored
    read, fresh = (load_file(str(runs[c].root / "student.safetensors")) for c in ("auto", "memory"))
    for name in read:
        torch.testing.assert_close(read[name], fresh[name], rtol=0, atol=0)


def test_seeds_share_one_stored_table(tmp_path: Path) -> None:
    """MNIST-style sources carve a new val split per seed. The stored table covers train and val together in the
    source's order, so seed 1 reads the table seed 0 stored, and trains as from a table of its own images."""
    from .test_data import write_idx

    root = write_idx(tmp_path / "idx", n_train=300, n_test=40)
    common = {"data__limit": None, "data__val_size": 60, "student__augment": {"flip": True}, "baseline": False}
    first = distill(validate(tiny_recipe(root, **common)), out=tmp_path / "seed0")
    stored = list((tmp_path / "teacher_store").glob("*.safetensors"))
    assert len(stored) == 1 and len(load_file(str(stored[0]))["table"]) == 300
    checkpoint = {"teacher__checkpoint": str(first.root / "teacher.safetensors")}
    runs = {}
    for cache in ("auto", "memory"):  # memory: a table of seed 1's own 240 training images
        with reporting_to(Capture()) as seen:
            raw = tiny_recipe(root, **common, **checkpoint, seed=1, train__teacher_cache=cache)
            runs[cache] = distill(validate(raw), out=tmp_path / cache)
        assert any(f"read from {stored[0]}" in m for m in seen.lines) == (cache == "auto")
    assert list((tmp_path / "teacher_store").glob("*.safetensors")) == stored
    shared, own = (load_file(str(runs[c].root / "student.safetensors")) for c in ("auto", "memory"))
    for name in shared:
        torch.testing.assert_close(shared[name], own[name], rtol=1e-5, atol=1e-6)


def test_the_store_key_follows_every_input(mnist_root: Path) -> None:
    """Another teacher weight, another view set or precision names another file; the same inputs the same one."""
    from kdeploy.distill.table_store import TableSpec, table_key
    from kdeploy.recipe import load_data

    data = load_data(validate(tiny_recipe(mnist_root)))
    teacher = torch.nn.Linear(784, 10)
    spec = TableSpec(flips=False, precision="fp32", channels_last=False, device="cpu", batch_size=256)
    key = table_key(teacher, data.train, data, spec)
    assert table_key(teacher, data.train, data, spec) == key
    assert table_key(teacher, data.train, data, TableSpec(True, "fp32", False, "cpu", 256)) != key
    assert table_key(teacher, data.train, data, TableSpec(False, "bf16", False, "cpu", 256)) != key
    shifted = {
        table_key(teacher, data.train, data, TableSpec(True, "fp32", False, "cpu", 256, shift=s)) for s in (0, 1, 2)
    }
    assert len(shifted) == 3 and key not in shifted
    with torch.no_grad():
        teacher.bias[3] += 1e-6
    assert table_key(teacher, data.train, data, spec) != key


def test_a_damaged_stored_table_is_computed_again(mnist_root: Path, tmp_path: Path) -> None:
    """A stored table is read back as written; a truncated file is a miss: computed again and replaced."""
    from kdeploy.distill.distributed import World
    from kdeploy.distill.table_store import TableSpec, stored_table
    from kdeploy.recipe import load_data

    data = load_data(validate(tiny_recipe(mnist_root)))
    teacher, spec = torch.nn.Linear(784, 10), TableSpec(False, "fp32", False, "cpu", 256)
    table = torch.randn(len(data.train), 10)
    _, source = stored_table(teacher, data.train, data, spec, World(), lambda: table)
    path = next((tmp_path / "teacher_store").glob("*.safetensors"))
    assert source is None
    assert stored_table(teacher, data.train, data, spec, World(), lambda: table * 0)[1] == path
    path.write_bytes(b"truncated")
    again, source = stored_table(teacher, data.train, data, spec, World(), lambda: table * 2)
    assert source is None and torch.equal(again, table * 2)
    assert torch.equal(load_file(str(path))["table"], table * 2)


def test_logit_mse_distils_end_to_end_and_logs_its_term(mnist_root: Path, tmp_path: Path) -> None:
    """The ``mse`` method through the trainer: the student learns from logits alone (no CE by default), and its
    history carries the term by name."""
    raw = tiny_recipe(mnist_root, baseline=False, distill={"method": "mse"}, student__epochs=6)
    run = distill(validate(raw), out=tmp_path / "mse")
    metrics = json.loads(run.metrics_path.read_text())
    assert metrics["models"]["student"]["accuracy"] > 0.5  # chance 0.1, its teacher 0.79
    header = (run.root / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss_mse", "loss_ce"} <= set(header)
