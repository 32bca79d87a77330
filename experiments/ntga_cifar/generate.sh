#!/usr/bin/env bash
# Full-scale NTGA on CIFAR-10 with the fnn surrogate, reference protocol:
# training split permuted with seed 0, last 10,000 = target set, the other
# 40,000 poisoned in blocks of 512; eps 8/255, t 4096, float64.
# Resumable: rerun the same script after a kill and it continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=folder:../shared/data/cifar10-jpeg.tar.gz
RUNS=${RUNS:-runs/ntga_cifar}
mkdir -p "$RUNS"
resume() { [ -e "$1" ] && echo --resume || true; }
# real 10-step PGD (step 1.1*eps/10)
$PY -m ntga.generate --dataset $DATA --kernel fnn --t 4096 --no-progress \
    --out $RUNS/fnn-pgd $(resume $RUNS/fnn-pgd)
# the reference's effective attack: one step of eps
$PY -m ntga.generate --dataset $DATA --kernel fnn --t 4096 --steps 1 --step-size 8/255 --no-progress \
    --out $RUNS/fnn-fgsm $(resume $RUNS/fnn-fgsm)
