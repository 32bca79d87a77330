"""`python -m ntga.generate`: make a protected ("unlearnable") copy of a dataset's training split.

Example (the embedded dataset; under a minute on a 2-core CPU)::

    python -m ntga.generate --dataset digits --out runs/digits-ntga

MNIST at full scale with the reference's settings and real 10-step PGD::

    python -m ntga.generate --dataset idx:../shared/data/mnist --kernel fnn --out runs/mnist-fnn

Defaults follow the reference (Yuan & Wu, ICML 2021) by image type: greyscale
datasets get MNIST's settings (eps 0.3, t 64), colour ones CIFAR-10's (eps 8/255,
t 4096 for fnn and 8 for cnn). All logic lives in :mod:`ntga.pipeline`.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import Any, Sequence

from ntga.data import add_dataset_args
from ntga.errors import UserInputError, run_cli

METHODS = ("ntga",)


def parse_fraction(text: str, flag: str) -> float:
    """Parses ``0.03``, ``8/255`` or ``1e-2`` into a float, with a clear error."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UserInputError(f"{flag} must be a number such as 0.3 or 8/255, got {text!r}") from None


def parse_kernel_opts(items: Sequence[str]) -> dict[str, Any]:
    """Parses repeated ``--kernel-opt KEY=VALUE`` into typed overrides (int, float or string)."""
    opts: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserInputError(f"--kernel-opt must look like KEY=VALUE (e.g. depth=3), got {item!r}")
        for cast in (int, float):
            try:
                opts[name] = cast(value)
                break
            except ValueError:
                continue
        else:
            opts[name] = value
    return opts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ntga.generate",
        description="Protect a dataset's training split with Neural Tangent Generalization Attacks "
        "(projected gradient ascent against an infinite-width NTK Gaussian process). Writes a poison "
        "directory (numpy arrays + manifest.json with sha256 + preview.png) that "
        "`python -m defenses.evaluate --poisons DIR` reads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset_args(p)
    p.add_argument("--out", required=True, help="output directory (must be new or empty, unless --resume)")
    p.add_argument("--method", default="ntga", choices=METHODS, help="protection method")
    p.add_argument("--kernel", default="fnn", help="surrogate kernel: fnn (5 x Dense-Erf) or cnn (2 x Conv-ReLU)")
    p.add_argument("--kernel-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="kernel override, repeatable: depth, activation (erf|relu), W_std, b_std, ...")
    p.add_argument("--eps", default=None, help="perturbation budget in [0,1] pixel units, e.g. 0.3 or 8/255 "
                   "(default: 0.3 for greyscale data, 8/255 for colour)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"), help="budget norm (L2 is per image)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (1 with --step-size eps is the reference's FGSM)")
    p.add_argument("--step-size", default=None, help="PGD step size (default 1.1*eps/steps)")
    p.add_argument("--random-start", action="store_true", help="start PGD at a random point of the budget ball")
    p.add_argument("--t", type=float, default=None, help="GP training time (default per REFERENCE: grey 64; "
                   "colour fnn 4096, cnn 8)")
    p.add_argument("--block-size", type=int, default=512, help="training examples poisoned together")
    p.add_argument("--target-chunk", type=int, default=None,
                   help="target images per gradient chunk (memory bound; the gradient stays exact)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="compute precision")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process only blocks i with i %% N == K-1 (one process per host on a cluster; "
                   "the last process to finish assembles the output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ntga.pipeline import GenerateOptions, generate_from_args

    options = GenerateOptions(
        kernel=args.kernel,
        kernel_overrides=parse_kernel_opts(args.kernel_opt),
        eps=None if args.eps is None else parse_fraction(args.eps, "--eps"),
        norm=args.norm,
        steps=args.steps,
        step_size=None if args.step_size is None else parse_fraction(args.step_size, "--step-size"),
        random_start=args.random_start,
        t=args.t,
        block_size=args.block_size,
        target_chunk=args.target_chunk,
        dtype=args.dtype,
    )
    generate_from_args(args, options)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
