"""Seeded end-to-end reproducibility check: NTGA makes digits unlearnable, a breaker undoes much of it.

Both command lines run in-process, as a user would chain them:

    python -m ntga.generate --dataset digits --train-size 400 --target-size 200 --block-size 400 --steps 5 --out P
    python -m defenses.evaluate --poisons P --model fnn-relu --model-opt width=128 --epochs 15 --batch-size 32 \\
        --seeds 2 --breakers bdr@bits=1,ueraser@draws=1

(fnn surrogate, L-inf eps 0.3, t 64: the MNIST defaults; victim fnn-relu, Adam 1e-3, CE; test = the
full 445-image digits test split.)

What we observed while choosing the settings (final test accuracy %, one value per training seed;
poison seeds 0-2 with training seeds 0-2, poison seeds 3-5 with training seeds 3-5; 2-core CPU):

    poison seed   clean             poisoned          bdr@bits=1        ueraser@draws=1   orthogonal-projection
    0             94.8 95.7 94.8    7.4 9.0 6.5       72.8 70.6 66.1    32.1 23.6 23.6    25.2 27.4 24.9
    1             96.6 96.9 97.1    6.5 5.4 6.5       67.2 67.4 65.4    29.0 25.2 24.0    16.6 11.7 13.7
    2             97.3 96.4 96.9    11.5 6.5 8.5      74.4 69.0 73.5    21.3 19.1 23.6    18.0 10.8 10.8
    3             96.18 ± 0.22      6.82 ± 1.69       70.64 ± 1.13      33.48 ± 7.59      22.70 ± 3.31
    4             96.85 ± 0.59      5.54 ± 2.04       71.09 ± 1.24      26.59 ± 5.17      18.13 ± 2.48
    5             95.96 ± 0.22      8.24 ± 2.77       67.42 ± 2.76      31.91 ± 3.19      23.30 ± 0.94

This test is poison seed 0 with training seeds 0-1 (deterministic; same numbers on every rerun here):
clean 95.28, poisoned 8.20, bdr@bits=1 71.69 (72.9% of the gap), ueraser@draws=1 27.87. It takes
about 25 s of CPU time (60 s wall on the 2 shared, overloaded cores it was measured on).

So the poison costs 86-92 points; 1-bit depth reduction gives back 58-66 of them (67-72% of the gap);
UEraser-Lite (one augmentation draw) gives back 12-27 points; orthogonal projection only 4-18, too
close to the noise to assert. Useless here (poisoned level, 4-10%): bdr@bits=2 (APBench's setting;
poison seeds 0-2) and, on a 500-image poison made with 10 steps (fnn-relu, 20 epochs, 3 seeds),
JPEG quality 10, Gaussian blur (kernel 5, sigma 1.5) and L-inf adversarial training at eps 0.3;
grayscale is a no-op on grey images. Why 1 bit works: the digits are nearly binary, and a pixel at
0 or 1 cannot cross the 0.5 threshold under eps = 0.3, so after 1-bit quantisation 88% of the
poisoned pixels equal the quantised clean ones (with 2 bits the thresholds 1/6, 1/2, 5/6 are within
reach and only 32% do; poison seed 0).

The assertions use at most half of the smallest effect observed above, so they hold with wide margins.
"""

from __future__ import annotations

import json

import pytest

from defenses.evaluate import main as evaluate_main
from ntga.generate import main as generate_main

GENERATE = ["--dataset", "digits", "--train-size", "400", "--target-size", "200", "--block-size", "400",
            "--steps", "5", "--seed", "0", "--no-progress"]
EVALUATE = ["--model", "fnn-relu", "--model-opt", "width=128", "--epochs", "15", "--batch-size", "32",
            "--seeds", "2", "--seed", "0", "--breakers", "bdr@bits=1,ueraser@draws=1", "--no-progress"]


@pytest.mark.repro
@pytest.mark.slow
def test_ntga_poison_drops_accuracy_and_bit_depth_reduction_recovers_it(tmp_path):
    poisons = tmp_path / "poisons"
    assert generate_main([*GENERATE, "--out", str(poisons)]) == 0
    assert evaluate_main(["--poisons", str(poisons), *EVALUATE, "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["complete"] and len(results["runs"]) == 8
    rows = {cid: row["final_mean"] for cid, row in results["summary"]["fnn-relu"].items()}
    clean, poisoned = rows["clean"], rows["poisoned"]
    bdr, ueraser = rows["poisoned/bdr@bits=1"], rows["poisoned/ueraser@draws=1"]
    summary = f"clean {clean:.3f}, poisoned {poisoned:.3f}, bdr@bits=1 {bdr:.3f}, ueraser@draws=1 {ueraser:.3f}"
    assert clean > 0.80, summary                    # observed >= 0.948
    assert clean - poisoned > 0.40, summary         # observed drop >= 0.86
    assert bdr - poisoned > 0.25, summary           # observed recovery >= 0.58
    assert results["summary"]["fnn-relu"]["poisoned/bdr@bits=1"]["gap_recovered_final"] > 0.30, summary  # >= 0.67
    assert ueraser - poisoned > 0.05, summary       # observed >= 0.12
