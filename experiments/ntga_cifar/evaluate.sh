#!/usr/bin/env bash
# The paper's victims on the full-scale CIFAR-10 fnn-surrogate poisons
# (40,000 poisoned training images; the full 10,000-image test set).
# FNN and FNN-ReLU: 50 epochs, batch 64, raw [0, 1] pixels as the reference.
# Resumable: evaluate --resume skips finished runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/ntga_cifar}
OUT=${OUT:-experiments/ntga_cifar}
resume() { [ -e "$1/results.json" ] && echo --resume || true; }
$PY -m defenses.evaluate --poisons $RUNS/fnn-pgd --model fnn-relu,fnn --seeds 1 --epochs 50 --batch-size 64 \
    --no-standardize --no-progress --out $OUT/pgd $(resume $OUT/pgd)
$PY -m defenses.evaluate --poisons $RUNS/fnn-fgsm --model fnn-relu,fnn --seeds 1 --epochs 50 --batch-size 64 \
    --no-standardize --no-progress --skip-clean --out $OUT/fgsm $(resume $OUT/fgsm)
