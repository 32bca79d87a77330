#!/usr/bin/env bash
# fast-resnet (the CPU victim of issue 11, 16 epochs, its own recipe) on the 12,000-image subset
# poisons of generate_12k.sh; the 10,000 test images. Regenerates the fnn-surrogate poison if
# runs/ was lost (about a minute); the cnn one takes about 50 minutes, so it is used only when
# present. Resumable: rerun the same command to continue.
source "$(dirname "$0")/common.sh"
SUBSET="--train-size 12000 --target-size 2000 --seed 0"
[ -f $RUNS/12k-fnn/manifest.json ] || $PY -m ntga.generate --dataset $DATA $SUBSET --kernel fnn --t 4096 \
    --no-progress --out $RUNS/12k-fnn $(resume $RUNS/12k-fnn)
BREAKERS=${BREAKERS:-none}
for s in fnn cnn; do
  [ -f $RUNS/12k-$s/manifest.json ] || continue
  skip=$([ $s = cnn ] && [ -f $OUT/12k-fnn-fast/results.json ] && echo --skip-clean || true)
  $PY -m defenses.evaluate --poisons $RUNS/12k-$s --model fast-resnet --seeds ${SEEDS:-1} --epochs 16 \
      --breakers $BREAKERS --no-progress $skip --out $OUT/12k-$s-fast $(resume $OUT/12k-$s-fast/results.json)
done
