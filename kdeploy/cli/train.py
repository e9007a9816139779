"""``distill``: teacher, CE baseline and distilled student into one run folder (one process, N under DDP, or seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kdeploy.cli.main import command, out, settings
from kdeploy.cli.options import DataRootOpt, ForceOpt, OutOpt, RecipeArg, ResumeOpt, SetOpt, set_args
from kdeploy.cli.tables import print_metrics, print_seeds
from kdeploy.errors import UserError

if TYPE_CHECKING:
    from kdeploy.recipe import Recipe

SeedsOpt = Annotated[
    str | None, typer.Option("--seeds", help="one run per seed into <out>/seed<N>, then mean +- std: 0,1,2")
]
GridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grid",
        metavar="KEY=V1,V2",
        help="one student per combination of distill.* values, chosen on validation: distill.temperature=2,4,8",
    ),
]
NprocOpt = Annotated[int | None, typer.Option("--nproc", help="train with N processes (DDP): starts torchrun for you")]


@command()
def distill(
    recipe: RecipeArg,
    set_: SetOpt = None,
    data_root: DataRootOpt = None,
    out_dir: OutOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    seeds: SeedsOpt = None,
    grid: GridOpt = None,
    nproc: NprocOpt = None,
) -> None:
    """Train the teacher (or load it), a CE-only baseline and the distilled student into one run folder."""
    from kdeploy import progress
    from kdeploy.distill.distributed import SilentReporter, world_from_env
    from kdeploy.distill.run import distill as run_distill
    from kdeploy.recipe import load_recipe

    config = load_recipe(recipe, set_ or [], data_root)
    if grid:
        if seeds is not None or nproc not in (None, 1) or resume:
            raise UserError("--grid runs one process, one seed, from the start: drop --seeds, --nproc and --resume")
        from kdeploy.grid import distill_grid

        chosen = distill_grid(config, grid, out=out_dir, force=force)
        out.print(chosen.markdown_path.read_text(encoding="utf-8"), highlight=False, markup=False)
        return
    if nproc is not None and nproc != 1:
        args = ["distill", str(recipe), *set_args(set_)]
        args += ["--data-root", data_root] if data_root else []
        args += ["--out", str(out_dir)] if out_dir is not None else []
        args += ["--resume"] * resume + ["--force"] * force + (["--seeds", seeds] if seeds else [])
        raise typer.Exit(_launch(config, nproc, args, out_dir, resume, force, seeds))
    world = world_from_env(config.train.device)
    if not world.main:  # under torchrun only rank 0 reports
        progress.set_reporter(SilentReporter())
    if seeds is not None:
        from kdeploy.seeds import distill_seeds, parse_seeds

        result = distill_seeds(config, parse_seeds(seeds), out=out_dir, resume=resume, force=force, world=world)
        if world.main:
            print_seeds(result.summary)
            first = result.runs[result.summary.seeds[0]].root
            out.print(f"multi-seed folder: {result.root} (seeds.json, seeds.md); latest -> {first}", highlight=False)
        world.close()
        return
    run = run_distill(config, out=out_dir, resume=resume, force=force, world=world)
    if world.main:
        print_metrics(run.read_metrics())
        out.print(f"run folder: {run.root}")
    world.close()


def _launch(
    config: Recipe, nproc: int, args: list[str], out_dir: Path | None, resume: bool, force: bool, seeds: str | None
) -> int:
    """``--nproc N``: check what every worker would trip over once, here, then start them under torchrun."""
    from kdeploy.distill.distributed import launch, world_from_env
    from kdeploy.distill.precision import resolve_precision
    from kdeploy.distill.run import prepare, run_folder
    from kdeploy.seeds import parse_seeds, prepare_parent, seeds_root

    device = world_from_env(config.train.device).device
    resolve_precision(config.train.precision, device)  # user errors: once, not per process
    if seeds is None:
        prepare(run_folder(config, out_dir), config, resume, force)
    else:
        parse_seeds(seeds)
        prepare_parent(seeds_root(config, out_dir), resume, force)
    flags = ["--debug"] * settings.debug + ["--quiet"] * settings.quiet
    return launch(nproc, [*flags, *args])
