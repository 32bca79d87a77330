"""`python -m ntga.generate`: make a protected ("unlearnable") copy of a dataset's training split.

Example (the embedded dataset; under a minute on a 2-core CPU)::

    python -m ntga.generate --dataset digits --out runs/digits-ntga

MNIST at full scale with the reference's settings and real 10-step PGD::

    python -m ntga.generate --dataset idx:../shared/data/mnist --kernel fnn --out runs/mnist-fnn

Defaults follow the reference (Yuan & Wu, ICML 2021) by image type: greyscale
datasets get MNIST's settings (eps 0.3, t 64), colour ones CIFAR-10's (eps 8/255,
t 4096 for fnn and 8 for cnn). Every method, NTGA included, runs through the one
driver :func:`ntga.run.driver.generate`; this module only turns flags into the
method's config.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, Mapping, Sequence

from ntga.data import add_dataset_args
from ntga.errors import UserInputError, run_cli
from ntga.options import describe_options, merge_assignments, parse_number, parse_spec, split_kind, typed_items

from ntga.methods import METHOD_NAMES as METHODS

# Flags that only NTGA reads (each sets the NTGAConfig field of its name); other methods take --method-opt.
NTGA_ONLY = ("kernel", "kernel_opt", "random_start", "t", "block_size", "target_chunk", "dtype")
# Flags every method may have a config field for.
SHARED = ("eps", "norm", "steps", "step_size")


def parse_fraction(text: str, flag: str) -> float:
    """Parses ``0.03``, ``8/255`` or ``1e-2`` into a float, with a clear error."""
    try:
        return parse_number(text)
    except (ValueError, ZeroDivisionError):
        raise UserInputError(f"{flag} must be a number such as 0.3 or 8/255, got {text!r}") from None


def parse_kernel_opts(items: Sequence[str], kernel: str = "fnn",
                      given: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Kernel overrides from ``--kernel NAME@KEY=VALUE,...`` and repeated ``--kernel-opt KEY=VALUE``.

    Values are typed from the kernel's config (:func:`ntga.kernels.kernel_options`): ``depth=3``
    is an int, ``W_std=1.76`` (or ``8/255``) a float, ``activation=relu`` a string.

    Args:
      items: the ``--kernel-opt`` values.
      kernel: the kernel they configure.
      given: raw options from the ``--kernel`` spec; a key may not be given both ways.

    Raises:
      UserInputError: malformed item, unknown key (listing the accepted ones) or a bad value.
    """
    from ntga.kernels import kernel_options

    raw = merge_assignments(given or {}, items, "--kernel-opt", "--kernel", "depth=3", what="kernel option")
    return typed_items(kernel_options(kernel), raw, f"--kernel {kernel}")


def build_parser() -> argparse.ArgumentParser:
    description = ("Protect a dataset's training split, by default with Neural Tangent Generalization Attacks "
                   "(projected gradient ascent against an infinite-width NTK Gaussian process), or with another "
                   "method of the registry (--method NAME@KEY=VALUE,...; or settings via --method-opt KEY=VALUE). Writes a poison "
                   "directory (numpy arrays + manifest.json with sha256 + preview.png) that "
                   "`python -m defenses.evaluate --poisons DIR` reads. --out DIR is required (except with "
                   "--list-opts).")
    epilog = ("methods: ntga (default), random (uniform noise; noise=sample-wise|class-wise), em (error-minimizing "
              "noise), cuda (class-wise blur filters from a private key), sep (self-ensemble protection), beo "
              "(Bayes-error optimisation), lsp (linearly separable patches), ops (one-pixel shortcut), ar "
              "(autoregressive noise), radioactive (a mark that proves use; needs --key-out DIR; detect with "
              "python -m ntga.detect). Options use one grammar: NAME@KEY=VALUE,KEY=VALUE (keys may use dashes; "
              "floats accept 8/255), e.g. --method em@noise=class-wise,steps=20 or --kernel cnn@depth=3. "
              "`--method NAME --list-opts` prints a method's settings and defaults (for ntga also the "
              "--kernel's overrides); `--list-opts kernel:NAME` or `--list-opts method:NAME` prints one "
              "directly. Flags marked [ntga] apply to NTGA only.")
    # Raw layout keeps the dataset-spec table one form per line; the paragraphs are wrapped here.
    p = argparse.ArgumentParser(
        prog="python -m ntga.generate",
        description=textwrap.fill(description, 79),
        epilog=textwrap.fill(epilog, 79),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_args(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, required (new or empty, or this tool's run with --resume)")
    p.add_argument("--method", default="ntga", metavar="NAME[@KEY=VALUE,...]",
                   help=f"protection method: {', '.join(METHODS)} (default ntga), optionally with settings")
    p.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the method, repeatable, the same as NAME@KEY=VALUE (see --list-opts)")
    p.add_argument("--list-opts", nargs="?", const=True, default=None, metavar="KIND:NAME",
                   help="print the chosen method's settings (and for ntga the kernel's overrides) and exit; "
                   "or those of method:NAME or kernel:NAME")
    p.add_argument("--fraction", default="1", help="share of each class to protect, in (0, 1]; the rest "
                   "stays clean (chosen by --seed, the same rows for every method)")
    p.add_argument("--protect-targets", action="store_true",
                   help="also protect the held-out target set, so the output holds every training image: "
                   "ntga protects it in a second pass against clean originals of as many first-pass images "
                   "(the first pass stays the standard run); other methods protect it with the rest")
    p.add_argument("--eps", default=None, help="perturbation budget in [0,1] pixel units, e.g. 0.3 or 8/255 "
                   "(default: 0.3 for greyscale data, 8/255 for colour)")
    p.add_argument("--norm", default=None, choices=("linf", "l2"),
                   help="budget norm (L2 is per image; default linf)")
    p.add_argument("--steps", type=int, default=None,
                   help="attack steps (ntga default 10; 1 with --step-size eps is the reference's FGSM)")
    p.add_argument("--step-size", default=None, help="attack step size (ntga default 1.1*eps/steps)")
    p.add_argument("--kernel", default=None, metavar="NAME[@KEY=VALUE,...]",
                   help="[ntga] surrogate kernel: fnn (5 x Dense-Erf, default) or cnn (2 x Conv-ReLU), "
                   "optionally with overrides, e.g. cnn@depth=3,W_std=1.5")
    p.add_argument("--kernel-opt", action="append", default=None, metavar="KEY=VALUE",
                   help="[ntga] kernel override, repeatable, the same as NAME@KEY=VALUE: depth, activation "
                   "(erf|relu), W_std, b_std, ... (see --list-opts kernel:NAME)")
    p.add_argument("--random-start", action="store_true", default=None,
                   help="[ntga] start PGD at a random point of the budget ball")
    p.add_argument("--t", type=float, default=None, help="[ntga] GP training time (default per REFERENCE: "
                   "grey 64; colour fnn 4096, cnn 8)")
    p.add_argument("--block-size", type=int, default=None, help="[ntga] training examples poisoned together "
                   "(default 512, or all of them when fewer)")
    p.add_argument("--target-chunk", type=int, default=None,
                   help="[ntga] target images per gradient chunk (memory bound; the gradient stays exact)")
    p.add_argument("--dtype", default=None, choices=("float64", "float32"),
                   help="[ntga] compute precision (default float64)")
    p.add_argument("--key-out", default=None, metavar="DIR",
                   help="[radioactive] required: a new private folder, outside --out, for the secret key "
                   "(carriers, marking network, marked images) that `python -m ntga.detect --key DIR` needs; "
                   "never published, the poison directory records only its sha256")
    p.add_argument("--same-secret-as", default=None, metavar="KEY_DIR",
                   help="[radioactive] mark with the secret of an existing key (same carriers and marking "
                   "network, which is then not retrained): several marked releases that one detection covers; "
                   "the new key still goes to --key-out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="block-wise methods (ntga, beo): process only blocks i with i %% N == K-1 (one "
                   "process per host on a cluster; the last process to finish assembles the output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _describe_method(spec) -> str:
    flags = [*SHARED, *(NTGA_ONLY if spec.name == "ntga" else ())]
    as_flags = ", ".join("--" + f.replace("_", "-") + (" (kernel_overrides)" if f == "kernel_opt" else "")
                         for f in flags)
    note = (f"settings (--method {spec.name}@KEY=VALUE,... or --method-opt KEY=VALUE; also as the flags "
            f"{as_flags}; None = resolved for the data):")
    return describe_options(spec.config_type, f"--method {spec.name}: {spec.summary}", note=note)


def _describe_kernel(name: str) -> str:
    from ntga.kernels import CONFIGS, kernel_options

    return describe_options(kernel_options(name), f"--kernel {name}: overrides "
                            f"(--kernel {name}@KEY=VALUE,... or --kernel-opt KEY=VALUE):",
                            doc=CONFIGS[name].__doc__)


def list_opts(target: str | bool, spec, kernel: str | None) -> str:
    """The ``--list-opts`` text: the chosen method (and ntga's kernel), or ``method:NAME`` / ``kernel:NAME``."""
    from ntga.kernels import KERNELS
    from ntga.methods import get_method
    from ntga.options import lookup

    if target is True:
        text = _describe_method(spec)
        return text + ("\n\n" + _describe_kernel(kernel or "fnn") if spec.name == "ntga" else "")
    kind, name = split_kind(target, ("method", "kernel"))
    if kind == "method":
        return _describe_method(get_method(name))
    lookup(KERNELS, name, "kernel")
    return _describe_kernel(name)


def config_from_args(args: argparse.Namespace, spec, method_items: Mapping[str, str] | None = None):
    """The method's config from the shared flags, NTGA's flags, ``--method NAME@...`` and --method-opt."""
    from ntga.methods import config_from_options

    given = [name for name in NTGA_ONLY if getattr(args, name) is not None]
    if given and spec.name != "ntga":
        flags = ", ".join("--" + g.replace("_", "-") for g in given)
        raise UserInputError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} to --method ntga only; "
                             f"settings of --method {spec.name} go in --method-opt KEY=VALUE (see --list-opts)")
    ntga_flags = {}
    if spec.name == "ntga":
        ntga_flags = {name: getattr(args, name) for name in NTGA_ONLY if name not in ("kernel", "kernel_opt")}
        kernel, kernel_items = (None, {}) if args.kernel is None else parse_spec(
            args.kernel, "--kernel", "cnn@depth=3,W_std=1.5")
        ntga_flags["kernel"] = kernel
        if args.kernel_opt is not None or kernel_items:
            ntga_flags["kernel_overrides"] = parse_kernel_opts(args.kernel_opt or [], kernel or "fnn", kernel_items)
    items = merge_assignments(method_items or {}, args.method_opt, "--method-opt", "--method", "steps=20",
                              what="setting")
    return config_from_options(
        spec, items,
        eps=None if args.eps is None else parse_fraction(args.eps, "--eps"),
        norm=args.norm, steps=args.steps,
        step_size=None if args.step_size is None else parse_fraction(args.step_size, "--step-size"),
        **ntga_flags)


def main(argv: Sequence[str] | None = None) -> int:
    from ntga.methods import get_method

    args = build_parser().parse_args(argv)
    parse_fraction(args.fraction, "--fraction")
    args.method, method_items = parse_spec(args.method, "--method", "em@noise=class-wise,steps=20")
    spec = get_method(args.method)
    if args.list_opts is not None:
        kernel = None if args.kernel is None else parse_spec(args.kernel, "--kernel")[0]
        print(list_opts(args.list_opts, spec, kernel))
        return 0
    if args.out is None:
        raise UserInputError("--out DIR is required: the directory to write the protected dataset into")
    from ntga.run.driver import generate_from_args

    generate_from_args(args, spec, config_from_args(args, spec, method_items))
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
