"""`python -m defenses.evaluate`: train victims on protected data and measure what each breaker recovers.

Examples::

    # after `python -m ntga.generate --dataset digits --out runs/digits-ntga`
    python -m defenses.evaluate --poisons runs/digits-ntga --breakers none,bdr@bits=1,ueraser
    # the paper's victims, 50 epochs at batch 64, on an MNIST poison
    python -m defenses.evaluate --poisons runs/mnist-fnn --model fnn,fnn-relu,cnn --epochs 50 --batch-size 64
    # clean-only: what the victims reach on unprotected data (and what a breaker costs)
    python -m defenses.evaluate --dataset digits --breakers none,grayscale,jpeg

All logic lives in :mod:`defenses.evaluation`.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from defenses.breakers import describe_breakers
from ntga.models import MODELS
from ntga.train.config import SCHEDULES, TTAS
from ntga.data import add_dataset_args
from ntga.data.cli import limits_from_args, positive_int
from ntga.errors import UserInputError, run_cli
from ntga.options import describe_options, parse_spec, split_kind, split_specs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m defenses.evaluate",
        description="Train victim models on clean data, on a poison directory (from `python -m ntga.generate`) "
        "and on the poisons with each breaker applied; report final and peak test accuracy per condition "
        "(mean ± std over seeds) and the share of the poison's accuracy gap each breaker recovers. Writes "
        "results.json (after every run), results.md and two PNG figures.",
        epilog="victims (--model):\n" + "\n".join(f"  {n:<12} {s.description}" for n, s in MODELS.items())
        + "\n\nbreakers (--breakers a,b+c,d@key=value):\n"
        + "\n".join(f"  {line}" for line in describe_breakers().splitlines())
        + "\n\noptions use one grammar: NAME@KEY=VALUE,KEY=VALUE (keys may use dashes, floats accept 8/255),\n"
        "e.g. --model resnet18@width=32,stages=1,1,1,1 or --breakers blur@kernel=5,sigma=0.5,jpeg.\n"
        "--list-opts model:NAME or --list-opts breaker:NAME prints one's options and defaults;\n"
        "--list-opts alone those of the chosen --model and --breakers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--poisons", metavar="SOURCE", default=None,
                   help="what to evaluate: a poison directory (from ntga.generate; its source dataset is "
                   "reloaded from the manifest and checked by content hash), or poisons made by another tool "
                   "together with --dataset naming the clean data: IMAGES.npy,LABELS.npy (uint8 or float "
                   "[0, 1] images, int or one-hot labels) or a dataset spec whose training split holds them "
                   "(e.g. folder:PATH of an APBench export). Without --poisons: clean-only runs on --dataset")
    add_dataset_args(p)
    p.set_defaults(dataset=None)
    for action in p._actions:  # the shared flag's help assumes a fixed default
        if action.dest == "dataset":
            action.help = ("dataset spec (default: digits; with --poisons, the one recorded in the poison "
                           "manifest: pass it to point at a moved copy of the same data, checked by content hash)")
    g = p.add_argument_group("what to train")
    g.add_argument("--model", default="small-cnn", metavar="A[@KEY=VALUE,...][,B...]",
                   help=f"victims, comma-separated, each optionally with module options: {', '.join(MODELS)} "
                   "(default: small-cnn)")
    g.add_argument("--breakers", default="none", metavar="SPECS",
                   help="comma-separated breakers, composed with '+', options as name@key=value "
                   "(default: none; clean and poisoned baselines are always trained)")
    g.add_argument("--skip-clean", action="store_true",
                   help="with --poisons: do not train the clean baseline (when it is measured once elsewhere "
                   "with the same settings, e.g. for several methods' poisons of the same data); the table "
                   "then has no gap-recovered values")
    g.add_argument("--breakers-on-clean", action="store_true",
                   help="also train each breaker on the clean images (what the breaker itself costs)")
    g.add_argument("--seeds", type=positive_int, default=3,
                   help="runs per (victim, condition); seed s trains with key --seed + s (default: 3)")
    g.add_argument("--model-opt", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                   help="victim override, repeatable, e.g. width=16, small-cnn:width=8, resnet18:dtype=bfloat16 "
                   "(MODEL:KEY=VALUE is the same as --model MODEL@KEY=VALUE)")
    g.add_argument("--list-opts", nargs="?", const=True, default=None, metavar="KIND:NAME",
                   help="print the options and defaults of model:NAME or breaker:NAME (alone: of the chosen "
                   "--model and --breakers) and exit")
    t = p.add_argument_group("training recipe (default: each victim's own, see ntga.models)")
    t.add_argument("--epochs", type=positive_int, default=30, help="training epochs (default: 30)")
    t.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default: 128)")
    t.add_argument("--optimizer", default=None, choices=("sgd", "adam"))
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    t.add_argument("--nesterov", default=None, action=argparse.BooleanOptionalAction,
                   help="Nesterov momentum (SGD with momentum > 0 only; ignored otherwise)")
    t.add_argument("--weight-decay", type=float, default=None, help="coupled L2 weight decay")
    t.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="learning-rate decay over the run: cosine or linear to 0, or constant")
    t.add_argument("--warmup", type=float, default=None, metavar="SHARE",
                   help="share of the steps spent raising the learning rate linearly from 0 first, in [0, 1)")
    t.add_argument("--label-smoothing", type=float, default=None, metavar="S",
                   help="spread a share S of each training target evenly over the classes, in [0, 1)")
    t.add_argument("--tta", default=None, choices=TTAS,
                   help="test-time augmentation: none, or flip (logits averaged over each test image and "
                   "its mirror image); evaluation only")
    t.add_argument("--loss", default=None, choices=("ce", "mse"))
    t.add_argument("--augment", default=None, action=argparse.BooleanOptionalAction,
                   help="random crop + flip of the training batches")
    t.add_argument("--standardize", default=True, action=argparse.BooleanOptionalAction,
                   help="standardise inputs per channel with the training images' mean/std (default); "
                   "--no-standardize feeds raw [0, 1] pixels, as the NTGA reference's victims")
    t.add_argument("--eval-every", type=positive_int, default=1,
                   help="evaluate the test set every N epochs and after the last (default: 1)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="results directory (default: runs/eval-<name of the poison directory>, or "
                   "runs/eval-<dataset> without --poisons; never inside the poison directory, which a data "
                   "owner may publish as it is)")
    o.add_argument("--resume", action="store_true",
                   help="continue OUT/results.json: runs already there are skipped (settings must be identical)")
    o.add_argument("--save-models", action="store_true",
                   help="keep every trained victim, pickle-free (model.json + params.npz), under "
                   "OUT/models/<model>/<condition>/seed<k>/ (e.g. for `python -m ntga.detect --model DIR`)")
    o.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    return p


def default_out(args: argparse.Namespace) -> Path:
    """runs/eval-<poison directory name> (or -<dataset name>): beside the poisons, not inside them."""
    if args.poisons is not None:
        name, fallback = Path(args.poisons).resolve().name, "poisons"
    else:
        kind, _, arg = args.dataset.partition(":")
        name, fallback = (Path(arg.rstrip("/")).name if arg else kind), kind
    return Path("runs") / f"eval-{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('.-') or fallback}"


def parse_models(text: str) -> list[tuple[str, dict[str, str]]]:
    """``--model A[@KEY=VALUE,...][,B...]`` -> ``[(name, raw options)]`` (grammar: :mod:`ntga.options`)."""
    return [parse_spec(item, "--model", "resnet18@width=32") for item in split_specs(text, "--model")]


def list_opts(target: str | bool, models: Sequence[str], breakers: str) -> str:
    """The ``--list-opts`` text for ``model:NAME``, ``breaker:NAME``, or (True) the chosen ones."""
    from defenses.breakers import describe_breaker
    from ntga.models import get_model, model_options

    def model(name: str) -> str:
        spec = get_model(name)
        return describe_options(model_options(spec), f"model {name}: {spec.description}",
                                note=f"options ({name}@KEY=VALUE,KEY=VALUE in --model, or --model-opt "
                                f"{name}:KEY=VALUE):", doc="")

    if target is True:
        names = [name for item in split_specs(breakers, "--breakers") for name in
                 (part.split("@", 1)[0].strip() for part in item.split("+"))]
        return "\n\n".join([*map(model, models), *map(describe_breaker, dict.fromkeys(names))])
    kind, name = split_kind(target, ("model", "breaker"))
    return model(name) if kind == "model" else describe_breaker(name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    specs = parse_models(args.model)
    if args.list_opts is not None:
        print(list_opts(args.list_opts, [name for name, _ in specs], args.breakers))
        return 0
    from defenses.breakers import parse_breakers
    from defenses.evaluation import (evaluate, is_poison_dir, load_clean, load_foreign_poisons, load_poisoned,
                                     make_conditions, make_victims, markdown_tables, parse_model_opts)
    from ntga.train import TrainConfig
    from ntga.data import split_from_args

    # Everything that can be checked without data is checked first, then the data, then the
    # victims against the data (inside evaluate), all before any training.
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                         augment=args.augment, loss=args.loss, standardize=args.standardize,
                         eval_every=args.eval_every, nesterov=args.nesterov, warmup=args.warmup,
                         label_smoothing=args.label_smoothing, tta=args.tta)
    models = [name for name, _ in specs]
    victims = make_victims(models, parse_model_opts(args.model_opt, models, dict(specs)), config)
    breakers = parse_breakers(args.breakers)
    if args.poisons is not None:
        for flag, value in (("--train-size", args.train_size), ("--target-size", args.target_size)):
            if value is not None:
                raise UserInputError(f"{flag} does not apply with --poisons: the poisons fix the training "
                                     "images (use --test-size to subsample the test set)")
        load = load_poisoned if is_poison_dir(args.poisons) else load_foreign_poisons
        data = load(args.poisons, dataset=args.dataset, test_size=args.test_size, seed=args.seed,
                    cache_dir=args.cache_dir, use_cache=not args.no_cache, limits=limits_from_args(args))
    else:
        args.dataset = args.dataset or "digits"
        data = load_clean(split_from_args(args))
    if args.skip_clean and not data.poisoned:
        raise UserInputError("--skip-clean needs --poisons: without poisons the clean runs are the whole evaluation")
    conditions = make_conditions(breakers, poisoned=data.poisoned, breakers_on_clean=args.breakers_on_clean,
                                 clean_baseline=not args.skip_clean)
    out = Path(args.out) if args.out else default_out(args)
    command = "python -m defenses.evaluate " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                               else argv))
    outcome = evaluate(data, victims, conditions, config=config, seeds=args.seeds, base_seed=args.seed, out=out,
                       resume=args.resume, progress=not args.no_progress, extra_info={"command": command},
                       save_models=args.save_models)
    print()
    print(markdown_tables(outcome.results))
    files = ", ".join(["results.json", "results.md", *outcome.figures])
    print(f"wrote {outcome.out}: {files} ({outcome.trained} run(s) trained)")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
