#!/usr/bin/env bash
# The JAX client step on a GPU machine (jax installed, no TensorFlow, no network), from the repo root:
#
#     OUT=/some/dir bash bench/device_jax.sh
#
# Prints the GPU and versions, runs bench/jax_client_step.py on the GPU (MLP and logistic regression,
# K up to 1000 clients per call) while sampling GPU utilisation into $OUT/gpu_util.csv, then the same on
# this machine's CPU (JAX_PLATFORMS=cpu) as the baseline, and compares GPU against CPU deltas. Every
# step has a timeout and the whole script stays under ~4 minutes; a step cut short keeps what it wrote.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
DEADLINE=$((SECONDS + 225))
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so nvidia-smi's memory.used shows what is used, not 75% of it
export PYTHONUNBUFFERED=1

step() {  # step SECONDS NAME COMMAND...: runs COMMAND with at most SECONDS, less if the deadline is near
  local limit=$1 name=$2 left=$((DEADLINE - SECONDS - 5))
  shift 2
  ((left < limit)) && limit=$left
  if ((limit < 5)); then echo "== $name: skipped, out of time"; return; fi
  echo "== $name (timeout ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "== $name: rc=$? in $((SECONDS - start))s"
}

PY=
for candidate in python3 python python3.12 python3.11 python3.10 /opt/conda/bin/python3; do
  if timeout 60 "$candidate" -c "import jax, numpy" 2>/dev/null; then PY=$candidate; break; fi
done
if [[ -z $PY ]]; then echo "no python with jax and numpy found"; exit 1; fi

step 20 "GPU" nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu,memory.used --format=csv
step 60 "versions" "$PY" -c "
import sys, jax, numpy
print('python', sys.version.split()[0], '| jax', jax.__version__, '| numpy', numpy.__version__, '| python at', sys.executable)
print('backend', jax.default_backend(), '| devices', jax.devices())"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 200 >"$OUT/gpu_util.csv" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

BENCH=("$PY" bench/jax_client_step.py)
step 80 "gpu mlp" "${BENCH[@]}" --clients 10,50,200,1000 --model mlp --json "$OUT/jax_gpu.json" \
  --save-deltas "$OUT/deltas_gpu_mlp.npz"
step 45 "gpu logreg" "${BENCH[@]}" --clients 10,50,200,1000 --model logreg --json "$OUT/jax_gpu_logreg.json"
step 25 "gpu mlp, highest matmul precision" "${BENCH[@]}" --clients 10 --model mlp --repeats 1 --precision highest \
  --json "$OUT/jax_gpu_highest.json" --save-deltas "$OUT/deltas_gpu_mlp_highest.npz"
kill $SAMPLER 2>/dev/null

export JAX_PLATFORMS=cpu
step 45 "cpu mlp" "${BENCH[@]}" --clients 10,50,200,1000 --model mlp --json "$OUT/jax_cpu.json" \
  --save-deltas "$OUT/deltas_cpu_mlp.npz"
step 25 "cpu logreg" "${BENCH[@]}" --clients 10,50,200 --model logreg --json "$OUT/jax_cpu_logreg.json"

step 20 "gpu vs cpu deltas, and gpu utilisation" "$PY" - "$OUT" <<'EOF'
import csv, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
cpu = out / "deltas_cpu_mlp.npz"
for name in ["deltas_gpu_mlp.npz", "deltas_gpu_mlp_highest.npz"]:
    if (out / name).exists() and cpu.exists():
        a, b = np.load(out / name), np.load(cpu)
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
        scale = max(float(np.abs(b[k]).max()) for k in b.files)
        print(f"{name}: max |gpu - cpu| = {diff:.2e} (max |delta| {scale:.2e}), K=10 clients")
rows = list(csv.reader((out / "gpu_util.csv").open()))[1:] if (out / "gpu_util.csv").exists() else []
util = [float(r[1].split()[0]) for r in rows if len(r) > 2 and r[1].split()[0].replace(".", "").isdigit()]
mem = [float(r[2].split()[0]) for r in rows if len(r) > 2 and r[2].split()[0].replace(".", "").isdigit()]
if util:
    print(f"gpu utilisation over {len(util)} samples: mean {np.mean(util):.0f}%, max {max(util):.0f}%, "
          f"share of samples > 0%: {np.mean(np.array(util) > 0):.2f}; memory.used max {max(mem):.0f} MiB")
EOF
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
