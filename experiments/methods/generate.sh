#!/usr/bin/env bash
# Generates every method's poison directory for the comparison (issue 5); skips finished ones.
# Usage: bash experiments/methods/generate.sh mnist|cifar [METHOD ...]   (run from the repository root)
set -euo pipefail
which="$1"; shift
case "$which" in
  mnist) data=(--dataset idx:../shared/data/mnist) ;;  # 50,000 protected (the last 10,000 of the permutation held out)
  cifar) data=(--dataset folder:../shared/data/cifar10-jpeg.tar.gz --train-size 12000 --target-size 2000) ;;
  *) echo "first argument: mnist or cifar" >&2; exit 2 ;;
esac
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=(random random-cw em cuda sep beo lsp ops ar)
for m in "${methods[@]}"; do
  out="runs/$which-$m"
  [ -f "$out/manifest.json" ] && { echo "$out done"; continue; }
  case "$m" in
    random-cw) args=(--method random --method-opt noise=class-wise) ;;
    em-cw) args=(--method em --method-opt noise=class-wise) ;;
    *) args=(--method "$m") ;;
  esac
  resume=(); [ -d "$out" ] && resume=(--resume)
  /usr/bin/time -f "$out: %e s wall" python -m ntga.generate "${data[@]}" "${args[@]}" --no-progress --out "$out" "${resume[@]}"
done
