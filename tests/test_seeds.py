"""`kdeploy distill --seeds`: one real tiny run per seed, then mean ± std checked against the statistics module."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdeploy.cli import app
from kdeploy.errors import UserError
from kdeploy.recipe import load_data, load_recipe
from kdeploy.runs import ModelMetrics, Run
from kdeploy.seeds import Stat, aggregate, parse_seeds

from .conftest import benchmark_module, tiny_recipe, write_recipe

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def multi(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("seeds")
    recipe = write_recipe(tmp / "tiny.yaml", tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=2))
    out = tmp / "runs" / "tiny"
    result = CliRunner().invoke(app, ["-q", "distill", str(recipe), "--seeds", "0,1,2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, recipe, result.stdout


def _per_seed(root: Path) -> dict[int, dict]:
    """Each seed's metrics.json models, as written on disk."""
    return {s: json.loads(Run.open(root / f"seed{s}").metrics_path.read_text())["models"] for s in SEEDS}


def test_one_complete_run_per_seed(multi: tuple[Path, Path, str]) -> None:
    root, _, _ = multi
    for s in SEEDS:
        run = Run.open(root / f"seed{s}")
        assert yaml.safe_load(run.recipe_path.read_text())["seed"] == s
        assert run.roles() == ["teacher", "baseline", "student"]
    teacher = {m["teacher"]["accuracy"] for m in _per_seed(root).values()}
    assert len(teacher) > 1, "different seeds give different initialisations and batch orders"
    assert (root.parent / "latest").resolve() == (root / "seed0").resolve(), "latest is a concrete run"
    assert not (root / "latest").exists()
    assert json.loads((root / "seeds.json").read_text())["teacher_seed"] is None, "each seed trained its own teacher"


def test_summary_matches_statistics_module(multi: tuple[Path, Path, str]) -> None:
    root, _, _ = multi
    saved = json.loads((root / "seeds.json").read_text())
    per_seed = _per_seed(root)
    assert saved["seeds"] == list(SEEDS)
    for role in ("teacher", "baseline", "student"):
        for key in ("accuracy", "last_accuracy"):
            values = [per_seed[s][role][key] for s in SEEDS]
            stat = saved["summary"][role][key]
            assert stat["values"] == values and stat["n"] == 3
            assert stat["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert stat["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert saved["per_seed"]["1"][role][key] == per_seed[1][role][key]
    gains = [per_seed[s]["student"]["accuracy"] - per_seed[s]["baseline"]["accuracy"] for s in SEEDS]
    assert saved["summary"]["student - baseline"]["accuracy"]["mean"] == pytest.approx(statistics.mean(gains))
    assert saved["summary"]["student - baseline"]["accuracy"]["std"] == pytest.approx(statistics.stdev(gains))


def test_last_epoch_accuracy_is_recorded(multi: tuple[Path, Path, str]) -> None:
    root, _, _ = multi
    for models in _per_seed(root).values():
        for m in models.values():
            assert 0.0 <= m["last_accuracy"] <= 1.0
        for role in ("baseline", "student"):  # 2 epochs: where the best epoch is the last, both are the same model
            if models[role]["best_epoch"] == 2:
                assert models[role]["last_accuracy"] == models[role]["accuracy"]
        assert models["teacher"]["last_accuracy"] == models["teacher"]["accuracy"], "1 teacher epoch"


def test_table_printed_and_written(multi: tuple[Path, Path, str]) -> None:
    root, _, stdout = multi
    saved = json.loads((root / "seeds.json").read_text())
    s = saved["summary"]["student"]["accuracy"]
    cell = f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}"
    assert cell in stdout
    md = (root / "seeds.md").read_text()
    assert f"| student | {cell} |" in md and "| student - baseline |" in md


def test_rerun_refuses_and_resume_keeps_results(multi: tuple[Path, Path, str]) -> None:
    root, recipe, _ = multi
    before = (root / "seeds.json").read_text()
    again = CliRunner().invoke(app, ["-q", "distill", str(recipe), "--seeds", "0,1,2", "--out", str(root)])
    assert again.exit_code == 2 and "already holds a multi-seed run" in again.output
    resumed = CliRunner().invoke(
        app, ["-q", "distill", str(recipe), "--seeds", "0,1,2", "--out", str(root), "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((root / "seeds.json").read_text())["summary"] == json.loads(before)["summary"]


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3, 1,3") == [3, 1]
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("", "a", "1,,x", "-1"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_aggregate_by_hand() -> None:
    per_seed = {
        0: {"teacher": ModelMetrics(accuracy=0.90, last_accuracy=0.80), "student": ModelMetrics(0.70, 0.7)},
        1: {"teacher": ModelMetrics(accuracy=0.92, last_accuracy=0.84), "student": ModelMetrics(0.74, 0.7)},
    }
    summary = aggregate(per_seed)
    assert summary["teacher"].accuracy.mean == pytest.approx(0.91)
    assert summary["teacher"].accuracy.std == pytest.approx(0.0141421356, abs=1e-9)  # |0.92 - 0.90| / sqrt(2)
    assert summary["teacher"].last_accuracy.mean == pytest.approx(0.82)
    assert summary["student"].last_accuracy.std == 0.0
    assert "baseline" not in summary and "student - baseline" not in summary
    per_seed[0]["baseline"], per_seed[1]["baseline"] = ModelMetrics(0.69, None), ModelMetrics(0.71, 0.69)
    gain = aggregate(per_seed)["student - baseline"]
    assert gain.accuracy.values == pytest.approx([0.01, 0.03])
    assert gain.last_accuracy.values == pytest.approx([0.01]), "a seed without the metric is left out"
    one = Stat.of([0.5, float("nan"), None])
    assert one.mean == 0.5 and one.std is None and one.n == 1
    assert one.to_json() == {"mean": 0.5, "std": None, "n": 1, "values": [0.5]}
    assert Stat.of([0.9, 0.92]).percent() == "91.00 ± 1.41" and Stat.of([]).percent() == "-"


def _paired_seeds(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """benchmarks/paired_seeds.py, which pairs students and baselines kept in different run folders: rc, out, err."""
    rc = benchmark_module("paired_seeds").main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(markdown: str) -> str:
    return markdown[markdown.index("| model") :]


def test_paired_seeds_gives_the_seeds_table(multi: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    root, _, _ = multi
    pairs = [f"{s}=" + ",".join([str(root / f"seed{s}")] * 2) for s in SEEDS]
    own = [f"{s}={root / f'seed{s}'}" for s in SEEDS]
    for args in (pairs, own):
        rc, out, err = _paired_seeds(capsys, *args)
        assert rc == 0, err
        assert _rows(out) == _rows((root / "seeds.md").read_text())
    rc, _, err = _paired_seeds(capsys, f"0={root / 'seed0'},{root / 'seed1'}")
    assert rc == 2 and "another seed" in err
    rc, _, err = _paired_seeds(capsys, f"1={root / 'seed0'}")
    assert rc == 2 and "not 1" in err


def test_paired_seeds_takes_a_ce_student_as_the_baseline(
    multi: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run trained with distill.method: ce and baseline: false is a baseline alone; a KD student is not."""
    root, _, _ = multi
    ce_run = tmp_path / "ce" / "seed0"
    shutil.copytree(root / "seed0", ce_run)
    metrics = json.loads((ce_run / "metrics.json").read_text())
    baseline = metrics["models"].pop("baseline")
    metrics["models"]["student"] = {**baseline, "method": "ce", "accuracy": 0.5, "last_accuracy": 0.5}
    (ce_run / "metrics.json").write_text(json.dumps(metrics))
    rc, out, err = _paired_seeds(capsys, f"0={root / 'seed0'},{ce_run}")
    assert rc == 0, err
    assert "| baseline | 50.00 | 50.00 | 1 | 50.00 |" in out

    metrics["models"]["student"]["method"] = "kd"
    (ce_run / "metrics.json").write_text(json.dumps(metrics))
    rc, _, err = _paired_seeds(capsys, f"0={root / 'seed0'},{ce_run}")
    assert rc == 2 and "no baseline" in err and "distill.method: ce" in err


def test_bench_kd_seeds_reads_the_seed_folders_as_seeds_json_has_them(multi: tuple[Path, Path, str]) -> None:
    """benchmarks/bench_kd_seeds.py rebuilds the statistics from the typed seed-folder metrics: the same numbers
    `kdeploy distill --seeds` wrote into seeds.json."""
    root, _, _ = multi
    stats = benchmark_module("bench_kd_seeds").seed_stats(root)
    saved = json.loads((root / "seeds.json").read_text())["summary"]
    assert {role: s.to_json() for role, s in stats.items()} == saved


def test_bench_kd_seeds_names_the_cpu_flags_that_change_its_numbers(tmp_path: Path) -> None:
    """The table's CPU cell: the name and the bf16/INT8 flags environment.json recorded (a Zen 4 and an AVX2-only
    EPYC share the name "AMD EPYC"), or the name alone for runs from before the flags were recorded."""
    run_cpu = benchmark_module("bench_kd_seeds").run_cpu
    env = tmp_path / "environment.json"
    cells = []
    for record in ({"cpu": "AMD EPYC", "cpu_accelerations": ["avx512_bf16", "avx512_vnni"]},
                   {"cpu": "AMD EPYC", "cpu_accelerations": []}, {"cpu": "AMD EPYC"}):  # fmt: skip
        env.write_text(json.dumps(record))
        cells.append(run_cpu(env))
    assert cells == ["AMD EPYC (avx512_bf16, avx512_vnni)", "AMD EPYC (no native bf16 or VNNI)", "AMD EPYC"]


def test_same_weights_compares_tensors_not_file_bytes(multi: tuple[Path, Path, str], tmp_path: Path) -> None:
    """benchmarks/same_weights.py: a rewrite with other metadata is IDENTICAL, another seed's models DIFFERENT."""
    from safetensors.torch import load_file, save_file

    root, _, _ = multi
    same_weights = benchmark_module("same_weights")
    for weights in (root / "seed0").glob("*.safetensors"):
        save_file(load_file(weights), tmp_path / weights.name, metadata={"written": "elsewhere"})
    assert (tmp_path / "student.safetensors").read_bytes() != (root / "seed0" / "student.safetensors").read_bytes()
    rewritten = same_weights.compare(root / "seed0", tmp_path)
    other_seed = same_weights.compare(root / "seed0", root / "seed1")
    assert [line.split()[0] for line in rewritten] == ["IDENTICAL"] * 3, rewritten
    assert [line.split()[0] for line in other_seed] == ["DIFFERENT"] * 3, other_seed
    (tmp_path / "baseline.safetensors").unlink()
    assert same_weights.compare(root / "seed0", tmp_path)[0].split()[0] == "MISSING"


def test_a_teacher_seed_trains_one_teacher_for_every_seed(mnist_root: Path, tmp_path: Path) -> None:
    """``teacher.seed``: the first seed's run trains the teacher with that seed, the others load it, and every run
    validates on the teacher's seed's split, so no student validates on images its teacher trained on."""
    shared = write_recipe(tmp_path / "shared.yaml", tiny_recipe(mnist_root, teacher__seed=0, teacher__epochs=1))
    plain = write_recipe(tmp_path / "plain.yaml", tiny_recipe(mnist_root, teacher__epochs=1))
    out, ref = tmp_path / "runs" / "shared", tmp_path / "runs" / "plain"
    for args in (["distill", str(shared), "--seeds", "1,2", "--out", str(out)],
                 ["distill", str(plain), "--out", str(ref), "--set", "baseline=false"]):  # fmt: skip
        result = CliRunner().invoke(app, ["-q", *args])
        assert result.exit_code == 0, result.output
    runs = [Run.open(out / "seed1"), Run.open(out / "seed2"), Run.open(ref)]
    recipes = [load_recipe(r.recipe_path) for r in runs]
    assert recipes[1].teacher.checkpoint == str(runs[0].weights_path("teacher")), "seed 2 loads seed 1's teacher"
    same_tensors = benchmark_module("same_weights").same_tensors
    assert all(same_tensors(r.weights_path("teacher"), runs[2].weights_path("teacher")) for r in runs[:2])
    metrics = [r.model_metrics() for r in runs]
    assert metrics[0]["teacher"].accuracy == metrics[1]["teacher"].accuracy == metrics[2]["teacher"].accuracy
    assert metrics[0]["student"].accuracy != metrics[1]["student"].accuracy, "the students still differ by seed"
    val = [load_data(r).val.labels for r in recipes]
    assert torch.equal(val[0], val[1]) and torch.equal(val[0], val[2]), "every run validates on seed 0's split"
    own = recipes[0].model_copy(update={"teacher": recipes[2].teacher})  # seed 1 without teacher.seed
    assert not torch.equal(load_data(own).val.labels, val[0]), "without teacher.seed, seed 1 draws its own split"
    saved = json.loads((out / "seeds.json").read_text())
    assert saved["teacher_seed"] == 0
    assert saved["summary"]["teacher"]["accuracy"]["n"] == 1, "one teacher is one sample, not one per seed"
    assert "One teacher, trained with seed 0 (`teacher.seed`), for every seed" in (out / "seeds.md").read_text()
