"""The white-box test's null distribution on real models: p-values over many random carrier sets.

    python experiments/radioactive/null_carriers.py KEY_DIR MODEL_DIR [MODEL_DIR ...] --draws 100 --out FILE.json

For each model (e.g. victims trained on clean or unmarked data) the key's carriers are replaced
by ``--draws`` independent sets of random unit vectors (seeded) and the white-box test is run
against each; under the null the p-values are uniform, so about 5% fall below 0.05. A new key
would also retrain the marking network (its weights depend on the secret); this keeps the
key's network and varies only the carriers, which is what the p-value's null hypothesis is
about (a direction independent of the model). Prints and writes a JSON summary: per model
the share below 0.05 and 0.01, the Kolmogorov-Smirnov distance to uniform, and the p-values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ntga.data import load_dataset
from ntga.errors import run_cli
from ntga.marking.detection import (align_features, aligned_cosines, check_compatible, cosine_log_pvalues,
                                    white_box)
from ntga.marking.key import read_key
from ntga.marking.network import classifier_rows, features
from ntga.marking.stats import fisher_log_pvalue
from ntga.models.saved import load_model


def ks_uniform(p: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of the sample ``p`` to Uniform(0, 1)."""
    p = np.sort(np.asarray(p, np.float64))
    n = len(p)
    upper = np.arange(1, n + 1) / n - p
    lower = p - np.arange(n) / n
    return float(max(upper.max(), lower.max()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("key")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-images", type=int, default=5000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    key = read_key(args.key)
    x = load_dataset(key.info["dataset"]).x_test[:args.num_images]
    rng = np.random.default_rng(args.seed)
    summary = {"key": str(args.key), "draws": args.draws, "seed": args.seed, "num_images": len(x), "models": {}}
    f0 = features(key.marking_net, x)
    for model_dir in args.models:
        model = load_model(model_dir)
        check_compatible(key, model)
        # The white-box test's steps (ntga.marking.detection.white_box), with the features and
        # the alignment computed once: only the carriers change between draws.
        rows_in_marking_space = classifier_rows(model), align_features(f0, features(model, x))
        ps = []
        for _ in range(args.draws):
            u = rng.standard_normal(key.carriers.shape)
            log_ps, _ = cosine_log_pvalues(aligned_cosines(*rows_in_marking_space, u), key.dim)
            ps.append(float(np.exp(fisher_log_pvalue(log_ps))))
        observed = white_box(key, model, x)["p_value"]
        p = np.asarray(ps)
        summary["models"][model_dir] = {"share_below_0.05": float(np.mean(p < 0.05)),
                                        "share_below_0.01": float(np.mean(p < 0.01)),
                                        "ks_distance": ks_uniform(p), "p_value_with_the_key": observed,
                                        "p_values": p.tolist()}
        print(f"{model_dir}: {100 * np.mean(p < 0.05):.1f}% below 0.05, {100 * np.mean(p < 0.01):.1f}% below 0.01, "
              f"KS {ks_uniform(p):.3f} over {len(p)} draws")
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
