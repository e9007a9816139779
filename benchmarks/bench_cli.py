"""How fast the CLI answers: `kdeploy --help` and the listing commands, each in a fresh interpreter.

Usage: ``python benchmarks/bench_cli.py [--repeat 10]``; writes ``benchmarks/results/bench_cli.json``.
Reports the median wall time and the median CPU time (user + sys of the child, from ``os.wait4``): on a shared
machine the wall time also counts waiting for a core, the CPU time does not. ``import torch`` alone is measured
the same way for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["recipes"], ["models"], ["methods"], ["datasets"]]


def once(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed")
    return wall, usage.ru_utime + usage.ru_stime


def measure(argv: list[str], repeat: int) -> dict[str, float]:
    once(argv)  # warm the file cache
    walls, cpus = zip(*(once(argv) for _ in range(repeat)), strict=True)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    rows = {}
    for command in COMMANDS:
        label = "kdeploy " + " ".join(command)
        rows[label] = measure([sys.executable, "-m", "kdeploy", *command], args.repeat)
    rows["python -c 'import torch' (for scale)"] = measure([sys.executable, "-c", "import torch"], args.repeat)
    load = os.getloadavg()[0]
    print(f"median of {args.repeat} runs, load average {load:.1f} on {os.cpu_count()} cores")
    print("| command | wall s | CPU s |\n|---|---:|---:|")
    for label, r in rows.items():
        print(f"| `{label}` | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |")
    out = ROOT / "benchmarks" / "results" / "bench_cli.json"
    out.write_text(json.dumps({"repeat": args.repeat, "load_average": load, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
