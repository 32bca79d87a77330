"""The NTGA generation pipeline behind `python -m ntga.generate`, callable from Python.

Resolves per-dataset defaults, validates every setting before anything is
written, builds the surrogate kernel and the per-block attack, runs it block by
block (resumable, spread over devices, optionally one shard of a multi-host run)
and writes the poison directory with a complete manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntga import outdir
from ntga.checkpoint import BlockStore, data_fingerprint, finished_with_same_settings, parse_shard
from ntga.data import Split, split_from_args
from ntga.errors import UserInputError

# Reference defaults (REFERENCE.md): MNIST eps 0.3, t 64 for both surrogates;
# CIFAR-10 eps 8/255, t 4096 (fnn) / 8 (cnn). Chosen by image type.
GREY_DEFAULTS = {"eps": 0.3, "t": {"fnn": 64.0, "cnn": 64.0}}
COLOUR_DEFAULTS = {"eps": 8 / 255, "t": {"fnn": 4096.0, "cnn": 8.0}}
# Target images per gradient chunk: the cnn kernel keeps [block, chunk, H, W]
# spatial covariances alive, the fnn one only [block, chunk].
DEFAULT_TARGET_CHUNK = {"fnn": 2000, "cnn": 64}
DEFAULT_BLOCK_SIZE = 512  # the reference's block of training examples poisoned together


@dataclass(frozen=True)
class GenerateOptions:
    """Settings of one NTGA generation run; None means "the per-dataset default"."""

    kernel: str = "fnn"
    kernel_overrides: dict[str, Any] = field(default_factory=dict)
    eps: float | None = None
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = False
    t: float | None = None
    block_size: int | None = None  # None: 512, or the whole set when it is smaller
    target_chunk: int | None = None
    dtype: str = "float64"

    def resolved(self, num_channels: int) -> "GenerateOptions":
        """Fills the per-dataset defaults (greyscale -> MNIST's, colour -> CIFAR-10's)."""
        defaults = GREY_DEFAULTS if num_channels == 1 else COLOUR_DEFAULTS
        t_default = defaults["t"].get(self.kernel, defaults["t"]["fnn"])
        eps = defaults["eps"] if self.eps is None else self.eps
        return GenerateOptions(
            kernel=self.kernel,
            kernel_overrides=dict(self.kernel_overrides),
            eps=eps,
            norm=self.norm,
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            t=t_default if self.t is None else self.t,
            block_size=self.block_size,
            target_chunk=(DEFAULT_TARGET_CHUNK.get(self.kernel, 256) if self.target_chunk is None
                          else self.target_chunk),
            dtype=self.dtype,
        )


def validate_split(split: Split) -> None:
    """NTGA needs two classes and a target set (``Split`` itself guarantees it is disjoint from the poisoned set)."""
    split.require_classes()
    if len(split.target_idx) == 0:
        raise UserInputError("--target-size must be at least 1: NTGA ascends the GP's loss on a held-out target set")


def generate(split: Split, options: GenerateOptions, out: str | Path, *, seed: int = 0, resume: bool = False,
             shard: tuple[int, int] = (0, 1), devices=None, progress: bool = True,
             fraction: float = 1.0) -> Path | None:
    """Runs NTGA on ``split`` and writes the poison directory ``out``.

    With ``fraction`` below 1 only that share of each class is attacked (chosen by
    :func:`ntga.methods.fraction.select_protected`); the rest is written back clean.

    Returns:
        ``out`` when the poison directory is complete; None when this process handled
        its shard and other shards are still missing.

    Raises:
        UserInputError: any bad setting, before anything is written.
    """
    from ntga.attack import AttackConfig, make_block_attack, one_hot
    from ntga.kernels import make
    from ntga.methods.fraction import select_protected
    from ntga.pixels import to_float
    from ntga.runner import BlockJob, assemble_blocks, run_blocks

    ds = split.dataset
    opts = options.resolved(ds.image_shape[-1])
    validate_split(split)
    positions = select_protected(split.y_train, ds.num_classes, fraction, seed)
    all_rows = len(positions) == len(split.y_train)
    # Build everything that can fail on a bad setting before touching `out`.
    config = AttackConfig(eps=opts.eps, norm=opts.norm, steps=opts.steps, step_size=opts.step_size, t=opts.t,
                          random_start=opts.random_start, target_chunk=opts.target_chunk)
    kernel_fn = make(opts.kernel, **opts.kernel_overrides)

    dtype = {"float64": np.float64, "float32": np.float32}[opts.dtype]
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    k = ds.num_classes
    if opts.block_size is None:
        opts = dataclasses.replace(opts, block_size=min(DEFAULT_BLOCK_SIZE, len(positions)))
    job = BlockJob(
        x=to_float(split.x_train[positions], dtype),
        y_onehot=one_hot(split.y_train[positions], k, dtype),
        x_target=to_float(split.x_target, dtype),
        y_target_onehot=one_hot(split.y_target, k, dtype),
        block_size=opts.block_size,
    )
    settings = {**asdict(opts), "step_size": config.step_size}
    fingerprint = {
        "method": "ntga", **settings, "seed": seed,
        **({} if all_rows else {"fraction": float(fraction)}), **data_fingerprint(split),
    }
    out = Path(out)
    store = BlockStore(out)
    with outdir.writing(out, shard=shard):
        if resume and finished_with_same_settings(out, fingerprint):
            print(f"{out} is already complete; nothing to do")
            return out
        store.check(fingerprint, resume=resume)  # the folder policy and settings, before any compute
        check_numerics(kernel_fn, config, job, opts)
        block_fn = make_block_attack(kernel_fn, config)
        key = jax.random.key(seed)
        start = time.perf_counter()
        _, summary = run_blocks(job, block_fn, key, out, fingerprint=fingerprint, resume=resume, shard=shard,
                                devices=devices, progress=progress, describe=_describe_block, assemble=False)
        if not summary.all_present:
            print(f"shard {shard[0] + 1}/{shard[1]} finished; other shards' blocks are still missing in {out}")
            return None
        # Shards share `out`: only one assembles, and a late one finds the directory complete.
        with outdir.assembly_lock(out):
            if finished_with_same_settings(out, fingerprint):
                print(f"{out} was completed by another process of this run")
                return out
            x_poison, summary = assemble_blocks(job, block_fn, key, out, devices)
            return _write_output(split, out, fingerprint, x_poison, summary, positions, all_rows,
                                 devices=devices, start=start)


def _describe_block(index: int, s: dict[str, Any]) -> str:
    return (f"block {index} ({s['images']} images): surrogate GP's target accuracy clean "
            f"{100 * s['clean_target_acc']:.2f}% -> protected {100 * s['poisoned_target_acc']:.2f}%  (target loss "
            f"{s['loss_history'][0]:.4g} -> {s['loss_history'][-1]:.4g}, {s['seconds']:.1f}s)")


def check_numerics(kernel_fn, config, job, opts: GenerateOptions) -> None:
    """Refuses settings whose GP numbers are not finite, before any block runs.

    The attack's loss and gradient on the first block against one chunk of targets
    (the computation every PGD step does) must be finite: e.g. ``--t 1e300``
    overflows exp(t * eigenvalue) in the gradient.
    """
    from ntga.attack import target_loss_and_grad

    n = min(job.block_size, len(job.x))
    m = min(config.target_chunk, len(job.x_target))
    loss, grad = target_loss_and_grad(kernel_fn, config, job.x[:n], job.y_onehot[:n], job.x_target[:m],
                                      job.y_target_onehot[:m])
    if not (np.isfinite(float(loss)) and bool(np.isfinite(np.asarray(grad)).all())):
        raise UserInputError(
            f"the attack's loss or gradient is not finite for these settings (kernel {opts.kernel}, t={opts.t:g}, "
            f"{opts.dtype}; target loss {float(loss)!r} on the first block); use a smaller --t (the reference's "
            "values: 64 for greyscale data, 4096 (fnn) or 8 (cnn) for colour) or --dtype float64")


def _write_output(split: Split, out: Path, fingerprint: dict[str, Any], x_poison: np.ndarray, summary,
                  positions: np.ndarray, all_rows: bool, *, devices, start: float) -> Path:
    """The manifest and the poison directory of a finished run (every block present)."""
    from ntga.runner import finish_poison_dir

    ds = split.dataset
    clean_acc = summary.mean("clean_target_acc")
    poisoned_acc = summary.mean("poisoned_target_acc")
    manifest = {
        **fingerprint,
        "method": "ntga",
        "dataset_class_names": list(ds.class_names),
        "num_poisoned": int(len(x_poison)),
        "num_training_images": int(len(split.y_train)),
        "target_size": int(len(split.target_idx)),
        "devices": [str(d) for d in (devices or jax.local_devices())],
        "gp_target_acc_clean_mean": clean_acc,
        "gp_target_acc_poisoned_mean": poisoned_acc,
        "blocks": summary.block_stats,
        "wall_time_s": float(sum(s["seconds"] for s in summary.block_stats)),
        "wall_time_this_process_s": time.perf_counter() - start,
    }
    x_all = split.x_train.copy()
    x_all[positions] = x_poison
    path = finish_poison_dir(out, x_poison=x_all, y=split.y_train, source_indices=split.train_idx,
                             target_indices=split.target_idx, x_clean=split.x_train,
                             class_names=ds.class_names, manifest=manifest,
                             protected_positions=None if all_rows else positions)
    sizes = sorted({int(s["images"]) for s in summary.block_stats if "images" in s})
    uneven = (f"; blocks of {sizes[-1]} images, the last of {sizes[0]}, whose figures are noisier"
              if len(sizes) > 1 else "")
    print(f"wrote {path}: {len(x_poison)} protected images in {len(summary.block_stats)} blocks.\n"
          f"  Surrogate check (not a trained victim's accuracy): the NTK-GP fitted to one block scores "
          f"{100 * clean_acc:.2f}% on the held-out targets when the block is clean and {100 * poisoned_acc:.2f}% "
          f"when it is protected (mean over blocks{uneven}).")
    print(next_steps(path))
    return path


def next_steps(path: Path) -> str:
    """What a user runs after generating ``path`` (printed by every generation method)."""
    return (f"  Next: python -m defenses.evaluate --poisons {path}   (train victims on it; add --breakers ...)\n"
            f"        python -m ntga.export --poisons {path} --out DIR   (publish it as an image folder)")


def generate_from_args(args: argparse.Namespace, options: GenerateOptions, fraction: float = 1.0) -> Path | None:
    """CLI glue: validates the run-level flags, loads the split, and calls :func:`generate`."""
    from ntga.methods.fraction import check_fraction

    shard = parse_shard(args.shard)
    check_fraction(fraction)
    split = split_from_args(args)
    return generate(split, options, args.out, seed=args.seed, resume=args.resume, shard=shard,
                    progress=not args.no_progress, fraction=fraction)
