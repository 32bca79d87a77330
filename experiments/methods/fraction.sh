#!/usr/bin/env bash
# Accuracy versus protected fraction (issue 5): NTGA, EM, CUDA and BEO on a 5,000-image MNIST subset,
# each class protected at 0.2, 0.5, 0.8 and 1.0 (--fraction), victim fnn-relu, 5 epochs, no breaker.
# Usage: bash experiments/methods/fraction.sh   (run from the repository root; skips finished runs)
set -euo pipefail
data=(--dataset idx:../shared/data/mnist --train-size 5000)
for m in ntga em cuda beo; do
  for f in 0.2 0.5 0.8 1.0; do
    out="runs/frac-$m-$f"
    if [ ! -f "$out/manifest.json" ]; then
      resume=(); [ -d "$out" ] && resume=(--resume)
      /usr/bin/time -f "$out: %e s wall" python -m ntga.generate "${data[@]}" --method "$m" --fraction "$f" \
        --no-progress --out "$out" "${resume[@]}"
    fi
    res="experiments/methods/fraction/$m-$f"
    [ -f "$res/accuracy_curves.png" ] && continue
    resume=(); [ -f "$res/results.json" ] && resume=(--resume)
    python -m defenses.evaluate --poisons "$out" --model fnn-relu --epochs 5 --batch-size 128 --seeds 1 \
      --breakers none --no-progress --out "$res" "${resume[@]}"
  done
done
