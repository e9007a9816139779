"""The READMEs stay true to the code: every command they show can run as written.

Commands are read from shell fences and inline code spans of README.md and benchmarks/README.md. A ``kdeploy``
command must name a real subcommand and real options, and its ``--set``/``--grid`` overrides must validate against
its recipe. A ``python benchmarks/...`` command must name a committed script that takes the flags shown. Every
repository path cited must exist. Placeholders (``--set distill.temperature=T``, ``runs/<name>``) are skipped.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

import kdeploy
from kdeploy.cli import app
from kdeploy.errors import UserError
from kdeploy.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/README.md")
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # KDEPLOY_DATA=... before a command
PREFIXES = {"time", "nohup"}
PLACEHOLDER = re.compile(r"(^|=)\$?[A-Z]$|<[^>]*>")
SEPARATORS = {"&&", "||", ";", "|"}
GLOBAL_OPTIONS = {"-q", "--quiet", "--debug", "--help"}
CLI = typer.main.get_command(app)
# folders a clean checkout lacks (``runs/``): a recipe there exists on the machine that ran it only
IGNORED_DIRS = {line.rstrip("/") for line in (ROOT / ".gitignore").read_text().split() if line.endswith("/")}


def _snippets(text: str) -> Iterator[str]:
    """Lines of bash (or unmarked) fences, continuations joined, then inline code spans with line wraps undone."""
    for lang, body in FENCE.findall(text):
        if lang in ("", "bash", "sh"):
            yield from body.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    yield from (span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose))


def _commands(snippet: str) -> Iterator[list[str]]:
    """Each command of a snippet as argv, without environment assignments or ``time``; prose is skipped."""
    try:
        words = shlex.split(snippet, comments=True)
    except ValueError:  # an apostrophe in prose
        return
    argv: list[str] = []
    for word in [*words, ";"]:
        if word not in SEPARATORS:
            argv.append(word)
            continue
        while argv and (ENV.match(argv[0]) or argv[0] in PREFIXES):
            argv.pop(0)
        if argv:
            yield argv
        argv = []


def _documented() -> list[tuple[str, list[str]]]:
    return [(doc, argv) for doc in DOCS for s in _snippets((ROOT / doc).read_text()) for argv in _commands(s)]


COMMANDS = _documented()


def _kdeploy_calls() -> list[tuple[str, str, list[str]]]:
    """``(doc, subcommand, arguments)`` of every ``kdeploy SUBCOMMAND ...`` shown, global options dropped."""
    calls = []
    for doc, argv in COMMANDS:
        if Path(argv[0]).name != "kdeploy":
            continue
        args = [a for a in argv[1:] if a not in GLOBAL_OPTIONS]
        if args and not args[0].startswith("-"):
            calls.append((doc, args[0], args[1:]))
    return calls


def _options(args: list[str]) -> set[str]:
    """The option names used (``--fp16|--int8`` names two alternatives)."""
    return {o.split("=", 1)[0] for a in args if a.startswith("--") for o in a.split("|")}


def _values(args: list[str], flag: str) -> list[str]:
    return [b for a, b in itertools.pairwise(args) if a == flag]


def test_the_readmes_show_many_commands() -> None:
    """The parsing finds what it checks (a regex that stopped matching must not pass silently)."""
    assert len(_kdeploy_calls()) >= 100
    assert sum(1 for _, argv in COMMANDS if argv[1:2] and argv[1].startswith("benchmarks/")) >= 40


def test_documented_kdeploy_commands_exist_with_their_options() -> None:
    wrong = []
    for doc, sub, args in _kdeploy_calls():
        if sub not in CLI.commands:
            wrong.append(f"{doc}: `kdeploy {sub}` is not a command")
            continue
        known = {o for p in CLI.commands[sub].params for o in p.opts + p.secondary_opts} | GLOBAL_OPTIONS
        wrong += [f"{doc}: `kdeploy {sub}` has no option {o}" for o in sorted(_options(args) - known)]
    assert not wrong, "\n".join(wrong)


def test_documented_recipe_overrides_validate() -> None:
    """``--set``/``--grid`` keys and values (a grid's first value) are valid for the recipe they are given with."""
    wrong, checked = [], 0
    for doc, sub, args in _kdeploy_calls():
        recipe = next((a for a in args if a.endswith(".yaml")), None)
        if sub not in ("distill", "run", "qat") or recipe is None or PLACEHOLDER.search(recipe):
            continue
        grids = [g if "{" in g or "[" in g else g.split(",")[0] for g in _values(args, "--grid")]
        overrides = _values(args, "--set") + grids
        if any(PLACEHOLDER.search(o) for o in overrides):
            continue
        if Path(recipe).parts[0] in IGNORED_DIRS:
            wrong.append(f"{doc}: kdeploy {sub} {recipe}: under an ignored folder, absent from a clean checkout")
            continue
        try:
            load_recipe(ROOT / recipe, overrides)
        except UserError as exc:
            wrong.append(f"{doc}: kdeploy {sub} {recipe}: {exc}")
        checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked >= 50


def test_documented_benchmark_scripts_exist_and_take_their_flags() -> None:
    wrong = []
    for doc, argv in COMMANDS:
        if not (Path(argv[0]).name.startswith("python") and argv[1:2] and argv[1].startswith("benchmarks/")):
            continue
        script = ROOT / argv[1]
        if not script.is_file():
            wrong.append(f"{doc}: {argv[1]} is not committed")
            continue
        source = script.read_text()
        own = argv[2 : argv.index("--")] if "--" in argv else argv[2:]  # after a bare --: another command's arguments
        wrong += [f"{doc}: {argv[1]} has no {o}" for o in sorted(_options(own)) if f'"{o}"' not in source]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS)
def test_documented_paths_exist(doc: str) -> None:
    """Files cited under the repository's own folders exist (``name.{json,md}`` names both)."""
    text = (ROOT / doc).read_text()
    cited = set(re.findall(r"(?<![\w/.-])((?:recipes|benchmarks|kdeploy|tests)/[\w./{},-]*[\w}])", text))
    missing = []
    for path in sorted(cited):
        stem, _, rest = path.partition("{")
        names = [stem + alt + rest.partition("}")[2] for alt in rest.partition("}")[0].split(",")] if rest else [path]
        missing += [n for n in names if not PLACEHOLDER.search(n) and not (ROOT / n).exists()]
    assert not missing, f"{doc} cites missing files: {missing}"


def test_documented_python_api_exists() -> None:
    """``kdeploy.name(`` in the READMEs' python fences names a function the package exports."""
    calls = {
        name
        for doc in DOCS
        for lang, body in FENCE.findall((ROOT / doc).read_text())
        if lang == "python"
        for name in re.findall(r"\bkdeploy\.(\w+)\(", body)
    }
    assert len(calls) >= 5
    assert not [name for name in sorted(calls) if not callable(getattr(kdeploy, name, None))]
