#!/usr/bin/env bash
# Issue 14: can protected samples be spotted, and does dropping them help?
# For every method of the registry at --fraction 0.2 and 0.5 on an MNIST subset:
#   1. ntga.generate the partially protected poison directory   -> runs/det-mnist-<method>-<fraction>
#   2. defenses.detect with each detector (AUROC / AUPRC against protected_positions.npy, figures)
#                                                                  -> experiments/detection/mnist/<method>-<fraction>/detect
#   3. defenses.evaluate: undefended (none), filter@detector=D,share=<fraction> (the share is assumed known),
#      filter@detector=D (Otsu's label-free threshold), and the oracle trained only on the truly clean rows
#                                                                  -> .../eval and .../oracle
# then summarize.py writes experiments/detection/mnist/results.md.
#
# Usage (from the repository root):  bash experiments/detection/run_mnist.sh
# Resumable: finished steps are skipped, interrupted ones continue with --resume.
# Knobs (environment): METHODS (default: every registry method), FRACTIONS ("0.2 0.5"), TRAIN_SIZE (5000),
#   DETECTORS (default "linear,early-loss,cd"; options as name@key=value, e.g. cd@variant=features),
#   FILTER_DETECTOR (early-loss), EPOCHS (victim epochs, 5), DET_EPOCHS (suspect-model epochs, 5),
#   RESULTS (experiments/detection/mnist), SEEDS (1).
# Smoke version (what the helper ran; see README.md):
#   METHODS=ops FRACTIONS=0.5 TRAIN_SIZE=1000 DETECTORS=linear,early-loss,cd@steps=30 EPOCHS=3 DET_EPOCHS=3 \
#   RESULTS=experiments/detection/smoke bash experiments/detection/run_mnist.sh
set -euo pipefail
METHODS="${METHODS:-ntga random em cuda sep beo lsp ops ar}"
FRACTIONS="${FRACTIONS:-0.2 0.5}"
TRAIN_SIZE="${TRAIN_SIZE:-5000}"
DETECTORS="${DETECTORS:-linear,early-loss,cd}"
FILTER_DETECTOR="${FILTER_DETECTOR:-early-loss}"
EPOCHS="${EPOCHS:-5}"
DET_EPOCHS="${DET_EPOCHS:-5}"
RESULTS="${RESULTS:-experiments/detection/mnist}"
SEEDS="${SEEDS:-1}"
data=idx:../shared/data/mnist
victim=(--model fnn-relu --epochs "$EPOCHS" --batch-size 128 --seeds "$SEEDS" --no-progress)
for m in $METHODS; do
  for f in $FRACTIONS; do
    poisons="runs/det-mnist-$m-$f-$TRAIN_SIZE"
    res="$RESULTS/$m-$f"
    if [ ! -f "$poisons/manifest.json" ]; then
      resume=(); [ -d "$poisons" ] && resume=(--resume)
      python -m ntga.generate --dataset "$data" --train-size "$TRAIN_SIZE" --method "$m" --fraction "$f" \
        --no-progress --out "$poisons" "${resume[@]}"
    fi
    if [ ! -f "$res/detect/summary.md" ]; then
      resume=(); [ -f "$res/detect/detection.json" ] && resume=(--resume)
      python -m defenses.detect --poisons "$poisons" --detector "$DETECTORS" --epochs "$DET_EPOCHS" --auroc \
        --out "$res/detect" "${resume[@]}"
    fi
    if [ ! -f "$res/eval/accuracy_curves.png" ]; then
      resume=(); [ -f "$res/eval/results.json" ] && resume=(--resume)
      python -m defenses.evaluate --poisons "$poisons" "${victim[@]}" \
        --breakers "none,filter@detector=$FILTER_DETECTOR,share=$f,epochs=$DET_EPOCHS,filter@detector=$FILTER_DETECTOR,epochs=$DET_EPOCHS" \
        --out "$res/eval" "${resume[@]}"
    fi
    if [ ! -f "$res/oracle/accuracy_curves.png" ]; then
      python experiments/detection/oracle.py "$poisons" "runs/det-oracle-$m-$f-$TRAIN_SIZE"
      resume=(); [ -f "$res/oracle/results.json" ] && resume=(--resume)
      python -m defenses.evaluate --poisons "runs/det-oracle-$m-$f-$TRAIN_SIZE/x.npy,runs/det-oracle-$m-$f-$TRAIN_SIZE/y.npy" \
        --dataset "$data" --skip-clean "${victim[@]}" --out "$res/oracle" "${resume[@]}"
    fi
  done
done
python experiments/detection/summarize.py "$RESULTS"
