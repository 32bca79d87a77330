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
# Writes experiments/radioactive/$NAME/f<F>/{eval/,detect-*.json} and $NAME/results.md. The poison
# directories go to runs/radioactive-$NAME/f<F> and the PRIVATE keys to runs/radioactive-$NAME-keys/f<F>
# (outside experiments/, never committed). The clean victim is trained once (first fraction) and is
# tested against every key: the null control (its p-values should look uniform).
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
  poisons=$runs/f$f; key=$keys/f$f; out=$res/f$f
  if [ ! -f "$poisons/manifest.json" ]; then
    # an interrupted generation leaves no key (it is written at the end) but may leave a work folder
    [ -d "$poisons" ] && [ ! -f "$key/radioactive_key.json" ] && rm -rf "$poisons" "$key"
    python -m ntga.generate --dataset "$dataset" "${size[@]}" --seed "$seed" --method "$mark" --fraction "$f" \
      --no-progress --out "$poisons" --key-out "$key"
  fi
  skip=(); [ -n "$first" ] && skip=(--skip-clean)
  resume=(); [ -f "$out/eval/results.json" ] && resume=(--resume)
  if [ ! -f "$out/eval/accuracy_curves.png" ]; then
    python -m defenses.evaluate --poisons "$poisons" --model "$victim" --epochs "$epochs" --seeds 1 --seed "$seed" \
      --save-models --no-progress --out "$out/eval" "${resume[@]}" "${skip[@]}"
  fi
  [ -z "$first" ] && first=$out
  vname=${victim%%@*}
  for cond in poisoned clean; do
    model=$out/eval/models/$vname/poisoned/seed0
    [ "$cond" = clean ] && model=$first/eval/models/$vname/clean/seed0
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
        "white-box, clean victim | black-box log10 p | black-box, clean victim |", "|---" * 8 + "|"]
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
