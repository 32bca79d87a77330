#!/usr/bin/env bash
# NTGA on the CIFAR-10 12,000-image seed-0 stratified subset (2,000 held-out targets):
# the paper's CIFAR-10 surrogate (cnn, t 8, float32) next to the fnn surrogate
# (t 4096, float64), eps 8/255, 10-step PGD, blocks of 512. Resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=folder:../shared/data/cifar10-jpeg.tar.gz
RUNS=${RUNS:-runs/ntga_cifar}
SUBSET="--train-size 12000 --target-size 2000 --seed 0"
mkdir -p "$RUNS"
resume() { [ -e "$1" ] && echo --resume || true; }
$PY -m ntga.generate --dataset $DATA $SUBSET --kernel fnn --t 4096 --no-progress \
    --out $RUNS/12k-fnn $(resume $RUNS/12k-fnn)
$PY -m ntga.generate --dataset $DATA $SUBSET --kernel cnn --t 8 --dtype float32 --no-progress \
    --out $RUNS/12k-cnn $(resume $RUNS/12k-cnn)
