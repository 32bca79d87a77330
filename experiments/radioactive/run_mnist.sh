#!/usr/bin/env bash
# log10 p of the radioactive mark versus the marked share of MNIST (issue 13), white-box and black-box.
#
# Usage (from the repository root; resumable: every step is skipped when its output exists, and
# defenses.evaluate resumes its own results):
#   bash experiments/radioactive/run_mnist.sh
# Settings by environment variable (defaults in brackets):
#   FRACTIONS   marked share of each class          ["0.01 0.02 0.05 0.1 0.2"]
#   DATASET     dataset spec                        [idx:../shared/data/mnist]
#   TRAIN_SIZE  training images (empty: all)        []
#   MARK_OPTS   radioactive settings NAME@K=V,...   [radioactive]
#   VICTIM      victim and its options              [small-cnn]
#   EPOCHS      victim epochs                       [10]
#   SEED        --seed of generation and evaluation [0]
#   NAME        results folder under experiments/radioactive/   [mnist]
# Smoke run (a minute on 2 cores; numbers meaningless):
#   DATASET=digits TRAIN_SIZE=300 FRACTIONS="0.5" EPOCHS=2 NAME=smoke \
#     MARK_OPTS=radioactive@marker-epochs=1,steps=5 bash experiments/radioactive/run_mnist.sh
#
# Writes experiments/radioactive/$NAME/f<F>/{eval/,control/,detect-*.json} and $NAME/results.md. The
# poison directories go to runs/radioactive-$NAME/f<F> and the PRIVATE keys to
# runs/radioactive-$NAME-keys/f<F> (outside experiments/, never committed).
# The null control of each fraction is a victim trained on neither the marked images nor their
# originals: the unmarked rest of that poison directory (rows taken from the key, since the poison
# directory does not say which rows are marked; runs/radioactive-$NAME/rest-f<F>.npz), tested with
# the clean test split, via `defenses.evaluate --dataset npz:...`. Its p-values should look uniform.
# (A victim trained on all clean originals is no null control for the black-box test: it memorised
# the originals of the marked images, so their loss is lower than the marked ones' and p is near 1.)
set -euo pipefail
fractions=${FRACTIONS:-"0.01 0.02 0.05 0.1 0.2"}
dataset=${DATASET:-idx:../shared/data/mnist}
mark=${MARK_OPTS:-radioactive}
victim=${VICTIM:-small-cnn}
epochs=${EPOCHS:-10}
seed=${SEED:-0}
name=${NAME:-mnist}
size=(); [ -n "${TRAIN_SIZE:-}" ] && size=(--train-size "$TRAIN_SIZE")
res=experiments/radioactive/$name
runs=runs/radioactive-$name
keys=runs/radioactive-$name-keys
mkdir -p "$res" "$runs" "$keys"
first=""
for f in $fractions; do
  poisons=$runs/f$f; key=$keys/f$f; out=$res/f$f; rest=$runs/rest-f$f.npz
  # Every fraction after the first is marked with the first one's secret (--same-secret-as): the
  # same carriers, and the marking network is trained once and then loaded from the cache.
  same=(); [ -n "$first" ] && same=(--same-secret-as "$keys/f$first")
  [ -z "$first" ] && first=$f
  if [ ! -f "$poisons/manifest.json" ]; then
    # The key is written BEFORE the poison directory: an interrupted generation may leave a work
    # folder, a key, or both. --resume continues either (it reuses a key of these settings).
    resume=(); { [ -e "$poisons" ] || [ -e "$key" ]; } && resume=(--resume)
    python -m ntga.generate --dataset "$dataset" "${size[@]}" --seed "$seed" --method "$mark" --fraction "$f" \
      --no-progress --out "$poisons" --key-out "$key" "${same[@]}" "${resume[@]}"
  fi
  resume=(); [ -f "$out/eval/results.json" ] && resume=(--resume)
  if [ ! -f "$out/eval/accuracy_curves.png" ]; then
    python -m defenses.evaluate --poisons "$poisons" --model "$victim" --epochs "$epochs" --seeds 1 --seed "$seed" \
      --save-models --no-progress --out "$out/eval" --skip-clean "${resume[@]}"
  fi
  # the null control: the unmarked rest of the training rows (neither x nor x~), the clean test split
  [ -f "$rest" ] || python - "$poisons" "$key" "$rest" <<'PY'
import sys
import numpy as np
from ntga.data import load_dataset
from ntga.marking.key import truth_labels
from ntga.poisondir import read_poison_dir
poisons = read_poison_dir(sys.argv[1])
marked = truth_labels(sys.argv[2], len(poisons.y))
ds = load_dataset(poisons.manifest["dataset"])
np.savez(sys.argv[3] + ".partial.npz", x_train=poisons.x[~marked], y_train=poisons.y[~marked], x_test=ds.x_test,
         y_test=ds.y_test)
import os; os.replace(sys.argv[3] + ".partial.npz", sys.argv[3])
print(f"null control data: {int((~marked).sum())} unmarked rows of {len(marked)} -> {sys.argv[3]}")
PY
  resume=(); [ -f "$out/control/results.json" ] && resume=(--resume)
  if [ ! -f "$out/control/accuracy_curves.png" ]; then
    python -m defenses.evaluate --dataset "npz:$rest" --target-size 0 --model "$victim" --epochs "$epochs" \
      --seeds 1 --seed "$seed" --save-models --no-progress --out "$out/control" "${resume[@]}"
  fi
  vname=${victim%%@*}
  for cond in poisoned clean; do
    model=$out/eval/models/$vname/poisoned/seed0
    [ "$cond" = clean ] && model=$out/control/models/$vname/clean/seed0
    [ -f "$out/detect-white-$cond.json" ] || python -m ntga.detect --key "$key" --model "$model" \
      --out "$out/detect-white-$cond.json" > /dev/null
    [ -f "$out/detect-black-$cond.json" ] || python -m ntga.detect --key "$key" --model "$model" --black-box \
      --out "$out/detect-black-$cond.json" > /dev/null
  done
done
python - "$res" "$runs" $fractions <<'PY'
import json, sys
from pathlib import Path
res, runs, fractions = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = ["| marked share | marked images | mean PSNR (dB) | victim acc. (marked data) | white-box log10 p | "
        "white-box, null control | black-box log10 p | black-box, null control |", "|---" * 8 + "|"]
for f in fractions:
    m = json.loads((runs / f"f{f}" / "manifest.json").read_text())
    d = {k: json.loads((res / f"f{f}" / f"detect-{k}.json").read_text())
         for k in ("white-poisoned", "white-clean", "black-poisoned", "black-clean")}
    runs_ = json.loads((res / f"f{f}" / "eval" / "results.json").read_text())["runs"]
    acc = [r["final_test_acc"] for r in (runs_.values() if isinstance(runs_, dict) else runs_)
           if r["condition"] == "poisoned"]
    rows.append(f"| {f} | {m['num_poisoned']} | {m['info_psnr_mean_db']:.2f} | "
                f"{100 * acc[0]:.2f}% | {d['white-poisoned']['log10_p']:.2f} | {d['white-clean']['log10_p']:.2f} | "
                f"{d['black-poisoned']['log10_p']:.2f} | {d['black-clean']['log10_p']:.2f} |")
(res / "results.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
