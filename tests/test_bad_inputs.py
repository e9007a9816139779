"""The bad-input corpus (tests/bad_inputs/recipes/*.yaml), every case run as its own ``kdeploy`` process.

Each corpus recipe's first line is ``# expect: REGEX``: the one error line must match it. Every case runs
``kdeploy distill CASE --out RUN --force`` against a copy of a real finished run, so an error raised after the
old run was cleared would show up as a changed folder: the folder must stay byte-identical.
Cases run through tests/forkserver.py (one forked process each, torch imported once); a few also run through
the installed console script to show both give the same answer.
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kdeploy.distill import distill
from kdeploy.models import create_model
from kdeploy.recipe import validate

from .cli_helpers import CORPUS, CliResult, ForkServer, assert_one_line_error, run_cli, tree_digest
from .conftest import tiny_recipe

CASES = sorted((CORPUS / "recipes").glob("*.yaml"))
MARKERS = ("yaml_payload_ran", "pickle_payload_ran")


def expectation(case: Path) -> str:
    first = case.read_text(encoding="utf-8").splitlines()[0] if case.stat().st_size else ""
    assert first.startswith("# expect: "), f"{case.name}: first line must be '# expect: REGEX'"
    return first.removeprefix("# expect: ").strip()


class Payload:
    """Pickled, this runs a shell command when unpickled: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save zip whose state_dict carries the payload next to an honest tensor."""
    torch.save({"fc1.weight": torch.zeros(2, 2), "fc1.bias": Payload(marker)}, path)
    return path


@dataclass
class Workspace:
    tmp: Path
    run: Path  # a finished tiny run: every case's --out is a copy of it
    results: dict[str, tuple[CliResult, dict[str, str], dict[str, str]]]


def case_args(ws_tmp: Path, run: Path, mnist: Path, case: Path, tag: str) -> tuple[list[str], Path]:
    """Write the case's recipe (placeholders filled) and a copy of ``run``; the CLI arguments and that copy."""
    text = case.read_text(encoding="utf-8")
    text = text.replace("{mnist}", str(mnist)).replace("{corpus}", str(CORPUS)).replace("{tmp}", str(ws_tmp))
    recipe = ws_tmp / "recipes" / f"{tag}-{case.name}"
    recipe.write_text(text, encoding="utf-8")
    out = ws_tmp / "runs" / f"{tag}-{case.stem}"
    shutil.copytree(run, out, symlinks=True)
    return ["-q", "distill", str(recipe), "--out", str(out), "--force"], out


@pytest.fixture(scope="module")
def workspace(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "recipes").mkdir()
    (tmp / "runs").mkdir()
    run = distill(
        validate(tiny_recipe(mnist_root, teacher__epochs=1, student__epochs=1, data__limit=300)), out=tmp / "base"
    ).root
    five = create_model("mlp", num_classes=5, in_shape=(1, 28, 28), hidden=[32])
    save_file({k: v.contiguous() for k, v in five.state_dict().items()}, str(tmp / "five_classes.safetensors"))
    write_evil_checkpoint(tmp / "evil.pt", tmp / "pickle_payload_ran")
    server = ForkServer()
    results = {}
    try:
        for case in CASES:
            args, out = case_args(tmp, run, mnist_root, case, "fork")
            before = tree_digest(out)
            results[case.name] = (server.run(args, tmp, timeout=90), before, tree_digest(out))
    finally:
        server.close()
    return Workspace(tmp, run, results)


def test_the_corpus_covers_the_issue() -> None:
    names = {c.stem for c in CASES}
    needed = {
        "not_yaml", "not_a_mapping", "unknown_top_key", "wrong_type", "zero_batch_size", "negative_lr",
        "unknown_model", "unknown_method", "unknown_dataset", "bad_feature_layer", "target_fixed_classes",
        "checkpoint_other_classes", "data_missing_root", "data_truncated_idx", "data_corrupt_jpeg",
        "data_imagefolder_no_images", "data_offline_download", "yaml_python_tag", "pickle_payload_checkpoint",
        "name_path_traversal",
    }  # fmt: skip
    assert needed <= names, f"missing corpus cases: {sorted(needed - names)}"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input_is_one_line_exit_2_and_the_run_is_untouched(workspace: Workspace, case: Path) -> None:
    result, before, after = workspace.results[case.name]
    assert_one_line_error(result, expectation(case))
    assert after == before, f"{case.name}: the existing run folder changed although the command failed"


@pytest.mark.parametrize("name", ["not_yaml", "data_corrupt_jpeg", "pickle_payload_checkpoint"])
def test_the_console_script_gives_the_same_answer(workspace: Workspace, mnist_root: Path, name: str) -> None:
    """The installed ``kdeploy`` script, started fresh, prints the same line with the same exit code."""
    case = CORPUS / "recipes" / f"{name}.yaml"
    args, out = case_args(workspace.tmp, workspace.run, mnist_root, case, "script")
    before = tree_digest(out)
    line = assert_one_line_error(run_cli(args, workspace.tmp, timeout=120), expectation(case))
    forked = workspace.results[case.name][0].stderr.strip().splitlines()[-1]
    assert line == forked.replace("fork-", "script-")
    assert tree_digest(out) == before


def test_payloads_never_ran(workspace: Workspace) -> None:
    for marker in MARKERS:
        assert not (workspace.tmp / marker).exists(), f"{marker}: code hidden in an input file was executed"


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """Control: the same kind of file does run its payload under full unpickling, so the refusal above counts."""
    marker = tmp_path / "ran"
    path = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_offline_download_fails_fast(workspace: Workspace) -> None:
    result, _, _ = workspace.results["data_offline_download.yaml"]
    assert result.seconds < 30, f"an offline download must give up quickly, took {result.seconds:.1f} s"
    target = workspace.tmp / "offline-download"
    leftovers = [p for p in target.rglob("*") if p.is_file()] if target.exists() else []
    assert not leftovers, f"a failed download left files behind: {leftovers}"


def test_nothing_escaped_the_output_folder(workspace: Workspace) -> None:
    """`name: ../../escaped` is refused by the schema; no folder of that name appears anywhere near."""
    for base in (workspace.tmp, workspace.tmp.parent, workspace.tmp / "runs"):
        assert not (base / "escaped").exists()
