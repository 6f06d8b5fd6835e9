#!/usr/bin/env bash
# The GPU checks in one call (a few minutes on one GPU): the CUDA-marked tests, the GPU
# benchmarks, and `moil train` on CUDA (NCCL under torchrun when there are >= 2 GPUs).
# Written on a machine without a GPU and not yet run; when a GPU is at hand:
#
#     bash benchmarks/gpu.sh            # output also in ${OUT:-benchmarks/gpu-results}/
#
# It needs a CUDA build of torch in the environment (this repository's .venv holds the CPU
# build, torch==2.13.0+cpu; the script stops at once if torch sees no GPU). Then record the output in benchmarks/README.md ("GPU runs"). Every step runs even if one
# fails; the exit code is the number of failed steps.
set -u
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
OUT_DIR="${OUT:-benchmarks/gpu-results}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu.log"
: > "$LOG"
failed=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log it, count failures
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

step machine 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count())"'
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
  echo "torch sees no CUDA device (a CPU build of torch?); nothing else to run" | tee -a "$LOG"; exit 1; }

# 1. Tests whose names mark them as CUDA paths (skipped on CPU): device moves, bf16, memory stats.
step cuda-tests 240 python -m pytest -q -x -p no:cacheprovider -k "cuda or gpu" tests/
# 2. Benchmarks on the GPU (autocast, torch.cuda.max_memory_allocated).
step step-cost 240 python benchmarks/step_cost.py --size vilt-b32 --device cuda --steps 10 --json "$OUT_DIR/step_cost.json"
step inference 120 python benchmarks/inference.py --size vilt-b32 --device cuda --steps 20 --json "$OUT_DIR/inference.json"
# 3. `moil train` on CUDA: one process; with >= 2 GPUs, 2 ranks under torchrun (NCCL) compared to it.
cat > "$OUT_DIR/run.toml" <<'TOML'
[data]
limit = 40
batch_size = 4
[model]
family = "tiny"
[train]
steps = 4
seeds = [0]
tasks = ["itm"]
device = "cuda"
eval_splits = ["test"]
[[arms]]
name = "moil"
recipe = "moil"
lr = 1e-3
momentum = "half-life:2"
[[arms.students]]
name = "hy"
approx = "hybrid"
rank = 2
TOML
rm -rf "$OUT_DIR/one" "$OUT_DIR/two"
step train-cuda 180 python -m moil.harness.cli train --config "$OUT_DIR/run.toml" --out "$OUT_DIR/one"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step train-nccl 240 python -m torch.distributed.run --standalone --nproc_per_node 2 -m moil.harness.cli train \
    --config "$OUT_DIR/run.toml" --out "$OUT_DIR/two"
  step nccl-equals-one 60 python - "$OUT_DIR" <<'PY'
import sys, torch
from safetensors.torch import load_file
a, b = (load_file(f"{sys.argv[1]}/{r}/checkpoint.safetensors") for r in ("one", "two"))
worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
print(f"max |2 ranks (NCCL) - 1 process| over {len(a)} tensors: {worst:.3g}")
sys.exit(0 if set(a) == set(b) and worst <= 1e-5 else 1)
PY
else
  echo "one GPU: NCCL with 2 ranks needs 2 GPUs (NCCL refuses two ranks on one device); skipped" | tee -a "$LOG"
fi
echo "failed steps: $failed (log: $LOG)" | tee -a "$LOG"
exit "$failed"
