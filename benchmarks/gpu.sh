#!/usr/bin/env bash
# The GPU checks in one call (a few minutes on one GPU): the CUDA-marked tests, the GPU
# benchmarks, and `moil train` on CUDA in fp32 and bf16 (NCCL under torchrun when there
# are >= 2 GPUs). When a GPU is at hand:
#
#     bash benchmarks/gpu.sh              # output also in ${OUT:-benchmarks/gpu-results}/
#     bash benchmarks/gpu.sh --dry-run    # every step on the CPU at --size tiny (no GPU needed)
#
# It needs a CUDA build of torch in the environment (this repository's .venv holds the CPU
# build, torch==2.13.0+cpu; the script stops at once if torch sees no GPU). Then record the
# output in benchmarks/README.md ("GPU runs"). Every step runs even if one fails; the exit
# code is the number of failed steps. The dry run (tests/test_benchmarks.py runs it) checks
# that every command parses and runs; it skips the CUDA tests and the memory subprocesses.
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

DEVICE=cuda SIZE=vilt-b32 STEPS=10 NOMEM= ROUNDS=
if [ "${1:-}" = "--dry-run" ]; then
  DEVICE=cpu SIZE=tiny STEPS=1 NOMEM=--no-memory ROUNDS="--rounds 1"  # one round: it checks the commands; its timings mean nothing
  echo "dry run: every step on the CPU at --size tiny" | tee -a "$LOG"
else
  step machine 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count())"'
  python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "torch sees no CUDA device (a CPU build of torch?); nothing else to run" | tee -a "$LOG"; exit 1; }
  # 1. Tests whose names mark them as CUDA paths (skipped on CPU): device moves, bf16, memory stats.
  step cuda-tests 240 python -m pytest -q -x -p no:cacheprovider -k "(cuda or gpu) and not dry_run" tests/
fi
# 2. Benchmarks on the GPU (synchronised timings, torch.cuda.max_memory_allocated).
B="--size $SIZE --device $DEVICE --steps $STEPS $ROUNDS"
step step-cost 240 python benchmarks/step_cost.py $B $NOMEM --json "$OUT_DIR/step_cost.json"
step many-students 180 python benchmarks/many_students.py $B --json "$OUT_DIR/many_students.json"
step inference 120 python benchmarks/inference.py --size "$SIZE" --device "$DEVICE" --steps $((STEPS * 2)) $ROUNDS --json "$OUT_DIR/inference.json"
step imitation-quality 180 python benchmarks/imitation_quality.py --size "$SIZE" --device "$DEVICE" --steps $((STEPS < 4 ? 4 : 8)) --json "$OUT_DIR/imitation_quality.json"
step observer-overhead 240 python benchmarks/observer_overhead.py $B $NOMEM --json "$OUT_DIR/observer_overhead.json"
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
device = "DEVICE"
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
sed -i "s/\"DEVICE\"/\"$DEVICE\"/" "$OUT_DIR/run.toml"
sed 's/^\[train\]$/[train]\nprecision = "bf16"/' "$OUT_DIR/run.toml" > "$OUT_DIR/run-bf16.toml"
rm -rf "$OUT_DIR/one" "$OUT_DIR/two" "$OUT_DIR/bf16"
step train-$DEVICE 180 python -m moil.harness.cli train --config "$OUT_DIR/run.toml" --out "$OUT_DIR/one"
step train-$DEVICE-bf16 180 python -m moil.harness.cli train --config "$OUT_DIR/run-bf16.toml" --out "$OUT_DIR/bf16"
if [ "$DEVICE" = cuda ] && [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
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
