"""Summarise NTGA generation runs (poison directories) into results.json and results.md.

Usage (after the two runs in this folder's README)::

    python experiments/ntga_mnist/summarize.py runs/mnist-fnn runs/mnist-fnn-fgsm \
        --out experiments/ntga_mnist

Reads only the verified manifests: settings, wall time and the GP's own target-set
accuracy per block (clean vs poisoned), the attack's first health check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ntga.errors import run_cli
from ntga.poisondir import read_poison_dir

KEYS = ("method", "kernel", "eps", "norm", "steps", "step_size", "t", "block_size", "dtype", "seed",
        "dataset", "num_poisoned", "target_size")


def summarize(path: Path) -> dict:
    m = read_poison_dir(path).manifest
    blocks = m["blocks"]
    clean = np.array([b["clean_target_acc"] for b in blocks])
    poisoned = np.array([b["poisoned_target_acc"] for b in blocks])
    return {
        "path": str(path),
        **{k: m.get(k) for k in KEYS},
        "num_blocks": len(blocks),
        "block_sizes": sorted({int(b["shape"][0]) for b in blocks}),
        "gp_target_acc_clean_mean": float(clean.mean()),
        "gp_target_acc_clean_std": float(clean.std()),
        "gp_target_acc_poisoned_mean": float(poisoned.mean()),
        "gp_target_acc_poisoned_std": float(poisoned.std()),
        "wall_time_s_sum_of_blocks": float(sum(b["seconds"] for b in blocks)),
        "median_block_s": float(np.median([b["seconds"] for b in blocks])),
        "devices": m.get("devices"),
        "library_versions": m.get("library_versions"),
        "created": m.get("created"),
    }


def to_markdown(rows: list[dict]) -> str:
    lines = ["| run | steps | step size | blocks | GP target acc clean (%) | GP target acc poisoned (%) | "
             "wall time (min) | median s/block |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {Path(r['path']).name} | {r['steps']} | {r['step_size']:.4g} | {r['num_blocks']} "
            f"({'/'.join(map(str, r['block_sizes']))}) | {100 * r['gp_target_acc_clean_mean']:.2f} "
            f"± {100 * r['gp_target_acc_clean_std']:.2f} | {100 * r['gp_target_acc_poisoned_mean']:.2f} "
            f"± {100 * r['gp_target_acc_poisoned_std']:.2f} | {r['wall_time_s_sum_of_blocks'] / 60:.1f} | "
            f"{r['median_block_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="poison directories")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    args = p.parse_args(argv)
    rows = [summarize(r) for r in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
