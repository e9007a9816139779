"""Recipe validation: every problem named by key path, before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdeploy.errors import UserError
from kdeploy.recipe import apply_overrides, dump_recipe, load_recipe, shipped_recipes, validate

from .conftest import RECIPES, tiny_recipe, write_recipe


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.description, "every shipped recipe has a one-line description"


def test_shipped_recipe_list_has_descriptions() -> None:
    found = dict(shipped_recipes())
    assert any(p.endswith("mnist_mlp.yaml") for p in found)
    assert all(found.values())


def test_mnist_mlp_recipe_matches_the_reference_system() -> None:
    r = load_recipe(RECIPES / "mnist_mlp.yaml")
    assert r.teacher.kwargs["hidden"] == [1200, 1200]
    assert r.student.kwargs["hidden"] == [800]
    assert (r.distill.method, r.distill.temperature, r.distill.alpha) == ("kd", 20, 0.9)
    # Hinton's construction: the teacher jittered, baseline and student on plain images (cached teacher logits)
    assert r.teacher.augment is not None and r.teacher.augment.translate == 2
    assert r.student.augment is not None and not r.student.augment.enabled and not r.data.augment.enabled


def test_hinton_consistent_differs_from_hinton_mnist_in_augmentation_and_schedule() -> None:
    """The consistent variant jitters every model (the teacher scores the student's batch) and trains baseline and
    student patiently (100 epochs, the last kept); nothing else moves, so its teacher is hinton_mnist's."""
    plain = load_recipe(RECIPES / "hinton_mnist.yaml")
    consistent = load_recipe(RECIPES / "hinton_mnist_consistent.yaml")
    assert plain.teacher.model_copy(update={"augment": None}) == consistent.teacher
    assert plain.teacher.augment == consistent.data.augment and consistent.data.augment.translate == 2
    patient = {"augment": None, "epochs": 100, "keep": "last"}
    assert plain.student.epochs == 30 and plain.student.keep == "best"
    assert plain.student.model_copy(update=patient) == consistent.student
    assert not plain.student.augment.enabled and consistent.student.augment is None  # the student follows data.augment
    assert plain.distill == consistent.distill and consistent.baseline


def check(raw: dict, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        validate(raw, "r.yaml")


def test_zero_epochs_names_the_key_path() -> None:
    check(tiny_recipe(Path("/x"), student__epochs=0), r"student\.epochs: must be >= 1, got 0")


def test_batch_size_for_a_stage_falls_back_to_the_data_batch() -> None:
    recipe = validate(tiny_recipe(Path("/x"), teacher__batch_size=256, qat={"batch_size": 32}))
    assert recipe.batch_size_for(recipe.teacher) == 256
    assert recipe.batch_size_for(recipe.student) == 64  # data.batch_size
    assert recipe.qat is not None and recipe.batch_size_for(recipe.qat) == 32


def test_unknown_key_suggests_the_closest() -> None:
    check(tiny_recipe(Path("/x"), student__epoch=3), r"student\.epoch: unknown key \(did you mean 'epochs'\?\)")


def test_wrong_type() -> None:
    check(tiny_recipe(Path("/x"), data__batch_size="big"), r"data\.batch_size: .*integer")


def test_all_problems_reported_together() -> None:
    raw = tiny_recipe(Path("/x"), student__epochs=0, teacher__lr=-1)
    with pytest.raises(UserError) as info:
        validate(raw, "r.yaml")
    assert "student.epochs" in str(info.value) and "teacher.lr" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_method_lists_valid_ones() -> None:
    check(
        tiny_recipe(Path("/x"), distill__method="kdx"), r"unknown distillation method 'kdx'.*valid: at, ce, dist, dkd"
    )


def test_method_parameters_are_validated() -> None:
    check(tiny_recipe(Path("/x"), distill__temperature=0), r"distill\.temperature: must be > 0")
    check(tiny_recipe(Path("/x"), distill__temprature=3), r"distill\.temprature: unknown key.*'temperature'")
    check({**tiny_recipe(Path("/x")), "distill": {"method": "fitnet"}}, r"distill\.student_layer: required")


def test_model_or_target_exactly_one() -> None:
    raw = tiny_recipe(Path("/x"))
    raw["student"]["target"] = "pkg.mod:Net"
    check(raw, "exactly one of `model`")


def test_a_list_of_checkpoints_loads_an_ensemble_teacher_only() -> None:
    ens = {"teacher__model": "ensemble", "teacher__kwargs": {"model": "mlp", "member_kwargs": {"hidden": [64]}}}
    recipe = validate(tiny_recipe(Path("/x"), **ens, teacher__checkpoint=["a.pt", "b.pt", "c.pt"]))
    assert recipe.teacher.kwargs["members"] == 3, "members defaults to the number of files"
    check(tiny_recipe(Path("/x"), teacher__checkpoint=["a.pt", "b.pt"]), r"teacher: .*set model: ensemble")
    check(tiny_recipe(Path("/x"), **ens, teacher__checkpoint=[]), r"teacher: checkpoint: the list is empty")
    mismatch = {**ens, "teacher__kwargs": {**ens["teacher__kwargs"], "members": 3}}
    check(tiny_recipe(Path("/x"), **mismatch, teacher__checkpoint=["a.pt", "b.pt"]), r"lists 2 files but .*is 3")
    check(tiny_recipe(Path("/x"), **ens), r"teacher: an ensemble is loaded, not trained: give teacher\.checkpoint")
    check(tiny_recipe(Path("/x"), student__model="ensemble", student__kwargs={"model": "mlp"}), r"teacher only")


def test_a_checkpoint_alone_names_a_teacher_and_a_student_is_never_loaded() -> None:
    bare = tiny_recipe(Path("/x"), teacher__checkpoint="runs/t/teacher.safetensors")
    del bare["teacher"]["model"], bare["teacher"]["kwargs"]
    assert validate(bare).teacher.model is None, "the weights file names the model"
    bare["teacher"]["kwargs"] = {"hidden": [64]}
    check(bare, r"teacher: kwargs without a model")
    loaded_student = tiny_recipe(Path("/x"), student__checkpoint="s.safetensors")
    check(loaded_student, r"student\.checkpoint: only a teacher is loaded")


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_recipe(write_recipe(tmp_path / "r.yaml", ["a", "b"]))  # type: ignore[arg-type]


def test_not_yaml(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed\n  x: {")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_recipe(p)


def test_missing_file() -> None:
    with pytest.raises(UserError, match="not found"):
        load_recipe("nope.yaml")


def test_set_overrides_are_typed_through_the_schema(tmp_path: Path) -> None:
    p = write_recipe(tmp_path / "r.yaml", tiny_recipe(Path("/x")))
    r = load_recipe(p, ["distill.temperature=8", "student.epochs=3", "student.kwargs.hidden=[5, 6]"])
    assert r.distill.temperature == 8 and r.student.epochs == 3 and r.student.kwargs["hidden"] == [5, 6]
    with pytest.raises(UserError, match="student.epochs: .*integer"):
        load_recipe(p, ["student.epochs=many"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        apply_overrides({}, ["student.epochs"])


def test_data_root_option_wins(tmp_path: Path) -> None:
    p = write_recipe(tmp_path / "r.yaml", tiny_recipe(Path("/x")))
    assert load_recipe(p, [], data_root="/elsewhere").data.root == "/elsewhere"


def test_resolved_recipe_round_trips_with_method_defaults(tmp_path: Path) -> None:
    raw = tiny_recipe(Path("/x"))
    raw["distill"] = {"method": "dkd"}
    r = validate(raw)
    dumped = dump_recipe(r)
    assert "warmup: 20" in dumped and "beta: 8.0" in dumped
    again = load_recipe(write_recipe(tmp_path / "again.yaml", __import__("yaml").safe_load(dumped)))
    assert dump_recipe(again) == dumped


def test_a_resolved_recipe_means_what_was_written_and_set_overrides_it(tmp_path: Path) -> None:
    """Re-running a run's recipe.yaml with --set distill.alpha=0.2 trains with alpha 0.2 (no stored weights win)."""
    from kdeploy.distill.methods.params import KDParams

    resolved = dump_recipe(validate(tiny_recipe(Path("/x"))))  # what the run folder keeps: alpha 0.7
    assert "ce_weight: null" in resolved and "kd_weight: null" in resolved
    path = tmp_path / "recipe.yaml"
    path.write_text(resolved)
    again = load_recipe(path, ["distill.alpha=0.2"])
    assert KDParams.model_validate(again.distill.params()).weights == pytest.approx((0.8, 0.2))
    explicit = load_recipe(path, ["distill.alpha=0.2", "distill.kd_weight=2.0"])
    assert KDParams.model_validate(explicit.distill.params()).weights == pytest.approx((0.8, 2.0))


def test_name_cannot_escape_the_runs_folder() -> None:
    check(tiny_recipe(Path("/x"), name="../../etc"), r"^r\.yaml: name: ")
