"""The shared ``--dataset`` flags and the ``python -m ntga.data`` inspection command."""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from ntga.data.dataset import Dataset
from ntga.data.limits import DEFAULT_MAX_DECODED_GB, DEFAULT_MAX_SIDE, DecodeLimits
from ntga.data.load import SPEC_FORMS, LoadInfo, load_dataset, load_dataset_info
from ntga.data.preview import write_preview
from ntga.data.split import Split, make_split


MAX_SEED = 2**63 - 1  # JAX keys and numpy generators take any non-negative int64


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse ``type`` for an int in [minimum, maximum] (minimum 0 or 1), else one clear error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            kind = "positive" if minimum == 1 else "non-negative"
            bound = "" if maximum is None else f" at most {maximum}"
            raise argparse.ArgumentTypeError(f"expected a {kind} integer{bound}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)  # the argparse type of every count flag (--epochs, --batch-size, --seeds, ...)


def add_dataset_args(parser: argparse.ArgumentParser, *, default_dataset: str = "digits") -> None:
    """Adds ``--dataset --train-size --test-size --target-size --seed --cache-dir --no-cache`` and the decode limits."""
    forms = "\n".join(f"  {form:<12} {what}" for form, what in SPEC_FORMS.items())
    g = parser.add_argument_group(
        "dataset",
        # Line by line under RawDescriptionHelpFormatter; a paragraph under the default.
        f"--dataset SPEC forms:\n{forms}",
    )
    g.add_argument(
        "--dataset",
        default=default_dataset,
        metavar="SPEC",
        help=f"dataset spec, one of the forms above (default: {default_dataset})",
    )
    g.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="protect a class-stratified subset of N training images "
        "(default: all that remain after the target set)",
    )
    g.add_argument(
        "--test-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="use a class-stratified subset of N test images (default: the whole test split)",
    )
    g.add_argument(
        "--target-size",
        type=int_at_least(0),
        default=None,
        metavar="N",
        help="training images held out as the attack's target set, the last N of the seeded "
        "permutation (default: min(10000, 20%% of the training split); 0 for none)",
    )
    g.add_argument(
        "--seed",
        type=int_at_least(0, MAX_SEED),
        default=0,
        help="seed of the split permutation and of any other randomness of the command (default: 0)",
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where decoded datasets are cached (default: $NTGA_CACHE_DIR or ~/.cache/ntga)",
    )
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the dataset cache")
    g.add_argument("--max-image-side", type=positive_int, default=DEFAULT_MAX_SIDE, metavar="PIXELS",
                   help="refuse images wider or taller than this, before decoding them (default: %(default)s)")
    g.add_argument("--max-decoded-gb", type=_positive_float, default=DEFAULT_MAX_DECODED_GB, metavar="GB",
                   help="refuse a dataset whose decoded pixels would take more memory than this, judged from "
                   "file headers before decoding (default: %(default)s)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def limits_from_args(args: argparse.Namespace) -> DecodeLimits:
    """The decode limits the ``--max-image-side`` / ``--max-decoded-gb`` flags describe."""
    return DecodeLimits(max_side=args.max_image_side, max_decoded_gb=args.max_decoded_gb)


def _split(ds: Dataset, args: argparse.Namespace) -> Split:
    return make_split(
        ds, train_size=args.train_size, target_size=args.target_size, test_size=args.test_size, seed=args.seed
    )


def split_from_args(args: argparse.Namespace) -> Split:
    """Loads ``args.dataset`` (honouring the cache flags) and draws the split the flags describe."""
    return _split(load_dataset(args.dataset, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                               limits=limits_from_args(args)), args)


def describe(split: Split, info: LoadInfo | None = None) -> str:
    """A human-readable summary: source, hash, shapes and per-class counts of the split."""
    ds = split.dataset
    h, w, c = ds.image_shape
    lines = [
        f"dataset       {ds.spec}",
        f"content hash  {ds.content_hash}",
    ]
    if info is not None:
        how = (
            f"from cache {info.cache_file}"
            if info.from_cache
            else f"decoded; cached to {info.cache_file}"
            if info.cache_file
            else "decoded (not cached)"
        )
        lines.append(f"loaded in     {info.seconds:.2f} s, {how}")
    lines += [
        f"images        {h}x{w}x{c} {ds.x_train.dtype} ({'RGB' if c == 3 else 'greyscale'}), "
        f"{ds.num_classes} classes",
        f"source        {len(ds.x_train)} train, {len(ds.x_test)} test",
        f"split seed {split.seed}  train (to protect) {len(split.train_idx)}, "
        f"target (held out) {len(split.target_idx)}, test {len(split.test_idx)}",
        "",
    ]
    k = ds.num_classes
    counts = {
        "train": np.bincount(ds.y_train[split.train_idx], minlength=k),
        "target": np.bincount(ds.y_train[split.target_idx], minlength=k),
        "test": np.bincount(ds.y_test[split.test_idx], minlength=k),
    }
    if k <= 30:
        width = max(5, *(len(n) for n in ds.class_names))
        lines.append(f"{'class':<{width}}  {'train':>7} {'target':>7} {'test':>7}")
        for i, name in enumerate(ds.class_names):
            lines.append(f"{name:<{width}}  " + " ".join(f"{counts[s][i]:>7}" for s in counts))
        lines.append(f"{'total':<{width}}  " + " ".join(f"{counts[s].sum():>7}" for s in counts))
    else:
        for s, cnt in counts.items():
            lines.append(f"per-class {s:<6} min {cnt.min()}, median {int(np.median(cnt))}, max {cnt.max()}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ntga.data",
        description="Load a dataset, draw the split the flags describe, and summarise it "
        "(content hash, shapes, per-class counts); optionally write a preview grid.",
        epilog="examples:\n  python -m ntga.data\n  python -m ntga.data --dataset idx:../shared/data/mnist "
        "--train-size 1000\n  python -m ntga.data --dataset folder:../shared/data/cifar10-jpeg.tar.gz "
        "--preview cifar.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_args(parser)
    parser.add_argument(
        "--preview",
        metavar="PNG",
        default=None,
        help="write a grid of training images, a row per class, to this PNG",
    )
    parser.add_argument(
        "--per-class",
        type=positive_int,
        default=8,
        metavar="K",
        help="images per class in the preview (default: 8)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ds, info = load_dataset_info(args.dataset, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                                 limits=limits_from_args(args))
    split = _split(ds, args)
    print(describe(split, info))
    if args.preview:
        path = write_preview(split.x_train, split.y_train, ds.class_names, args.preview, args.per_class)
        print(f"\npreview       {path} ({args.per_class} training images per class)")
    return 0
