"""Does a code change alter what a recipe trains? Train it at an earlier commit and at the working tree, compare.

Runs ``kdeploy distill`` twice with the same arguments: once with the code of ``--old`` (a temporary git worktree put
first on ``sys.path``, ahead of the editable install) and once with the working tree, then compares every weights
file of the two run folders tensor by tensor. Weights files also carry metadata (paths, times), so their bytes
differ even when the tensors do not. Exit code 1 when a model differs.

Usage::

    KDEPLOY_DATA=../shared/data .venv/bin/python benchmarks/same_weights.py --old 98170fb^ \\
        --out runs/same_weights -- recipes/fashion_mnist_cnn.yaml --set data.limit=3000 --seeds 1

The distill arguments follow ``--``; ``--out`` receives the run folders ``old/`` and ``new/`` and their logs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
# Runs the kdeploy CLI from the tree in argv[1]: the editable install's finder would import the working tree.
SHIM = """import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv.pop(1))
import kdeploy
assert kdeploy.__file__.startswith(sys.path[0]), kdeploy.__file__
sys.argv[0] = "kdeploy"
runpy.run_module("kdeploy", run_name="__main__")
"""


def distill(tree: Path, args: list[str], out: Path) -> None:
    """``kdeploy distill ARGS --out OUT`` with the code of ``tree``; its output goes to ``OUT.log``."""
    cmd = [sys.executable, "-c", SHIM, str(tree), "-q", "distill", *args, "--out", str(out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w", encoding="utf-8") as log:
        if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"kdeploy distill failed with the code of {tree}; see {out.with_suffix('.log')}")


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def compare(old: Path, new: Path) -> list[str]:
    """One line per weights file of ``old``: IDENTICAL or DIFFERENT (or missing in ``new``)."""
    lines = []
    for a in sorted(old.rglob("*.safetensors")):
        b = new / a.relative_to(old)
        verdict = ("IDENTICAL" if same_tensors(a, b) else "DIFFERENT") if b.is_file() else "MISSING in new"
        lines.append(f"{verdict:>14}  {a.relative_to(old)}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("args", nargs="+", help="kdeploy distill arguments (after --)")
    a = ap.parse_args()
    a.out = a.out.resolve()  # the runs start in the repository root; compare() reads from here
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), a.old], check=True, cwd=ROOT)
        try:
            distill(tree, a.args, a.out / "old")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=True, cwd=ROOT)
    distill(ROOT, a.args, a.out / "new")
    lines = compare(a.out / "old", a.out / "new")
    print(f"kdeploy distill {' '.join(a.args)}: {a.old} against the working tree")
    print("\n".join(lines))
    return 1 if any(not line.strip().startswith("IDENTICAL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
