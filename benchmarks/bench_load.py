"""Reliability under load: peak memory and progress output of the real CLI on big inputs.

1. ``kdeploy distill`` on a generated ImageFolder of small JPEGs (default 50,000, and a 10x smaller one to
   see how memory scales): peak RSS vs. the size of the decoded uint8 tensors, wall time, and how long the
   longest stretch without any output on stderr was (progress must keep coming).
2. ``kdeploy bench`` on a run folder whose manifest lists many artifacts (default 100: copies of real exported
   and quantized ONNX files, each a separate entry), against the same run with 10: peak RSS must not grow with
   the number of artifacts (each ONNX Runtime session is closed before the next is opened).

Peak RSS is the child's ``ru_maxrss`` from ``os.wait4``. Usage::

    python benchmarks/bench_load.py [--work /tmp/kdeploy_load] [--images 50000] [--artifacts 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdeploy import atomic
from kdeploy.artifacts import Manifest
from kdeploy.artifacts.manifest import read_manifest, write_manifest
from kdeploy.bench.report import read_bench
from kdeploy.runs import Run

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
KDEPLOY = (
    [str(REPO / ".venv" / "bin" / "kdeploy")]
    if (REPO / ".venv" / "bin" / "kdeploy").is_file()
    else [
        sys.executable,
        "-m",
        "kdeploy",
    ]
)


# ---- inputs ----------------------------------------------------------------------------------------------
def _write_images(args: tuple[Path, int, int, int, int]) -> int:
    """Write ``count`` JPEGs of class ``cls`` (a class colour plus noise, so the task is learnable)."""
    from PIL import Image

    folder, cls, start, count, size = args
    rng = np.random.default_rng(cls * 1_000_003 + start)
    base = np.array([(cls * 37) % 256, (cls * 91) % 256, (cls * 151) % 256], dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    return count


def make_imagefolder(root: Path, images: int, classes: int = 10, size: int = 32, test_share: float = 0.1) -> Path:
    """``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``; reused when already complete."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{images} {classes} {size}":
        return root
    shutil.rmtree(root, ignore_errors=True)
    per_class = images // classes
    n_test = int(per_class * test_share)
    jobs = []
    for cls in range(classes):
        for split, count, offset in (("train", per_class - n_test, 0), ("test", n_test, per_class)):
            for start in range(offset, offset + count, 500):
                jobs.append((root / split / f"class{cls}", cls, start, min(500, offset + count - start), size))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        written = sum(pool.map(_write_images, jobs))
    done.write_text(f"{images} {classes} {size}")
    print(f"generated {written} JPEGs ({size}x{size}) in {root}", flush=True)
    return root


# ---- measuring a CLI process -------------------------------------------------------------------------------
def measure(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``kdeploy ARGS``; peak RSS, wall time, stderr lines and the longest silence on stderr."""
    t0 = time.monotonic()
    stamps: list[float] = []
    lines: list[str] = []
    proc = subprocess.Popen([*KDEPLOY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            text=True)  # fmt: skip

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stamps.append(time.monotonic())
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    end = time.monotonic()
    reader.join(timeout=10)
    gaps = np.diff([t0, *stamps, end])
    return {
        "command": "kdeploy " + " ".join(args),
        "returncode": proc.returncode,
        "wall_s": round(end - t0, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stderr_lines": len(lines),
        "longest_silence_s": round(float(gaps.max()), 2),
        "stderr_sample": lines if len(lines) <= 6 else [*lines[:3], "...", *lines[-3:]],
    }


def import_baseline(env: dict[str, str], cwd: Path) -> float:
    """Peak RSS (MiB) of a process that only imports what a kdeploy command imports (torch, ORT, kdeploy)."""
    code = "import onnxruntime, torchvision, kdeploy.cli, kdeploy.distill.run, kdeploy.bench"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=cwd)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return round(usage.ru_maxrss / 1024, 1)


def cli_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KDEPLOY_DATA"}
    env["XDG_CACHE_HOME"] = str(work / "cache")  # a cold decode cache: the first load decodes every JPEG
    return env


# ---- 1. distill on a large ImageFolder ----------------------------------------------------------------------
def distill_imagefolder(work: Path, images: int) -> dict[str, Any]:
    folder = make_imagefolder(work / f"images{images}", images)
    shutil.rmtree(work / "cache", ignore_errors=True)
    recipe = {
        "name": f"load{images}",
        "seed": 0,
        "data": {"name": "imagefolder", "root": str(folder), "batch_size": 256, "val_size": 0.05},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [256]}, "epochs": 1, "lr": 0.003},
        "student": {"model": "mlp", "kwargs": {"hidden": [32]}, "epochs": 1, "lr": 0.003},
        "distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7},
    }
    path = work / f"load{images}.yaml"
    atomic.write_text(path, yaml.safe_dump(recipe, sort_keys=False))
    result = measure(["distill", str(path), "--out", str(work / "runs" / f"load{images}"), "--force"],
                     cli_env(work), work)  # fmt: skip
    n_decoded = sum(1 for _ in folder.rglob("*.jpg"))
    result.update(images=n_decoded, decoded_mib=round(n_decoded * 3 * 32 * 32 / 2**20, 1))
    run = Run(work / "runs" / f"load{images}")
    if run.metrics_path.is_file():
        result["accuracy"] = {role: round(m.accuracy or 0.0, 4) for role, m in run.model_metrics().items()}
    return result


# ---- 2. bench on a run with many artifacts -----------------------------------------------------------------
def exported_run(work: Path) -> Path:
    """A real MNIST run (2.4M-parameter teacher) with ONNX, INT8 and FP16 artifacts of every model."""
    run = work / "runs" / "artifacts-base"
    if (run / "export" / "manifest.json").is_file():
        return run
    env = cli_env(work)
    steps = [
        ["distill", str(REPO / "recipes" / "mnist_mlp.yaml"), "--data-root", str(MNIST), "--out", str(run),
         "--force", "--set", "data.limit=2000", "--set", "teacher.epochs=1", "--set", "student.epochs=1"],
        ["export", str(run)],
        ["quantize", str(run), "--int8", "--fp16", "--calib-samples", "128"],
    ]  # fmt: skip
    for args in steps:
        done = subprocess.run([*KDEPLOY, "-q", *args], env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"kdeploy {' '.join(args)} failed:\n{done.stderr}")
    return run


def clone_artifacts(base: Path, dest: Path, count: int) -> Path:
    """A copy of ``base`` whose manifest lists ``count`` artifacts: the real ones, then copies of them."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(base, dest, symlinks=True)
    run = Run(dest)
    real = [a for a in read_manifest(run).artifacts if a.status == "ok"]
    artifacts = list(real[:count])
    for k in range(count - len(artifacts)):
        src = real[k % len(real)]
        name = src.files[0].replace(".onnx", f".copy{k:03d}.onnx")
        shutil.copyfile(run.export_dir / src.files[0], run.export_dir / name)
        artifacts.append(dataclasses.replace(src, id=f"{src.id}#copy{k:03d}", files=[name]))
    write_manifest(run, Manifest(artifacts))
    return dest


def bench_many(work: Path, count: int) -> dict[str, Any]:
    run = clone_artifacts(exported_run(work), work / "runs" / f"artifacts{count}", count)
    args = ["bench", str(run), "--runtimes", "torch,onnxruntime", "--batch-sizes", "1,32", "--warmup", "2",
            "--iters", "10", "--seconds", "0"]  # fmt: skip
    result = measure(args, cli_env(work), work)
    rows = read_bench(run).rows if (run / "bench.json").is_file() else []
    result.update(
        artifacts=count,
        rows=len(rows),
        onnx_mib=round(
            sum((run / "export" / a).stat().st_size for a in os.listdir(run / "export") if a.endswith(".onnx")) / 2**20,
            1,
        ),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kdeploy_load"))
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--artifacts", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_load.json")
    parser.add_argument("--skip", choices=["distill", "bench"], action="append", default=[])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}  # --skip keeps parts
    results.update(cpu_count=os.cpu_count(), load_average_start=os.getloadavg()[0])
    results["import_only_peak_rss_mib"] = import_baseline(cli_env(args.work), args.work)
    if "distill" not in args.skip:
        results["distill"] = [distill_imagefolder(args.work, n) for n in (args.images // 10, args.images)]
        for r in results["distill"]:
            print(json.dumps(r), flush=True)
    if "bench" not in args.skip:
        results["bench"] = [bench_many(args.work, n) for n in (max(1, args.artifacts // 10), args.artifacts)]
        for r in results["bench"]:
            print(json.dumps(r), flush=True)
    results["load_average_end"] = os.getloadavg()[0]
    atomic.write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
