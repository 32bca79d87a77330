"""`python -m defenses.detect`: which rows of a dataset carry a protection?

Examples::

    # a --fraction poison directory: scores, AUROC / AUPRC, histograms and ROC curves
    python -m ntga.generate --dataset digits --method lsp --fraction 0.5 --out runs/digits-lsp-half
    python -m defenses.detect --poisons runs/digits-lsp-half --detector linear,early-loss,cd --out runs/detect-lsp
    # any dataset: scores only
    python -m defenses.detect --poisons idx:../shared/data/mnist --train-size 5000 --detector linear --out runs/det-mnist

All logic lives in :mod:`defenses.detectors`.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from defenses.detectors import describe_detector, describe_detectors
from ntga.data import add_dataset_args
from ntga.data.cli import limits_from_args, positive_int
from ntga.errors import UserInputError, run_cli
from ntga.models import MODELS
from ntga.options import split_kind


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m defenses.detect",
        description="Score every training row for how likely it carries a protection (higher = more "
        "suspicious) with one or more detectors. Writes OUT/<detector>/scores.npy (float64 [N], aligned with "
        "the rows of x_train.npy or of the dataset's training split), detection.json and summary.md. When the "
        "poison directory has protected_positions.npy (a --fraction run), also AUROC and AUPRC per detector, "
        "a score histogram per detector (protected vs clean) and roc.png.",
        epilog="detectors (--detector a,b@key=value):\n"
        + "\n".join(f"  {line}" for line in describe_detectors().splitlines())
        + "\n\n--list-opts detector:NAME prints one detector's options and defaults; model:NAME a model's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--poisons", metavar="DIR|SPEC", default=None,
                   help="what to score: a poison directory (from ntga.generate, sha256-verified; the source dataset "
                   "is not needed) or a dataset spec (digits, idx:DIR, folder:PATH, npz:FILE, tfds:NAME), whose training split "
                   "is scored (scores only). Default: --dataset")
    add_dataset_args(p)
    for action in p._actions:  # the shared flags' help is about generate
        if action.dest == "train_size":
            action.help = ("dataset specs only: score a class-stratified subset of N training rows, the rows "
                           "`ntga.generate --train-size N --target-size 0` picks for the same --seed; their "
                           "indices are written to OUT/rows.npy")
        if action.dest in ("test_size", "target_size"):
            action.help = "not used by defenses.detect (it scores training rows only; refused)"
        if action.dest == "dataset":
            action.help = "what to score when --poisons is not given (default: digits)"
        if action.dest == "seed":
            action.help = "seed of the suspect model, CD's colours and the --train-size subset (default: 0)"
    d = p.add_argument_group("detectors")
    d.add_argument("--detector", default="early-loss,linear", metavar="A[@KEY=VALUE,...][,B...]",
                   help="detectors, comma-separated, options as name@key=value: cd, early-loss, linear "
                   "(default: early-loss,linear; cd costs `steps` forward-backward passes per image)")
    d.add_argument("--auroc", action="store_true",
                   help="require AUROC/AUPRC: fail at once when the source has no protection labels "
                   "(protected_positions.npy of a --fraction run); without it they are reported when available")
    d.add_argument("--truth", default=None, metavar="KEY_DIR",
                   help="a radioactive run's private key (ntga.generate --method radioactive --key-out): the "
                   "marked rows, which the published poison directory does not list, become the protection "
                   "labels for AUROC/AUPRC (for the owner's own experiments)")
    d.add_argument("--list-opts", default=None, metavar="KIND:NAME",
                   help="print the options and defaults of detector:NAME or model:NAME and exit")
    m = p.add_argument_group("suspect model (cd and early-loss train one on the data being scored)")
    m.add_argument("--model", default="small-cnn", metavar="NAME[@KEY=VALUE,...]",
                   help=f"one of {', '.join(n for n in MODELS if n != 'fast-resnet')} (default: small-cnn)")
    m.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="module override, repeatable, e.g. width=16 (same as --model NAME@KEY=VALUE)")
    m.add_argument("--epochs", type=positive_int, default=5, help="training epochs (default: 5)")
    m.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default: 128)")
    m.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the model's own)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="results directory (default: runs/detect-<name of the source>; never inside the poison "
                   "directory)")
    o.add_argument("--resume", action="store_true",
                   help="continue OUT: detectors whose scores are saved there with identical settings (and pass "
                   "their sha256 check, scores.npy.sha256) are skipped; damaged scores are recomputed")
    return p


def default_out(source: str) -> Path:
    kind, colon, arg = source.partition(":")
    name = Path((arg if colon and not Path(source).exists() else source).rstrip("/")).name or kind
    return Path("runs") / f"detect-{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('.-') or 'data'}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_opts is not None:
        kind, name = split_kind(args.list_opts, ("detector", "model"))
        if kind == "detector":
            print(describe_detector(name))
        else:
            from defenses.evaluate import list_opts
            print(list_opts(args.list_opts, [], "none"))
        return 0
    from defenses.detectors import ModelConfig, parse_detectors
    from defenses.detectors.pipeline import detect, load_source
    from defenses.evaluate import parse_models
    from defenses.evaluation import parse_model_opts

    detectors = parse_detectors(args.detector)
    specs = parse_models(args.model)
    if len(specs) != 1:
        raise UserInputError(f"--model takes one model for the detectors, got {args.model!r}")
    name, given = specs[0]
    opts = parse_model_opts(args.model_opt, [name], {name: given})[name]
    model_cfg = ModelConfig(model=name, model_opts=tuple(sorted(opts.items())), epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr)
    for flag, value in (("--test-size", args.test_size), ("--target-size", args.target_size)):
        if value is not None:
            raise UserInputError(f"{flag} does not apply to defenses.detect (it scores training rows only)")
    source_text = args.poisons if args.poisons is not None else args.dataset
    source = load_source(source_text, train_size=args.train_size, seed=args.seed, cache_dir=args.cache_dir,
                         use_cache=not args.no_cache, limits=limits_from_args(args))
    if args.truth is not None:
        source = with_marked_rows(source, args.truth)
    out = Path(args.out) if args.out else default_out(source_text)
    if source.kind == "poisons" and Path(source.what).resolve() in (out.resolve(), *out.resolve().parents):
        raise UserInputError(f"--out {out} is inside the poison directory {source.what}, which stays as published; "
                             "choose a directory outside it")
    command = "python -m defenses.detect " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    outcome = detect(source, detectors, model_cfg=model_cfg, seed=args.seed, out=out, resume=args.resume,
                     require_labels=args.auroc, command=command)
    print()
    print((outcome.out / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {outcome.out}: detection.json, summary.md, " + ", ".join(
        [f"{n}/scores.npy" for n in outcome.payload["detectors"]] + outcome.payload["figures"]))
    return 0


def with_marked_rows(source, key_dir: str):
    """``source`` (a radioactive poison directory) with the key's marked rows as its protection labels.

    Raises:
      UserInputError: not a poison directory, or a key of another run.
    """
    import dataclasses

    from ntga.marking.key import marked_positions, read_key
    from ntga.poisondir import read_poison_dir

    if source.kind != "poisons":
        raise UserInputError("--truth needs --poisons to be the poison directory the key was made with")
    key = read_key(key_dir)
    recorded = read_poison_dir(source.what).manifest.get("info_key_sha256")
    if recorded != key.hash:
        raise UserInputError(f"--truth {key_dir} is not the key of {source.what} (its manifest records key "
                             f"{str(recorded)[:16]}..., the key is {key.hash[:16]}...)")
    positions = marked_positions(key)
    if positions.size and positions.max() >= len(source.x):
        raise UserInputError(f"--truth {key_dir} marks row {int(positions.max())} but {source.what} has "
                             f"{len(source.x)} rows")
    return dataclasses.replace(source, positions=positions)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
