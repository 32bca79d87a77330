#!/usr/bin/env bash
# One prepared run for a machine with a GPU (or any JAX accelerator), within about 10 minutes:
#   1. kernel and GP parity with the committed neural-tangents reference values, on the device;
#   2. time per PGD step, fnn and cnn, block 512 x 10,000 targets (benchmarks/bench_attack.py);
#   3. the full-scale cnn-surrogate NTGA generation on CIFAR-10 (40,000 poisoned, 10,000 targets,
#      t 8, eps 8/255, 10-step PGD, float32);
#   4. a victim trained clean and on that poison (defenses.evaluate, ResNet-18 by default).
# Everything it measures goes to $OUT (default runs/gpu-check): results.md (steps, commands, wall
# times, device), the benchmark's Markdown, the evaluation's results.json/results.md/figures.
#
# Usage (repository root):
#   bash benchmarks/gpu/check.sh                      # on the GPU machine
#   TINY=1 bash benchmarks/gpu/check.sh               # smoke test on a CPU: tiny sizes, embedded digits
# Settings (environment): DATA (dataset spec, default the shared CIFAR-10 copy), TRAIN_SIZE and
# TARGET_SIZE (default: the reference's 40,000 / 10,000), VICTIM (resnet18), EPOCHS (15), OUT.
# Each step is resumable (--resume), so a rerun after a time-out continues where it stopped.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if [ "${TINY:-0}" = 1 ]; then
  DATA=${DATA:-digits}; TRAIN_SIZE=${TRAIN_SIZE:-64}; TARGET_SIZE=${TARGET_SIZE:-32}; VICTIM=${VICTIM:-small-cnn}
  EPOCHS=${EPOCHS:-1}; BENCH=(--quick); EVAL_EXTRA=(--model-opt width=4 --batch-size 16)
else
  DATA=${DATA:-folder:../shared/data/cifar10-jpeg.tar.gz}; TRAIN_SIZE=${TRAIN_SIZE:-}; TARGET_SIZE=${TARGET_SIZE:-10000}
  VICTIM=${VICTIM:-resnet18}; EPOCHS=${EPOCHS:-15}; BENCH=(--configs fnn-f64,fnn-f32,cnn-f32,cnn-f64 --repeats 3)
  EVAL_EXTRA=(--batch-size 256)
fi
REPORT=$OUT/results.md
SIZE=(); [ -n "$TRAIN_SIZE" ] && SIZE+=(--train-size "$TRAIN_SIZE"); SIZE+=(--target-size "$TARGET_SIZE")
resume() { [ -e "$1" ] && echo --resume || true; }
status=0

step() {  # step NAME COMMAND...: runs it, appends its command, exit status and wall time to the report
  local name=$1; shift
  local start=$(date +%s)
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local wall=$(( $(date +%s) - start ))
  tail -n 5 "$OUT/$name.log"
  printf '| %s | `%s` | %s | %s s |\n' "$name" "$*" "$rc" "$wall" >> "$REPORT"
  [ $rc = 0 ] || status=1
}

{
  echo "# Accelerator check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo "Device: $($PY -c 'import jax; print(jax.devices())' 2>&1 | tail -n 1)"
  echo
  echo "| step | command | exit | wall |"
  echo "|---|---|---|---|"
} > "$REPORT"

step parity $PY -m pytest -q -p no:cacheprovider tests/test_kernels_parity.py tests/test_gp.py
step bench $PY benchmarks/bench_attack.py "${BENCH[@]}" --out "$OUT/attack.md"
step generate $PY -m ntga.generate --dataset "$DATA" "${SIZE[@]}" --kernel cnn --t 8 --dtype float32 \
  --no-progress --out "$OUT/cnn-poison" $(resume "$OUT/cnn-poison")
step evaluate $PY -m defenses.evaluate --poisons "$OUT/cnn-poison" --model "$VICTIM" --epochs "$EPOCHS" --seeds 1 \
  "${EVAL_EXTRA[@]}" --no-progress --out "$OUT/eval" $(resume "$OUT/eval/results.json")

{
  echo
  echo "## Generation"
  echo
  grep -h "^wrote" "$OUT/generate.log" || echo "(not finished: see generate.log)"
  echo
  echo "## Victim ($VICTIM, $EPOCHS epochs)"
  echo
  if [ -e "$OUT/eval/results.md" ]; then sed -n '/^| condition/,/^$/p' "$OUT/eval/results.md"; else echo "(not finished)"; fi
  echo
  echo "## Attack step timings"
  echo
  if [ -e "$OUT/attack.md" ]; then sed -n '/^| configuration/,/^$/p' "$OUT/attack.md"; else echo "(not finished)"; fi
} >> "$REPORT"
echo "wrote $REPORT"
exit $status
