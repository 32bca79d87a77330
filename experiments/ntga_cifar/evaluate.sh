#!/usr/bin/env bash
# The paper's victims on the full-scale CIFAR-10 fnn-surrogate poisons
# (40,000 poisoned training images; the full 10,000-image test set).
# FNN and FNN-ReLU: 50 epochs, batch 64, raw [0, 1] pixels as the reference.
# Resumable: evaluate --resume skips finished runs.
source "$(dirname "$0")/common.sh"
$PY -m defenses.evaluate --poisons $RUNS/fnn-pgd --model fnn-relu,fnn --seeds 1 --epochs 50 --batch-size 64 \
    --no-standardize --no-progress --out $OUT/pgd $(resume $OUT/pgd/results.json)
$PY -m defenses.evaluate --poisons $RUNS/fnn-fgsm --model fnn-relu,fnn --seeds 1 --epochs 50 --batch-size 64 \
    --no-standardize --no-progress --skip-clean --out $OUT/fgsm $(resume $OUT/fgsm/results.json)
