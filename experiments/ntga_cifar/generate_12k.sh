#!/usr/bin/env bash
# NTGA on the CIFAR-10 12,000-image seed-0 stratified subset (2,000 held-out targets):
# the paper's CIFAR-10 surrogate (cnn, t 8, float32) next to the fnn surrogate
# (t 4096, float64), eps 8/255, 10-step PGD, blocks of 512. Resumable.
source "$(dirname "$0")/common.sh"
SUBSET="--train-size 12000 --target-size 2000 --seed 0"
$PY -m ntga.generate --dataset $DATA $SUBSET --kernel fnn --t 4096 --no-progress \
    --out $RUNS/12k-fnn $(resume $RUNS/12k-fnn)
$PY -m ntga.generate --dataset $DATA $SUBSET --kernel cnn --t 8 --dtype float32 --no-progress \
    --out $RUNS/12k-cnn $(resume $RUNS/12k-cnn)
