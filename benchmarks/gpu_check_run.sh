#!/bin/bash
# The device call around benchmarks/gpu_check.py: install the carried wheels, a 1-epoch preflight on 4,096 images
# (every row's code path on CUDA, latency included), then the full check only if every preflight row trained and
# benched. Run from the repository root on the GPU machine, with .gpudata/ (cifar10/cifar10-jpg.tar.gz and
# fashion-mnist/'s four IDX files) and .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection,
# typing-extensions for Python 3.12) carried; OUT is the folder whose files come back. Usage: bash
# benchmarks/gpu_check_run.sh [BUDGET_S] (about BUDGET_S + 150 s in all: keep it inside the call's time limit).
set -u
BUDGET=${1:-350}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 3
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
lscpu | grep -E 'Model name|^CPU\(s\)' >> "$OUT/nvidia_smi.txt"
mkdir -p "$OUT/pre"
# every row, 1 epoch on 4,096 images; a budget the row estimates never bite, the outer timeout the real cap
timeout 200 python3 benchmarks/gpu_check.py --data-root .gpudata --out "$OUT/pre" --runs /tmp/pre --seeds 0 \
  --set teacher.epochs=1 --set student.epochs=1 --set data.limit=4096 --budget-s 3000 > "$OUT/pre.log" 2>&1
echo "preflight rc=$?"; tail -15 "$OUT/pre.log"
python3 - "$OUT/pre/gpu_check.json" <<'PY' || { tar czf "$OUT/prelogs.tgz" /tmp/pre/*/*.log 2>/dev/null; exit 4; }
import json, sys
sys.path.insert(0, "benchmarks")
from gpu_check import JOBS
d = json.load(open(sys.argv[1]))
bad = [f"{j['name']}: {j['status']} {j['reason']}" for j in d["jobs"] if j["status"] != "ok"]
bad += [f"{r['job']}/{r['role']}: {r['error']}" for r in d["latency"] if r["error"]]
bad += [f"{j.name}: missing" for j in JOBS if j.name not in {r["name"] for r in d["jobs"]}]
bad += [] if d["latency"] else ["no latency rows"]
print("preflight:", "ok" if not bad else "FAILED " + "; ".join(bad))
sys.exit(1 if bad else 0)
PY
timeout $((BUDGET + 40)) python3 benchmarks/gpu_check.py --data-root .gpudata --out "$OUT" --runs /tmp/runs --seeds 0 \
  --budget-s "$BUDGET" > "$OUT/full.log" 2>&1
echo "full rc=$?"; grep -E "^(train|bench|wrote|error|warning)" "$OUT/full.log"
tar czf "$OUT/rowlogs.tgz" /tmp/runs/*/*.log 2>/dev/null
cat "$OUT/gpu_check.md"
