"""The one prepared device check: CIFAR-10 recipes at full schedules on a GPU, then GPU latency, into one JSON + MD.

What it does, in order (every step timed and printed; a global deadline skips what no longer fits, recorded as
``skipped`` with the reason, never silently):

0. Preflight: the Python modules kdeploy needs here (all missing ones in one line), CUDA, the CIFAR-10 data
   (decoded once into kdeploy's cache before any training starts).
1. Trains each row of :data:`JOBS` through kdeploy's own API (``load_recipe`` with ``--set``-style overrides, then
   ``distill``), each in its own Python process so that one crash, CUDA error or time-out costs only that row
   (its last traceback line is recorded and the check goes on). The feature-KD row reuses the logits row's teacher
   (``teacher.checkpoint``), as in ``benchmarks/bench_recipes.py``.
2. Benches every trained teacher and student on the GPU with kdeploy's ``TorchRunner``: CUDA events on a side
   stream, eager vs CUDA-graph replay (warm-up on the side stream before capture, static input buffer), batch 1
   and 256.
3. Writes ``gpu_check.json`` and ``gpu_check.md`` (GPU, driver, torch/CUDA versions, the exact command,
   per-recipe accuracies next to the published numbers, the latency table with speed-ups) into ``--out``.

Run on a GPU (from the repository root; the CIFAR-10 JPEG tarball in ``.gpudata/cifar10/``)::

    python benchmarks/gpu_check.py --data-root .gpudata --out "$OUT" --budget-s 450

or through ``benchmarks/gpu_check_run.sh``, which installs the carried wheels and gates the check on a 1-epoch
preflight of every row (the first H200 run: ``benchmarks/results/gpu_check_h200*``).

``--smoke`` shrinks everything (256 images, 1 epoch, batch 32, CPU, batch sizes 1 and 8) to test the script
itself on a CPU in well under a minute; ``tests/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the GPU machine runs the script from a plain checkout (kdeploy not installed)
    sys.path.insert(0, str(REPO))

NEEDED = (
    "numpy",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "yaml",
    "safetensors",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions",
)
PIP_NAMES = {
    "yaml": "PyYAML",
    "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "typing_extensions": "typing-extensions",
}


# ---- the table the coordinator sizes ----------------------------------------------------------------------------
GPU = ["train.precision=bf16", "train.channels_last=true"]  # every row: bf16 autocast, channels_last


@dataclass(frozen=True)
class Job:
    name: str  # the row, and the run folder <out>/runs/<name>/seed<N>
    recipe: str  # recipes/<recipe>.yaml
    published: str  # from benchmarks/README.md (full schedules)
    overrides: list[str] = field(default_factory=list)  # --set style, on top of GPU
    teacher_from: str | None = None  # reuse that row's teacher (teacher.checkpoint), train no baseline again
    estimate_s: float = 60.0  # H200 wall time (the first check's, plus margin); skipped when less than this is left
    optional: bool = False  # skipped (recorded) when its recipe file does not exist
    seeds: tuple[int, ...] | None = None  # this row's seeds instead of --seeds (the expensive rows run one)


FAST_PUBLISHED = "airbench94 (Jordan 2024): 94.0 % in 3.3 s on one A100, on the original (PNG-exact) CIFAR-10"
# GPU-sized schedules for the slow rows: batch 512 (lr x4, linear scaling) keeps their epochs but needs 4x fewer
# optimizer steps, each of which is launch-bound on an H200 at batch 128
BATCH512 = ["data.batch_size=512", "teacher.lr=0.2", "student.lr=0.2"]
JOBS = [
    Job("cifar10_fast", "cifar10_fast", FAST_PUBLISHED, [], None, 35, True),
    Job(
        "cifar10_fast_tiny",
        "cifar10_fast_tiny",
        "0.1M-param student of the cifar10_fast teacher",
        [],
        "cifar10_fast",
        45,
        True,
    ),
    Job("fashion_mnist_cnn", "fashion_mnist_cnn", "small CNN 0.925 (Fashion-MNIST benchmark table)", [], None, 130),
    Job(
        "cifar10_cnn_logits",
        "cifar10_cnn_logits",
        "scaled CNN teacher 82.44 %, student standard 75.83 % / logits KD 66.54 %",
        BATCH512,
        None,
        50,
        seeds=(0,),
    ),
    Job(
        "cifar10_cnn_feature",
        "cifar10_cnn_feature",
        "feature KD 77.34 % (same teacher and student shapes)",
        [*BATCH512, "baseline=false"],
        "cifar10_cnn_logits",
        30,
        seeds=(0,),
    ),
    Job(
        "cifar10_resnet",
        "cifar10_resnet",
        "ResNet-50 ~93 % vs <1M-param CNN ~88 %; teacher 87.3 / student 66.4 / distilled 73.1",
        ["data.batch_size=256", "teacher.lr=0.2", "student.lr=0.1", "teacher.epochs=15", "student.epochs=15"],
        None,
        180,  # 110 s at 10 epochs (the first check ran it so, to fit its lease)
        seeds=(0,),
    ),
]
BENCH_BATCHES = (1, 256)
BENCH_RESERVE_S = 60.0  # kept free for step 2 and 3 when the deadline cuts training
SMOKE = [
    "data.limit=256",
    "data.val_size=32",
    "data.batch_size=32",
    "data.eval_batch_size=256",
    "teacher.epochs=1",
    "student.epochs=1",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.threads=1",
    # tiny models: the smoke run tests this script, not the recipes' networks (their recipes are validated)
    "teacher.model=cnn",
    "teacher.target=null",
    "teacher.kwargs={width: 4}",
    "student.model=cnn",
    "student.target=null",
    "student.kwargs={width: 2}",
]


# ---- records -------------------------------------------------------------------------------------------------
@dataclass
class JobResult:
    name: str
    recipe: str
    seed: int
    status: str  # ok | failed | timeout | skipped
    published: str
    overrides: list[str]
    wall_s: float = 0.0
    reason: str | None = None
    run_dir: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # teacher / baseline / student test accuracy
    params: dict[str, int] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class LatencyRow:
    job: str
    role: str
    params: int
    batch: int
    eager_ms: float | None = None
    graph_ms: float | None = None
    error: str | None = None


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


# ---- preflight ------------------------------------------------------------------------------------------------
def missing_modules() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "driver": None,
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return env


# ---- step 1: training, one process per row ------------------------------------------------------------------
def job_overrides(job: Job, seed: int, args: argparse.Namespace, runs: Path) -> list[str]:
    from kdeploy.recipe import TrainConfig

    sets = [f"seed={seed}", f"data.root={args.data_root}", *GPU, *job.overrides]
    if "device" in TrainConfig.model_fields:  # train.device (CUDA training) once it has landed
        sets.append(f"train.device={'cpu' if args.smoke else 'cuda'}")
    if job.teacher_from:
        sets.append(f"teacher.checkpoint={runs / job.teacher_from / f'seed{seed}' / 'teacher.safetensors'}")
    return sets + (SMOKE if args.smoke else []) + list(args.set or [])


def worker(spec_json: str) -> None:
    """Child process: load the recipe with the overrides and distill it into the run folder."""
    from kdeploy.distill.run import distill
    from kdeploy.recipe import load_recipe

    spec = json.loads(spec_json)
    distill(load_recipe(spec["recipe"], spec["overrides"]), out=spec["out"], force=True, mark_latest=False)


def read_run(res: JobResult) -> None:
    metrics_path = Path(res.run_dir or "") / "metrics.json"
    if not metrics_path.is_file():
        return
    models = json.loads(metrics_path.read_text()).get("models", {})
    for role, m in models.items():
        res.accuracy[role] = m.get("accuracy")
        res.params[role] = m.get("params")
        res.train_seconds[role] = m.get("train_seconds")


def train_job(job: Job, seed: int, args: argparse.Namespace, runs: Path, deadline: float) -> JobResult:
    recipe = REPO / "recipes" / f"{job.recipe}.yaml"
    sets = job_overrides(job, seed, args, runs)
    res = JobResult(job.name, job.recipe, seed, "skipped", job.published, sets)
    left = deadline - time.monotonic()
    if not recipe.is_file():
        res.reason = f"recipes/{job.recipe}.yaml does not exist" + (" (optional row)" if job.optional else "")
        return res
    if job.teacher_from and not (runs / job.teacher_from / f"seed{seed}" / "teacher.safetensors").is_file():
        res.reason = f"needs the teacher of row {job.teacher_from}, which did not finish"
        return res
    if not args.smoke and left < job.estimate_s:
        res.reason = f"deadline: {left:.0f} s left, row estimated at {job.estimate_s:.0f} s"
        return res
    out = runs / job.name / f"seed{seed}"
    res.run_dir = str(out)
    log = out.parent / f"seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)  # a killed row must not leave an earlier run's metrics behind
    spec = json.dumps({"recipe": str(recipe), "overrides": sets, "out": str(out)})
    t0 = time.monotonic()
    try:
        with log.open("w") as fh:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", spec],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=max(left, 1.0),
                cwd=REPO,
            )
        res.status = "ok" if proc.returncode == 0 else "failed"
        if proc.returncode != 0:
            res.reason = f"exit {proc.returncode}: {last_line(log.read_text(errors='replace'))}"
    except subprocess.TimeoutExpired:
        res.status, res.reason = "timeout", f"killed at the global deadline after {time.monotonic() - t0:.0f} s"
    res.wall_s = round(time.monotonic() - t0, 1)
    read_run(res)
    return res


# ---- step 2: latency --------------------------------------------------------------------------------------------
def time_model(model: Any, in_shape: list[int], batch: int, device: str, graph: bool, settings: Any) -> float:
    import numpy as np

    from kdeploy.bench.runners import TorchRunner

    x = np.random.default_rng(0).standard_normal((batch, *in_shape)).astype(np.float32)
    runner = TorchRunner(model, device=device, cuda_graph=graph)
    return runner.time(x, settings).p50


def bench_models(results: list[JobResult], args: argparse.Namespace, deadline: float) -> list[LatencyRow]:
    import torch

    from kdeploy.bench.latency import TimingSettings
    from kdeploy.runs import Run

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        torch.set_num_threads(1)  # a shared CPU: spinning OpenMP threads would dominate the timings
    torch.backends.cudnn.benchmark = device == "cuda"
    settings = (
        TimingSettings(warmup=1, min_iters=3, min_seconds=0.0, max_seconds=2.0)
        if args.smoke
        else TimingSettings(warmup=20, min_iters=100, min_seconds=0.5, max_seconds=5.0)
    )
    batches = (1, 8) if args.smoke else BENCH_BATCHES
    rows: list[LatencyRow] = []
    first_seed = {res.name: res.seed for res in reversed(results)}
    for res in results:
        if res.seed != first_seed[res.name]:  # latency does not depend on the seed: time one run per row
            continue
        roles = [r for r in ("teacher", "student") if res.accuracy.get(r) is not None]
        if any(j.name == res.name and j.teacher_from for j in JOBS):
            roles = [r for r in roles if r != "teacher"]  # the same teacher as its source row
        for role in roles:
            try:
                model, meta = Run(res.run_dir).load_model(role)
            except Exception as exc:
                rows.append(LatencyRow(res.name, role, 0, 0, error=last_line(str(exc))))
                continue
            model.eval()
            in_shape = list(meta.in_shape)
            params = sum(p.numel() for p in model.parameters())
            for batch in batches:
                row = LatencyRow(res.name, role, params, batch)
                if time.monotonic() > deadline:
                    row.error = "skipped: global deadline"
                    rows.append(row)
                    continue
                try:
                    row.eager_ms = time_model(model, in_shape, batch, device, False, settings)
                    if device == "cuda":
                        row.graph_ms = time_model(model, in_shape, batch, device, True, settings)
                except Exception as exc:  # one model's CUDA error must not end the check
                    row.error = f"{type(exc).__name__}: {last_line(str(exc))}"
                print(f"bench {res.name}/{role} batch {batch}: eager {row.eager_ms} ms, graph {row.graph_ms} ms")
                rows.append(row)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---- step 3: the report --------------------------------------------------------------------------------------------
def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f} %"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.1f}x"


def markdown(env: dict[str, Any], results: list[JobResult], rows: list[LatencyRow], total_s: float) -> str:
    lines = [
        "# kdeploy GPU check",
        "",
        f"GPU {env['gpu']}, driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"Python {env['python']}; total wall time {total_s:.0f} s.",
        "",
        f"Command: `{env['command']}`",
        "",
        "## CIFAR-10 recipes (test accuracy)",
        "",
        "| row | seed | status | teacher | CE baseline | KD student | params teacher / student | wall s | published |",
        "|---|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        params = f"{r.params.get('teacher', 0):,} / {r.params.get('student', 0):,}" if r.params else "-"
        acc = r.accuracy
        lines.append(
            f"| {r.name} | {r.seed} | {status} | {pct(acc.get('teacher'))} | {pct(acc.get('baseline'))} | "
            f"{pct(acc.get('student'))} | {params} | {r.wall_s:.0f} | {r.published} |"
        )
    lines += ["", "Overrides per row (on top of the recipe):", ""]
    lines += [f"- {r.name}: `{' '.join(r.overrides)}`" for r in results]
    lines += [
        "",
        "## Latency (PyTorch fp32, p50 ms, CUDA events; CUDA graph = one captured forward replayed)",
        "",
        "| row | model | params | batch | eager | CUDA graph | graph speed-up | student vs teacher (graph) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    teacher_ms = {(r.job, r.batch): r.graph_ms or r.eager_ms for r in rows if r.role == "teacher"}
    for r in rows:
        source = next((j.teacher_from for j in JOBS if j.name == r.job and j.teacher_from), r.job)
        vs = ratio(teacher_ms.get((source, r.batch)), r.graph_ms or r.eager_ms) if r.role != "teacher" else "-"
        note = f" ({r.error})" if r.error else ""
        lines.append(
            f"| {r.job} | {r.role}{note} | {r.params:,} | {r.batch} | {ms(r.eager_ms)} | {ms(r.graph_ms)} | "
            f"{ratio(r.eager_ms, r.graph_ms)} | {vs} |"
        )
    return "\n".join(lines) + "\n"


def write(out: Path, env: dict[str, Any], results: list[JobResult], rows: list[LatencyRow], total_s: float) -> None:
    from kdeploy import atomic

    payload = {
        "environment": env,
        "total_seconds": round(total_s, 1),
        "jobs": [asdict(r) for r in results],
        "latency": [asdict(r) for r in rows],
    }
    atomic.write_json(out / "gpu_check.json", payload)
    atomic.write_text(out / "gpu_check.md", markdown(env, results, rows, total_s))


# ---- main -------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("KDEPLOY_DATA", str(REPO / ".gpudata")))
    p.add_argument("--out", default=str(REPO / "runs" / "gpu_check"), help="folder for gpu_check.json/.md")
    p.add_argument("--runs", default=None, help="run folders (default: <out>/runs)")
    p.add_argument("--budget-s", type=float, default=450.0, help="global deadline for the whole check")
    p.add_argument("--seeds", default="0", help="comma-separated seeds per row")
    p.add_argument("--only", action="append", help="run only these rows (repeatable)")
    p.add_argument("--set", action="append", help="extra override for every row, e.g. teacher.epochs=5")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole script (tests)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args.worker)
        return 0
    args.data_root = str(Path(args.data_root).resolve())  # the row processes may run from another folder
    start = time.monotonic()
    deadline = start + args.budget_s
    missing = missing_modules()
    if missing:
        wheels = " ".join(PIP_NAMES.get(m, m) for m in missing)
        print(f"error: missing Python modules {', '.join(missing)}; carry wheels: pip download {wheels}")
        return 2
    out = Path(args.out)
    runs = Path(args.runs) if args.runs else out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"gpu_check: {env['gpu'] or 'no GPU'}, torch {env['torch']}, CUDA {env['cuda']}, budget {args.budget_s} s")
    if not args.smoke and env["gpu"] is None:
        print("error: no CUDA GPU visible to torch; use --smoke for the CPU rehearsal")
        return 2
    t0 = time.monotonic()
    try:  # decode the tarball once into kdeploy's cache, before the per-row processes read it
        from kdeploy.recipe import load_data, load_recipe

        preload = [f"data.root={args.data_root}", *(SMOKE[:1] if args.smoke else [])]
        load_data(load_recipe(REPO / "recipes" / "cifar10_cnn_logits.yaml", preload))
        print(f"data: CIFAR-10 ready in {time.monotonic() - t0:.1f} s")
    except Exception as exc:
        print(f"error: CIFAR-10 not loadable from {args.data_root}: {last_line(str(exc))}")
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    jobs = [j for j in JOBS if not args.only or j.name in args.only]
    for job in jobs:  # every key of every row checked before any GPU time is spent (a bad one fails only its row)
        recipe = REPO / "recipes" / f"{job.recipe}.yaml"
        if recipe.is_file():
            try:
                load_recipe(recipe, [o for o in job_overrides(job, seeds[0], args, runs) if o not in SMOKE])
            except Exception as exc:
                print(f"warning: {job.name}: {last_line(str(exc))}")
    results: list[JobResult] = []
    train_deadline = deadline - BENCH_RESERVE_S
    for job in jobs:
        for seed in job.seeds if job.seeds is not None and not args.smoke else seeds:
            try:
                res = train_job(job, seed, args, runs, train_deadline)
            except Exception as exc:  # a bug here must not cost the other rows
                res = JobResult(job.name, job.recipe, seed, "failed", job.published, [], reason=last_line(str(exc)))
                traceback.print_exc()
            acc = ", ".join(f"{k} {v * 100:.2f} %" for k, v in res.accuracy.items() if v is not None)
            print(f"train {job.name} seed {seed}: {res.status} in {res.wall_s:.0f} s; {acc or '-'}; {res.reason or ''}")
            results.append(res)
            write(out, env, results, [], time.monotonic() - start)  # partial results survive a kill
    rows = bench_models(results, args, deadline)
    write(out, env, results, rows, time.monotonic() - start)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
