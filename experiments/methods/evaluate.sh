#!/usr/bin/env bash
# Trains the comparison's victim on clean data, on each method's poisons and with each breaker (issue 5).
# Usage: bash experiments/methods/evaluate.sh mnist|cifar METHOD...   (run from the repository root after
# generate.sh; "ntga" reads runs/mnist-fnn or runs/cifar12k-fnn). Skips finished evaluations, resumes others.
# More breakers on CIFAR-10 go to another results folder (a resume with other breakers is refused), e.g.
#   CIFAR_BREAKERS=ueraser,orthogonal-projection RESULTS=cifar-more bash experiments/methods/evaluate.sh cifar ntga ...
# Those runs reuse the clean baseline of experiments/methods/cifar/ntga (--skip-clean).
set -euo pipefail
which="$1"; shift
case "$which" in
  mnist)  # fnn-relu (Adam 1e-3, CE) for 5 epochs; grayscale is the identity on MNIST, so it is left out
    victim=(--model fnn-relu --epochs 5 --batch-size 128)
    breakers="none,jpeg,orthogonal-projection,ueraser,adversarial-training@eps=0.3@step_size=0.1@steps=3"
    ntga=runs/mnist-fnn ;;
  cifar)  # small-cnn at width 16 (16-32-64 channels), crop+flip, 6 epochs (CPU time), tested every 2nd epoch
    victim=(--model small-cnn --model-opt width=16 --epochs 6 --eval-every 2 --batch-size 128 --augment)
    breakers="${CIFAR_BREAKERS:-none,grayscale,jpeg}"
    ntga=runs/cifar12k-fnn ;;
  *) echo "first argument: mnist or cifar" >&2; exit 2 ;;
esac
for m in "$@"; do
  poisons="runs/$which-$m"; [ "$m" = ntga ] && poisons="$ntga"
  out="experiments/methods/${RESULTS:-$which}/$m"
  [ -f "$out/accuracy_curves.png" ] && { echo "$out done"; continue; }
  until [ -f "$poisons/manifest.json" ]; do sleep 30; done  # generation may still be running
  resume=(); [ -f "$out/results.json" ] && resume=(--resume)
  # The clean baseline (same indices, same victim settings) is trained once, with NTGA's poisons,
  # on CIFAR-10, where each run costs minutes on the CPU.
  skip=(); [ "$which" = cifar ] && { [ "$m" != ntga ] || [ -n "${RESULTS:-}" ]; } && skip=(--skip-clean)
  python -m defenses.evaluate --poisons "$poisons" "${victim[@]}" --seeds 1 --breakers "$breakers" \
    --no-progress --out "$out" "${resume[@]}" "${skip[@]}"
done
