#!/usr/bin/env bash
# Victims on the 12,000-image subset poisons (cnn vs fnn surrogate); the 10,000 test images.
# FNN-ReLU and FNN as the reference (50 epochs, batch 64, raw pixels), and small-cnn width 16
# as experiments/cifar_breakers (15 epochs, batch 128, crop + flip). Resumable.
source "$(dirname "$0")/common.sh"
# The quick victims on both poisons first, then the slower small-cnn ones.
for s in cnn fnn; do
  skip=$([ $s = fnn ] && echo --skip-clean || true)
  $PY -m defenses.evaluate --poisons $RUNS/12k-$s --model fnn-relu,fnn --seeds 1 --epochs 50 --batch-size 64 \
      --no-standardize --no-progress $skip --out $OUT/12k-$s $(resume $OUT/12k-$s/results.json)
done
for s in cnn fnn; do
  skip=$([ $s = fnn ] && echo --skip-clean || true)
  $PY -m defenses.evaluate --poisons $RUNS/12k-$s --model small-cnn --model-opt width=16 --seeds 1 --epochs 15 \
      --batch-size 128 --augment --no-progress $skip --out $OUT/12k-$s-smallcnn $(resume $OUT/12k-$s-smallcnn/results.json)
done
