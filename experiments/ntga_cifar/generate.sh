#!/usr/bin/env bash
# Full-scale NTGA on CIFAR-10 with the fnn surrogate, reference protocol:
# training split permuted with seed 0, last 10,000 = target set, the other
# 40,000 poisoned in blocks of 512; eps 8/255, t 4096, float64.
# Resumable: rerun the same script after a kill and it continues.
source "$(dirname "$0")/common.sh"
# real 10-step PGD (step 1.1*eps/10)
$PY -m ntga.generate --dataset $DATA --kernel fnn --t 4096 --no-progress \
    --out $RUNS/fnn-pgd $(resume $RUNS/fnn-pgd)
# the reference's effective attack: one step of eps
$PY -m ntga.generate --dataset $DATA --kernel fnn --t 4096 --steps 1 --step-size 8/255 --no-progress \
    --out $RUNS/fnn-fgsm $(resume $RUNS/fnn-fgsm)
